"""No secret leaks, and credential files are private: against the REAL test site.

A recognisable secret set is made for this run: a fresh ed25519 key ENCRYPTED with
``BSSECRET-passphrase-<uuid>`` (its public half added to the site user's authorized_keys
for the duration of the module), a connection password ``BSSECRET-password-<uuid>``, the
key given inline (SSH provider extras ``private_key`` + ``private_key_passphrase``, no
key_file), and an X509 proxy (``x509_proxy`` extra, mode 0600 here) whose content holds
``BSSECRET-x509-<uuid>`` and random base64 lines.

Then real runs over SSH, in two lanes at once (one Airflow DB each): ``airflow dags test
rg_campaign`` on Slurm (2 steps); and ``airflow tasks test batchsite_test_jobs x509_probe``
(a unit + a fan-in) on the HTCondor pool, then twice more, failing with exception text:
the proxy path missing, a wrong passphrase. Every secret string, 40-char slices of
the key's and the proxy's bodies and of their base64 forms are searched, byte-wise, in:
the stdout/stderr of every run; the whole AIRFLOW_HOME (task logs, the SQLite DB with
XComs, rendered fields, trigger rows); every file under this run's remote_root on the site
(rendered submit files, scripts, scheduler logs, records, outputs) except the 0600 proxy
copies themselves; the HTCondor pool's log + spool and the Slurm state + logs. Zero hits,
over a searched volume that is asserted to be non-trivial.

On the site: each proxy copy is mode 0600 in a 0700 directory, owned by the site user,
content equal, written once (not rewritten by the second round); every job saw
X509_USER_PROXY pointing at it and read it (RG: the generate command runs through a probe
script via the campaign's ``commands`` param; HTCondor: the test DAG's ``x509_probe`` task;
both record ``$X509_USER_PROXY``, ``test -r`` and the sha256 read, never the content).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import secrets as pysecrets
import shlex
import stat
import subprocess
import tarfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from batchsite.campaign.rg import DEFAULT_COMMANDS

from ..conftest import (REPO, STATE, VENV_BIN, airflow_env, clone_airflow_home, dags_test, on_site, site_conn,
                        ssh_argv)

TEST_DAGS = REPO / "tests" / "dags"

# what each unit records before running the payload: the path it was given, whether it can
# read it, the sha256 of what it read (never the content). Campaign commands are plain tokens
# (no shell), so the probe is a script the test puts on the site; the generate command of
# the campaign's ``commands`` param runs through it.
PROBE = """#!/bin/sh
d=$1/x509_seen; n=$2; shift 2
mkdir -p "$d" || exit 1
if test -r "$X509_USER_PROXY"; then r=readable; else r=unreadable; fi
printf '%s %s %s\\n' "${X509_USER_PROXY:-unset}" "$r" "$(sha256sum < "$X509_USER_PROXY" | cut -c1-64)" > "$d/$n"
exec "$@"
"""


def probe_commands() -> dict:
    return {"generate": ["sh", "{remote_root}/x509probe.sh", "{remote_root}", "{version}.RG{step}.b{batch}",
                         *DEFAULT_COMMANDS["generate"]]}


@dataclass
class Secrets:
    uid: str
    passphrase: str
    password: str
    wrong_passphrase: str
    key_text: str
    pub_line: str
    proxy: Path
    proxy_bytes: bytes
    needles: dict[str, bytes] = field(default_factory=dict)


def _slices(label: str, text: bytes, width: int = 40) -> dict[str, bytes]:
    """A 40-char slice of EVERY long line of a PEM-ish body (no newline inside a needle):
    any part of the content that leaks is caught, not only its first lines."""
    lines = [ln for ln in text.splitlines() if len(ln) >= width + 8 and not ln.startswith(b"-----")]
    assert len(lines) >= 3, f"{label}: too few long lines to slice"
    out = {}
    for i, ln in enumerate(lines):
        off = (len(ln) - width) // 2
        out[f"{label} line {i} slice"] = ln[off:off + width]
    return out


def _b64_slices(label: str, data: bytes, n: int = 3, width: int = 40) -> dict[str, bytes]:
    enc = base64.b64encode(data)
    step = max(1, (len(enc) - width) // (n + 1))
    return {f"{label} base64 slice {i}": enc[step * (i + 1): step * (i + 1) + width] for i in range(n)}


@pytest.fixture(scope="module")
def secrets(site_info, tmp_path_factory):
    d = tmp_path_factory.mktemp("secrets")
    os.chmod(d, 0o700)
    uid = uuid.uuid4().hex
    s_pass, s_pw, s_wrong = (f"BSSECRET-passphrase-{uid}", f"BSSECRET-password-{uid}",
                             f"BSSECRET-wrongpass-{uid}")
    key = d / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", s_pass, "-C", f"bssecret-{uid[:8]}", "-f", str(key)],
                   check=True, capture_output=True)
    key_text = key.read_text()
    assert "BEGIN OPENSSH PRIVATE KEY" in key_text
    # really encrypted: without the passphrase it does not load
    assert subprocess.run(["ssh-keygen", "-y", "-P", "", "-f", str(key)], capture_output=True).returncode != 0
    pub_line = (d / "id_ed25519.pub").read_text().strip()

    body = lambda n: b"\n".join(base64.b64encode(pysecrets.token_bytes(48)) for _ in range(n))  # noqa: E731
    proxy_bytes = (b"-----BEGIN CERTIFICATE-----\n" + body(6) + b"\n-----END CERTIFICATE-----\n"
                   b"-----BEGIN RSA PRIVATE KEY-----\n" + f"BSSECRET-x509-{uid}".encode() + b"\n" + body(8)
                   + b"\n-----END RSA PRIVATE KEY-----\n")
    proxy = d / f"x509up_u{os.getuid()}"
    fd = os.open(proxy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, proxy_bytes)
    os.close(fd)

    s = Secrets(uid, s_pass, s_pw, s_wrong, key_text, pub_line, proxy, proxy_bytes)
    s.needles = {
        "passphrase": s_pass.encode(), "password": s_pw.encode(), "wrong passphrase": s_wrong.encode(),
        "x509 marker": f"BSSECRET-x509-{uid}".encode(),
        **_slices("private key", key_text.encode()), **_b64_slices("private key", key_text.encode(), 2),
        **_slices("proxy", proxy_bytes), **_b64_slices("proxy", proxy_bytes),
    }
    assert all(len(v) >= 32 for v in s.needles.values())

    # the site user accepts the new key for as long as this module runs
    ak = Path(f"~{site_info['user']}/.ssh/authorized_keys").expanduser()
    with open(ak, "a") as f:
        f.write(pub_line + "\n")
    try:
        yield s
    finally:
        with open(ak, "r+") as f:  # rewrite in place: owner and mode stay
            keep = [ln for ln in f.read().splitlines() if ln.strip() != pub_line]
            f.seek(0)
            f.write("".join(ln + "\n" for ln in keep))
            f.truncate()


def secret_conn(info: dict, scheduler: str, s: Secrets, remote_root: str, **extra) -> dict:
    c = site_conn(info, scheduler, remote_root=remote_root, x509_proxy=str(s.proxy), private_key=s.key_text,
                  private_key_passphrase=s.passphrase, **extra)
    del c["extra"]["key_file"]  # the key is inline only
    c["password"] = s.password
    return c


def grep(blobs, needles: dict[str, bytes], where: str, found: list[str],
         controls: dict[str, bytes] | None = None, seen: set | None = None) -> tuple[int, int]:
    """``blobs``: (name, bytes) pairs. Appends '<where>:<name>: <needle label>' per hit to
    ``found``; adds the label of each control (a non-secret string of this run: proof that
    the searched data holds this run's traces) found somewhere to ``seen``."""
    files = size = 0
    for name, data in blobs:
        files += 1
        size += len(data)
        for label, n in needles.items():
            if n in data:
                found.append(f"{where}:{name}: {label}")
        for label, c in (controls or {}).items():
            if c in data and seen is not None:
                seen.add(label)
    return files, size


def local_files(root: Path, skip_dirs: tuple[str, ...] = ()):
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [x for x in dirnames if os.path.join(dirpath, x) not in skip_dirs]
        for fn in filenames:
            p = os.path.join(dirpath, fn)
            try:
                if stat.S_ISREG(os.lstat(p).st_mode):
                    with open(p, "rb") as f:
                        yield p, f.read()
            except OSError:
                continue  # vanished (a log rotated meanwhile)


def site_tar(info: dict, paths: list[str], exclude: list[str]):
    """Every regular file under ``paths`` on the site, over SSH as the site user (one tar)."""
    ex = " ".join(f"--exclude={shlex.quote(e)}" for e in exclude)
    cmd = f"tar -cf - {ex} --ignore-failed-read {' '.join(shlex.quote(p) for p in paths)} 2>/dev/null; true"
    r = subprocess.run(ssh_argv(info, cmd), capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    with tarfile.open(fileobj=io.BytesIO(r.stdout), mode="r:") as tar:
        for m in tar:
            if m.isfile():
                yield m.name, tar.extractfile(m).read()


def _run(home, dag: str, conf: dict, timeout: int = 240, **conns) -> tuple[int, str]:
    t0 = time.monotonic()
    r = dags_test(home, dag, conf, timeout=timeout, **conns)
    print(f"dags test {dag} {conf['site_conn_id']}: rc {r.returncode} in {time.monotonic() - t0:.0f}s")
    return r.returncode, r.stdout + r.stderr


def _task(home, task_id: str, params: dict, timeout: int = 180, **conns) -> tuple[int, str]:
    """``airflow tasks test batchsite_test_jobs <task>`` (a temporary run, trigger inline)."""
    env = airflow_env(home, **conns)
    env["AIRFLOW__CORE__DAGS_FOLDER"] = str(TEST_DAGS)
    t0 = time.monotonic()
    r = subprocess.run(["timeout", "-s", "KILL", str(timeout), str(VENV_BIN / "airflow"), "tasks", "test",
                        "batchsite_test_jobs", task_id, "-t", json.dumps(params)],
                       env=env, capture_output=True, text=True)
    print(f"tasks test {task_id} {params['site']}: rc {r.returncode} in {time.monotonic() - t0:.0f}s")
    return r.returncode, r.stdout + r.stderr


def _stat(info, path: str) -> list[str]:
    r = on_site(info, f"stat -c '%a %U %s %Y' {shlex.quote(path)}")
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_no_secret_in_any_output_and_credentials_are_0600(site_info, condor_pool, airflow_home, secrets, tmp_path):
    t_start = time.monotonic()
    s = secrets
    info = site_info
    root = f"{info['remote_root']}/secrets-{s.uid[:10]}"
    version = f"sec{s.uid[:6]}"
    conns = {
        "sec_slurm": secret_conn(info, "slurm", s, root),
        "sec_condor": secret_conn(info, "htcondor", s, root),
        "sec_missing": secret_conn(info, "slurm", s, root),
        "sec_wrongpass": secret_conn(info, "slurm", s, root),
    }
    missing = f"{s.proxy.parent}/no-such-proxy-{s.uid[:8]}"
    conns["sec_missing"]["extra"]["x509_proxy"] = missing
    conns["sec_wrongpass"]["extra"]["private_key_passphrase"] = s.wrong_passphrase
    r = subprocess.run(ssh_argv(info, f"mkdir -p {root} && cat > {root}/x509probe.sh"), input=PROBE, text=True,
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr

    rg = {"samples": 400, "batches": 2, "throttle": 2, "tolerance": 1e-9, "commands": probe_commands(),
          "site_conn_id": "sec_slurm", "version": version, "steps": 2}
    tag = f"t{s.uid[6:12]}"
    home_b = clone_airflow_home(airflow_home, tmp_path / "home_b")

    def lane_b() -> dict[str, tuple[int, str]]:
        return {name: _task(home_b, "x509_probe", {"site": conn_id, "tag": f"{tag}{suffix}"}, **conns)
                for name, conn_id, suffix in (("htcondor", "sec_condor", ""), ("missing proxy", "sec_missing", "m"),
                                              ("wrong passphrase", "sec_wrongpass", "w"))}

    with ThreadPoolExecutor(2) as ex:
        fa = ex.submit(_run, airflow_home, "rg_campaign", rg, **conns)
        fb = ex.submit(lane_b)
        results = {"slurm": fa.result(), **fb.result()}
    outputs = {name: out for name, (_, out) in results.items()}
    homes = [airflow_home, home_b]
    t_runs = time.monotonic()
    for name, text in outputs.items():  # for whoever reads a failure
        (tmp_path / f"run-{name.replace(' ', '-')}.txt").write_text(text)
    print(f"run outputs in {tmp_path}")

    # ---- the runs ran (over SSH with the inline encrypted key), the failures say why
    finished = re.findall(r"DagRun Finished: .*? state=(\w+)", outputs["slurm"])
    assert results["slurm"][0] == 0 and finished == ["success"], outputs["slurm"][-6000:]
    assert re.search(r"RG step 2: 2/2 done; fan-in done", outputs["slurm"]), outputs["slurm"][-4000:]
    assert results["htcondor"][0] == 0 and "x509_probe: 1/1 done; fan-in done" in outputs["htcondor"], \
        outputs["htcondor"][-6000:]
    # (``airflow tasks test`` exits 0 when the task fails: its log says so)
    out = outputs["missing proxy"]
    assert "Task failed with exception" in out and "new_state=failed" in out, out[-4000:]
    # the path may show as *** : Airflow masks the values of extras named like "proxy"
    assert re.search(r"CredentialError: site connection 'sec_missing': extra x509_proxy='(\*\*\*|"
                     + re.escape(missing) + r")': no such file", out), out[-4000:]
    # ... before anything was submitted for that run
    assert on_site(info, f"test -e {root}/test/{tag}m").returncode != 0
    out = outputs["wrong passphrase"]
    assert "Task failed with exception" in out and "new_state=failed" in out, out[-4000:]
    assert "extra private_key cannot be decrypted or parsed: check the extra private_key_passphrase" in out, \
        out[-4000:]
    assert on_site(info, f"test -e {root}/test/{tag}w").returncode != 0

    # ---- the proxy copies on the site: 0600, owner, content, written once
    want = hashlib.sha256(s.proxy_bytes).hexdigest()
    cred_dir = f"{root}/.batchsite/credentials"
    listing = on_site(info, f"ls -A {cred_dir}").stdout.split()
    assert sorted(listing) == ["x509up.sec_condor", "x509up.sec_slurm"], listing  # no temp file left
    mode, owner, _, _ = _stat(info, cred_dir)
    assert (mode, owner) == ("700", info["user"])
    seen_paths = {}
    for conn_id in ("sec_slurm", "sec_condor"):
        copy = f"{cred_dir}/x509up.{conn_id}"
        mode, owner, size, _ = _stat(info, copy)
        assert (mode, owner, int(size)) == ("600", info["user"], len(s.proxy_bytes)), (copy, mode, owner)
        assert on_site(info, f"sha256sum < {copy}").stdout.split()[0] == want
        seen_paths[conn_id] = copy
    # round 2 on Slurm did not rewrite it: the copy is older than round 2's submission record
    rec2 = on_site(info, f"ls {root}/job_logs/{version}/FP/RG2/*/.batchsite/submitted").stdout.split()
    assert len(rec2) == 1
    assert int(_stat(info, seen_paths["sec_slurm"])[3]) <= int(_stat(info, rec2[0])[3])
    r = on_site(info, f"stat -c %Y {seen_paths['sec_slurm']}; stat -c %Y {root}/job_logs/{version}/FP/RG1/*/.batchsite/submitted")
    t_copy, t_rec1 = map(int, r.stdout.split())
    assert t_copy <= t_rec1  # installed by round 1's submit command, before its record

    # ---- every job saw X509_USER_PROXY = its site's copy, readable, same content
    seen = on_site(info, f"cd {root} && for f in x509_seen/* test/{tag}/*/x509_seen_*; do echo \"${{f##*/}} $(cat $f)\"; "
                         "done").stdout.splitlines()
    got = {ln.split()[0]: ln.split()[1:] for ln in seen if ln.strip()}
    expect = {f"{version}.RG{k}.b{b}": seen_paths["sec_slurm"] for k in (1, 2) for b in (0, 1)}
    expect.update({f"x509_seen_{n}": seen_paths["sec_condor"] for n in ("unit0", "fanin")})
    assert set(got) == set(expect), seen
    for k, (path, readable, digest) in got.items():
        assert (path, readable, digest) == (expect[k], "readable", want), k

    # ---- grep everything
    found: list[str] = []
    counts: dict[str, tuple[int, int]] = {}
    controls = {"version": version.encode(), "tag": tag.encode()}

    def search(label: str, blobs, where: str) -> set:
        seen_here: set = set()
        f, b = grep(blobs, s.needles, where, found, controls, seen_here)
        f0, b0 = counts.get(label, (0, 0))
        counts[label] = (f0 + f, b0 + b)
        return seen_here

    c_out = search("run outputs", ((k, v.encode()) for k, v in outputs.items()), "output")
    c_home = set()
    for home in homes:
        c_home |= search("AIRFLOW_HOME", local_files(home), f"airflow_home {home.name}")
    excluded = [f"{cred_dir}/x509up.sec_slurm", f"{cred_dir}/x509up.sec_condor"]
    c_site = search("remote_root of this run", site_tar(info, [root], excluded), "site")
    condor_dir = on_site(info, "condor_config_val LOCAL_DIR").stdout.strip()
    assert condor_dir.startswith("/"), condor_dir
    search("HTCondor log+spool", site_tar(info, [f"{condor_dir}/log", f"{condor_dir}/spool"], []), "condor")
    search("Slurm state+logs, sshd log", local_files(STATE / "slurm"), "slurm")
    search("Slurm state+logs, sshd log", local_files(STATE / "log"), "sitelog")
    t_grep = time.monotonic()
    summary = ", ".join(f"{k}: {f} files {b / 1e6:.1f} MB" for k, (f, b) in counts.items())
    print(f"secrets grep: {len(s.needles)} needles; {summary}; hits {len(found)}; "
          f"runs {t_runs - t_start:.0f}s, checks+grep {t_grep - t_runs:.0f}s")
    assert not found, "secrets found:\n" + "\n".join(found[:50])
    # the search was not vacuous: enough data, and it holds this run's own traces (the DB
    # its XComs and rendered fields, the site its rendered scripts)
    assert counts["run outputs"][1] > 50_000 and {"version", "tag"} <= c_out, counts
    files, size = counts["AIRFLOW_HOME"]
    assert files >= 2 * len(homes) and size > 1_000_000 and {"version", "tag"} <= c_home, (counts, c_home)
    files, size = counts["remote_root of this run"]
    assert files >= 40 and size > 100_000 and {"version", "tag"} <= c_site, (counts, c_site)
    assert counts["HTCondor log+spool"][0] >= 3 and counts["Slurm state+logs, sshd log"][0] >= 3, counts
    # and the needles are found where they are: the proxy copy itself
    hits: list[str] = []
    grep(site_tar(info, [seen_paths["sec_slurm"]], []), s.needles, "copy", hits)
    want_labels = {k for k in s.needles if k == "x509 marker" or k.startswith("proxy line ")}
    assert len(want_labels) >= 10 and {h.rsplit(": ", 1)[1] for h in hits} == want_labels, hits

    on_site(info, f"rm -rf {shlex.quote(root)}")
