"""The ``x509_proxy`` extra, for real: ``LocalTransport`` + the local backend in a tmp remote
root, the submit-once script run by ``sh``, the units under python3. No mocks.

* the proxy is installed 0600 in a 0700 directory by the submit command itself, content equal;
* an unchanged proxy is not sent again (1 command, file untouched); a renewed one is (2);
* every unit and the fan-in see X509_USER_PROXY = the site copy and can read it;
* a missing, group/world-readable or unreadable proxy fails before anything is submitted,
  with an error naming the extra; the content never appears in an error or a rendered file.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from pathlib import Path

import pytest

from batchsite.backends.common import X509_PROXY_ENV, with_x509_proxy
from batchsite.backends.local import LocalBackend
from batchsite.config import SiteConfigError, site_config_from_connection
from batchsite.model import RoundSpec, WorkUnit
from batchsite.site import CredentialError, Site
from batchsite.transport.local import LocalTransport

PY = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else "python3"
SECRET = b"-----BEGIN CERTIFICATE-----\nBSSECRET-x509-unit-test-0123456789\n-----END CERTIFICATE-----\n"
# a unit: where X509_USER_PROXY points, whether it is readable, the sha256 of what it read
PROBE = ['sh', '-c', 'printf "%s %s %s\\n" "$X509_USER_PROXY" "$(test -r "$X509_USER_PROXY" && echo r || echo n)" '
         '"$(sha256sum < "$X509_USER_PROXY" | cut -c1-64)" > "seen_$0"', ]


@pytest.fixture
def proxy(tmp_path) -> Path:
    p = tmp_path / "x509up_u1"
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, SECRET)
    os.close(fd)
    return p


@pytest.fixture
def site(tmp_path, proxy):
    root = tmp_path / "root"
    root.mkdir()
    s = Site("grid", LocalTransport(), LocalBackend(), str(root), x509_proxy=str(proxy))
    yield s
    s.close()


def spec_for(site: Site, key: str, n: int = 2) -> RoundSpec:
    return RoundSpec(key=key, label=key, workdir=site.path(key),
                     units=[WorkUnit(index=i, argv=[*PROBE, str(i)]) for i in range(n)],
                     fanin=[*PROBE, "fanin"], env={"BATCHSITE_PYTHON": PY})


def wait_done(site, sub, timeout=20.0):
    deadline = time.monotonic() + timeout
    while True:
        st = site.status([sub])[sub.key]
        if st.finished:
            return st
        assert time.monotonic() < deadline, st
        time.sleep(0.05)


def test_proxy_installed_0600_and_every_job_reads_it(site, proxy):
    spec = spec_for(site, "bs-x509-a")
    site.probe()  # once per site (the scheduler's limits shape the rendering); not the proxy's cost
    n0 = site.transport.counters.commands_run
    sub = site.submit(spec)
    # first time: the hash alone (stale on the site), then hash + content: two commands
    assert site.transport.counters.commands_run - n0 == 2
    copy = Path(site.x509_proxy_path())
    st = copy.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.getuid()
    assert stat.S_IMODE(copy.parent.stat().st_mode) == 0o700
    assert copy.read_bytes() == SECRET
    assert sorted(p.name for p in copy.parent.iterdir()) == [copy.name]  # no temp file left
    assert wait_done(site, sub).succeeded
    want = hashlib.sha256(SECRET).hexdigest()
    for name in ("0", "1", "fanin"):
        path, readable, digest = (Path(spec.workdir) / f"seen_{name}").read_text().split()
        assert (path, readable, digest) == (str(copy), "r", want)
    # explicit export in the rendered scripts, the content nowhere in them
    texts = [p.read_bytes() for p in Path(spec.workdir).rglob("*") if p.is_file()]
    assert any(f"export {X509_PROXY_ENV}={copy}".encode() in t for t in texts)
    assert not any(b"BSSECRET" in t for t in texts)


def test_unchanged_proxy_is_not_sent_again_renewed_one_is(site, proxy):
    site.submit(spec_for(site, "bs-x509-b"))
    copy = Path(site.x509_proxy_path())
    ino, mtime = copy.stat().st_ino, copy.stat().st_mtime_ns
    n0 = site.transport.counters.commands_run
    site.submit(spec_for(site, "bs-x509-c"))
    assert site.transport.counters.commands_run - n0 == 1
    assert (copy.stat().st_ino, copy.stat().st_mtime_ns) == (ino, mtime)
    # someone widened the copy's mode: put back to 0600 without resending
    os.chmod(copy, 0o644)
    site.submit(spec_for(site, "bs-x509-d"))
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600 and copy.stat().st_ino == ino
    # renewed (voms-proxy-init writes the same path): sent once, replaced atomically
    renewed = SECRET.replace(b"0123456789", b"renewed-99")
    proxy.write_bytes(renewed)
    n0 = site.transport.counters.commands_run
    site.submit(spec_for(site, "bs-x509-e"))
    assert site.transport.counters.commands_run - n0 == 2
    assert copy.read_bytes() == renewed and copy.stat().st_ino != ino
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600


@pytest.mark.parametrize("case", ["missing", "world", "group", "dir", "empty"])
def test_bad_proxy_fails_before_submitting_naming_the_extra(site, proxy, case):
    if case == "missing":
        proxy.unlink()
        want = "no such file"
    elif case == "world":
        os.chmod(proxy, 0o604)
        want = "chmod 600"
    elif case == "group":
        os.chmod(proxy, 0o640)
        want = "chmod 600"
    elif case == "dir":
        proxy.unlink()
        proxy.mkdir(mode=0o700)
        want = "not a regular file"
    else:
        proxy.write_bytes(b"")
        want = "not an X509 proxy"
    spec = spec_for(site, f"bs-x509-bad-{case}")
    with pytest.raises(CredentialError) as ei:
        site.submit(spec)
    msg = str(ei.value)
    assert "x509_proxy" in msg and str(proxy) in msg and want in msg and "BSSECRET" not in msg
    assert not Path(spec.workdir).exists()  # nothing was sent or submitted


def test_unreadable_proxy_names_the_extra(site, proxy):
    if os.getuid() == 0:
        # root reads a 0000 file; a proxy owned by root with mode 0 is still "private":
        # check the error path with a path through a file (ENOTDIR) instead
        site.x509_proxy = str(proxy) + "/x"
        with pytest.raises(CredentialError, match=r"x509_proxy=.*cannot open it"):
            site.submit(spec_for(site, "bs-x509-unreadable"))
        return
    os.chmod(proxy, 0)
    with pytest.raises(CredentialError, match="not readable by this user"):
        site.submit(spec_for(site, "bs-x509-unreadable"))


def test_symlinked_credentials_dir_is_refused(site, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    d = Path(site.x509_proxy_path()).parent
    d.parent.mkdir(parents=True)
    d.symlink_to(elsewhere)
    spec = spec_for(site, "bs-x509-link")
    with pytest.raises(Exception, match="symbolic link") as ei:
        site.submit(spec)
    assert "BSSECRET" not in str(ei.value)
    assert list(elsewhere.iterdir()) == [] and not Path(spec.workdir).exists()


def test_round_env_may_not_point_x509_user_proxy_elsewhere(site):
    spec = spec_for(site, "bs-x509-env").model_copy(update={"env": {X509_PROXY_ENV: "/tmp/other"}})
    with pytest.raises(ValueError, match="x509_proxy extra manages it"):
        site.submit(spec)
    same = with_x509_proxy(spec.model_copy(update={"env": {}}), "/r/p")
    assert same.env == {X509_PROXY_ENV: "/r/p"} and with_x509_proxy(same, "/r/p") == same


def test_config_extra_is_a_path_never_content():
    cfg = site_config_from_connection("grid", "h", 22, "u", {
        "scheduler": "slurm", "remote_root": "/r", "x509_proxy": "~/x509up_u1",
        "private_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nBSSECRET\n", "private_key_passphrase": "BSSECRET"})
    assert cfg.x509_proxy == os.path.expanduser("~/x509up_u1")
    pub = repr(cfg.public_dict())
    assert "BSSECRET" not in pub and "x509up_u1" in pub
    with pytest.raises(SiteConfigError, match="x509_proxy"):
        site_config_from_connection("grid", "h", 22, "u", {"scheduler": "slurm", "remote_root": "/r",
                                                          "x509_proxy": "relative/x509"})
    with pytest.raises(SiteConfigError, match="x509_prox.*unknown extra"):
        site_config_from_connection("grid", "h", 22, "u", {"scheduler": "slurm", "remote_root": "/r",
                                                          "x509_prox": "/tmp/x"})
