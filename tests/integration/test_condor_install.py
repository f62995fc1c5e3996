"""Where tests/site/site.sh gets HTCondor from (``install-condor``; ``start-condor`` runs it first),
in a fresh clone's layout (a copy of site.sh in ``<tmp>/clone/tests/site/``, its own state dir
and prefix), so the running test site is never touched:

1. a tarball: BATCHSITE_CONDOR_TARBALL, else the project's build in ``<clone>/../shared/htcondor/``;
2. else an HTCondor on PATH (its release dir is linked as the prefix);
3. else the official release tarball, unpacked only when its sha256 is the expected one
   (here a ``file://`` URL of the project's build stands in for the release server).

Real unpacking of the real HTCondor 25.13.2 build, real ``condor_version`` runs. Needs root (as
site.sh does) and the project's build beside the repository (CI has it).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ..conftest import REPO, SITE_SH

BUILD = REPO.parent / "shared" / "htcondor" / "condor-25.13.2-x86_64-debian12.tar.zst"
#: a PATH without any HTCondor on it
PLAIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@pytest.fixture(scope="module")
def build() -> Path:
    if os.geteuid() != 0:
        pytest.fail("tests/site/site.sh must run as root", pytrace=False)
    if not BUILD.is_file():
        pytest.fail(f"the project's HTCondor build {BUILD} is missing (shared/htcondor beside the repository)",
                    pytrace=False)
    return BUILD


def _clone(tmp: Path, with_build: Path | None = None) -> Path:
    """A fresh clone's layout: site.sh alone, and the project's build beside it if given."""
    site_sh = tmp / "clone" / "tests" / "site" / "site.sh"
    site_sh.parent.mkdir(parents=True)
    shutil.copy2(SITE_SH, site_sh)
    if with_build is not None:
        (tmp / "shared" / "htcondor").mkdir(parents=True)
        (tmp / "shared" / "htcondor" / with_build.name).symlink_to(with_build)
    return site_sh


def _install(site_sh: Path, prefix: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BATCHSITE_CONDOR")}
    return subprocess.run(["bash", str(site_sh), "install-condor"], capture_output=True, text=True, timeout=300,
                          env={**clean, "PATH": PLAIN_PATH, "BATCHSITE_SITE_DIR": str(site_sh.parents[2] / "state"),
                               "BATCHSITE_CONDOR_PREFIX": str(prefix), **env})


def _condor_version(prefix: Path) -> str:
    return subprocess.run([str(prefix / "bin" / "condor_version")], capture_output=True, text=True, timeout=60,
                          check=True).stdout


def test_the_projects_build_beside_the_clone_is_unpacked_once(build, tmp_path):
    site_sh = _clone(tmp_path, with_build=build)
    prefix = tmp_path / "opt" / "condor"
    r = _install(site_sh, prefix)
    assert r.returncode == 0, r.stderr
    assert f"(from the project's build {build.resolve()})" in r.stdout, r.stdout
    assert "$CondorVersion: 25.13.2" in _condor_version(prefix)
    assert os.access(prefix / "sbin" / "condor_master", os.X_OK)
    again = _install(site_sh, prefix)
    assert again.returncode == 0 and "installed" not in again.stdout, again.stdout


def test_a_named_tarball_that_is_missing_fails_naming_the_variable(build, tmp_path):
    site_sh = _clone(tmp_path, with_build=build)
    r = _install(site_sh, tmp_path / "condor", BATCHSITE_CONDOR_TARBALL=str(tmp_path / "nope.tar.zst"))
    assert r.returncode == 1
    assert f"BATCHSITE_CONDOR_TARBALL={tmp_path / 'nope.tar.zst'}: no such file" in r.stderr
    assert not (tmp_path / "condor").exists()


def test_without_a_tarball_an_htcondor_on_path_is_linked(build, tmp_path):
    unpacked = tmp_path / "elsewhere" / "condor"
    r = _install(_clone(tmp_path / "a"), unpacked, BATCHSITE_CONDOR_TARBALL=str(build))
    assert r.returncode == 0, r.stderr
    prefix = tmp_path / "opt" / "condor"
    r = _install(_clone(tmp_path / "b"), prefix, PATH=f"{unpacked}/bin:{unpacked}/sbin:{PLAIN_PATH}")
    assert r.returncode == 0, r.stderr
    assert prefix.is_symlink() and prefix.resolve() == unpacked.resolve()
    assert "using the HTCondor on PATH" in r.stdout
    assert "$CondorVersion: 25.13.2" in _condor_version(prefix)


def test_with_nothing_at_hand_the_download_needs_a_checksum(build, tmp_path):
    prefix = tmp_path / "condor"
    r = _install(_clone(tmp_path), prefix)
    assert r.returncode == 1
    assert "set BATCHSITE_CONDOR_RELEASE_SHA256" in r.stderr, r.stderr
    assert not prefix.exists()


def test_the_release_tarball_is_unpacked_only_with_the_expected_sha256(build, tmp_path):
    site_sh = _clone(tmp_path)
    prefix = tmp_path / "condor"
    url = build.resolve().as_uri()
    good = hashlib.sha256(build.read_bytes()).hexdigest()
    bad = _install(site_sh, prefix, BATCHSITE_CONDOR_RELEASE_URL=url, BATCHSITE_CONDOR_RELEASE_SHA256="0" * 64)
    assert bad.returncode == 1
    assert f"{url} has sha256 {good}, expected {'0' * 64}: not unpacked" in bad.stderr, bad.stderr
    assert not prefix.exists()
    assert not list((tmp_path / "state" / "run").glob("condor-release.*")), "the rejected download was kept"
    ok = _install(site_sh, prefix, BATCHSITE_CONDOR_RELEASE_URL=url, BATCHSITE_CONDOR_RELEASE_SHA256=good)
    assert ok.returncode == 0, ok.stderr
    assert f"the official release tarball {url} (sha256 verified)" in ok.stdout
    assert "$CondorVersion: 25.13.2" in _condor_version(prefix)
