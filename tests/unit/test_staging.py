"""File staging with the real LocalTransport and a temporary remote_root.

The same functions are run against a real sshd in tests/site (added by the lead).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path

import pytest

from batchsite import staging as st
from batchsite.campaign import rg_layout
from batchsite.hooks.staging_cli import main as staging_main
from batchsite.site import Site
from batchsite.staging import manifest, transfer
from batchsite.staging import (
    PullReport, RemoteDiskFullError, Staging, StagingError, StagingInputError, UnsafePathError,
    pull_tree, push_tree, put_text, read_text,
)
from batchsite.transport.local import LocalTransport


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def tree(base: Path, files: dict[str, str | bytes]) -> Path:
    for rel, data in files.items():
        p = base / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)
    return base


def files_under(base: Path) -> dict[str, str]:
    return {p.relative_to(base).as_posix(): sha(p) for p in sorted(base.rglob("*")) if p.is_file()}


@pytest.fixture
def env(tmp_path):
    root = tmp_path / "site"
    root.mkdir()
    t = LocalTransport()
    site = Site("test", t, backend=None, remote_root=str(root))
    return {
        "root": root, "t": t, "site": site, "cache": tmp_path / "cache.json",
        "staging": Staging(site, cache_file=tmp_path / "cache.json"), "tmp": tmp_path,
    }


def push(env, local, sub="code/source", **kw):
    return push_tree(env["t"], local, str(env["root"] / sub), remote_root=str(env["root"]),
                     cache_file=env["cache"], **kw)


# ----------------------------------------------------------------------------- push
def test_second_push_sends_only_changed_files(env):
    src = tree(env["tmp"] / "src", {f"pkg/m{i:03d}.py": f"x = {i}\n" for i in range(200)})
    n0 = env["t"].counters.commands_run
    r1 = push(env, src)
    assert (r1.files_sent, r1.files_unchanged, r1.commands) == (200, 0, 2)
    assert env["t"].counters.commands_run - n0 == 2

    r2 = push(env, src)  # nothing changed: one listing command, no payload
    assert (r2.files_sent, r2.bytes_sent, r2.stream_bytes, r2.files_unchanged, r2.commands) == (0, 0, 0, 200, 1)

    (src / "pkg/m007.py").write_text("x = 'changed'\n")
    (src / "pkg/new.py").write_text("new = True\n")
    r3 = push(env, src)
    assert sorted(r3.sent) == ["pkg/m007.py", "pkg/new.py"]
    assert (r3.files_sent, r3.files_unchanged, r3.commands) == (2, 199, 2)
    assert r3.bytes_sent == len("x = 'changed'\n") + len("new = True\n")
    assert files_under(env["root"] / "code/source") == files_under(src)


def test_push_checksums_modes_and_skips(env):
    src = tree(env["tmp"] / "src", {
        "a.py": "print(1)\n", "sub/deep/b.bin": os.urandom(300_000), "run.sh": "#!/bin/sh\necho hi\n",
        "pkg/__pycache__/a.cpython-311.pyc": b"\0", "pkg/c.pyc": b"\0", ".git/HEAD": "ref\n", "sp ace/ü.txt": "u\n",
    })
    os.chmod(src / "run.sh", 0o755)
    r = push(env, src)
    dest = env["root"] / "code/source"
    want = {k: v for k, v in files_under(src).items() if "__pycache__" not in k and not k.endswith(".pyc")
            and not k.startswith(".git/")}
    assert files_under(dest) == want
    assert r.files_sent == 4
    assert os.stat(dest / "run.sh").st_mode & 0o111
    assert not list(env["root"].rglob(".batchsite-stage.*"))


def test_delete_removes_extra_remote_files_but_not_pycache(env):
    src = tree(env["tmp"] / "src", {"a.py": "a\n", "b.py": "b\n"})
    push(env, src)
    dest = env["root"] / "code/source"
    tree(dest, {"old.py": "old\n", "__pycache__/a.pyc": "c"})
    (src / "b.py").unlink()
    r = push(env, src)
    assert (dest / "b.py").exists() and (dest / "old.py").exists()  # no delete by default
    r = push(env, src, delete=True)
    assert r.files_deleted == 2 and r.files_sent == 0 and r.commands == 2
    assert sorted(files_under(dest)) == ["__pycache__/a.pyc", "a.py"]


def test_unchanged_files_are_not_hashed_again(env, monkeypatch):
    src = tree(env["tmp"] / "src", {f"f{i}.dat": os.urandom(1000) for i in range(20)})
    for p in src.iterdir():  # older than the 2 s racy window
        os.utime(p, (1_600_000_000, 1_600_000_000))
    calls = []
    real = manifest.sha256_file
    monkeypatch.setattr(manifest, "sha256_file", lambda p: calls.append(p) or real(p))
    assert push(env, src).files_sent == 20
    assert calls == []  # absent on the site: each file hashed once, as it is sent, and cached
    assert push(env, src).files_unchanged == 20
    assert calls == []
    (src / "f3.dat").write_bytes(os.urandom(1000))  # same size: the sha256 decides
    (src / "f4.dat").write_bytes(b"new")  # another size: differs anyway, hashed only as it is sent
    r = push(env, src)
    assert [Path(c).name for c in calls] == ["f3.dat"] and r.sent == ["f3.dat", "f4.dat"]


def test_push_to_remote_root_itself_and_leftover_stage_dirs_ignored(env):
    src = tree(env["tmp"] / "src", {"x.txt": "x\n"})
    (env["root"] / ".batchsite-stage.dead").mkdir()
    (env["root"] / ".batchsite-stage.dead" / "half").write_text("partial")
    r = push(env, src, sub="")
    assert r.files_sent == 1 and (env["root"] / "x.txt").read_text() == "x\n"
    assert push(env, src, sub="").files_unchanged == 1


def test_remote_root_behind_a_symlink_works(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(real, tmp_path / "link")
    t = LocalTransport()
    src = tree(tmp_path / "src", {"a.py": "a\n"})
    r = push_tree(t, src, str(tmp_path / "link/code/source"), remote_root=str(tmp_path / "link"), cache_file=None)
    assert r.files_sent == 1 and (real / "code/source/a.py").read_text() == "a\n"


def test_noisy_env_script_does_not_confuse_replies(tmp_path):
    env_sh = tmp_path / "env.sh"
    env_sh.write_text("echo 'Loading module python/3.11 @@SUMS @@DONE'\necho noise >&2\n")
    root = tmp_path / "site"
    t = LocalTransport(env_script=str(env_sh))
    src = tree(tmp_path / "src", {"hist/a.npz": "a", "b.txt": "b"})
    assert push_tree(t, src, str(root / "job_outputs/v1/FP"), remote_root=str(root), cache_file=None).files_sent == 2
    assert push_tree(t, src, str(root / "job_outputs/v1/FP"), remote_root=str(root), cache_file=None).files_sent == 0
    site = Site("noisy", t, backend=None, remote_root=str(root))
    r = Staging(site, cache_file=None).pull("hist", "v1", "FP", tmp_path / "back")
    assert r.received == ["hist/a.npz"]
    put_text(t, str(root / "x"), "hello\n", remote_root=str(root))
    assert read_text(t, str(root / "x"), remote_root=str(root)) == "hello\n"


# ----------------------------------------------------------------------------- path safety
def test_symlink_out_of_remote_root_is_refused(env):
    (env["root"] / "code").mkdir()
    os.symlink("/etc", env["root"] / "code/evil")
    src = tree(env["tmp"] / "src", {f"batchsite-test-{uuid.uuid4().hex}.txt": "x\n"})
    with pytest.raises(UnsafePathError) as e:
        push(env, src, sub="code/evil/x")
    assert "code/evil/x" in str(e.value) and "/etc/x" in str(e.value) and "outside remote_root" in str(e.value)
    assert not Path("/etc/x").exists()
    for f in src.iterdir():
        assert not (Path("/etc") / f.name).exists()
    with pytest.raises(UnsafePathError):
        put_text(env["t"], str(env["root"] / "code/evil/x"), "x", remote_root=str(env["root"]))
    with pytest.raises(UnsafePathError):
        read_text(env["t"], str(env["root"] / "code/evil/passwd"), remote_root=str(env["root"]))
    with pytest.raises(UnsafePathError):
        pull_tree(env["t"], str(env["root"] / "code/evil"), env["tmp"] / "back", remote_root=str(env["root"]),
                  cache_file=None)


def test_symlink_inside_the_pushed_tree_is_refused(env):
    outside = env["tmp"] / "outside"
    outside.mkdir()
    dest = env["root"] / "code/source"
    dest.mkdir(parents=True)
    os.symlink(outside, dest / "lib")
    src = tree(env["tmp"] / "src", {"a.py": "a\n", "lib/evil.py": "boom\n"})
    with pytest.raises(UnsafePathError) as e:
        push(env, src)
    assert str(outside / "evil.py") in str(e.value)
    assert list(outside.iterdir()) == []
    assert not (dest / "a.py").exists()  # refused before anything was renamed into place
    assert not list(env["root"].rglob(".batchsite-stage.*"))


@pytest.mark.parametrize("call", [
    lambda e: e["staging"].pull("hist", "../../etc", "FP", e["tmp"] / "back"),
    lambda e: e["staging"].pull("hist", "v1/../../x", "FP", e["tmp"] / "back"),
    lambda e: e["staging"].pull("hist", "v1", "fp", e["tmp"] / "back"),
    lambda e: e["staging"].pull("everything", "v1", "FP", e["tmp"] / "back"),
    lambda e: push(e, e["tmp"], sub="code/../../etc"),
    lambda e: push_tree(e["t"], e["tmp"], "/etc", remote_root=str(e["root"]), cache_file=None),
    lambda e: push_tree(e["t"], e["tmp"], "code/source", remote_root=str(e["root"]), cache_file=None),
    lambda e: push_tree(e["t"], e["tmp"], str(e["root"]) + "//code", remote_root=str(e["root"]), cache_file=None),
    lambda e: put_text(e["t"], str(e["root"]) + "/../x", "x", remote_root=str(e["root"])),
    lambda e: read_text(e["t"], str(e["root"]) + "/a/../../x", remote_root=str(e["root"])),
    lambda e: pull_tree(e["t"], str(e["root"]), e["tmp"] / "b", remote_root=str(e["root"]), patterns=["../x"]),
    lambda e: pull_tree(e["t"], str(e["root"]), e["tmp"] / "b", remote_root=str(e["root"]), patterns=["$(id)"]),
    lambda e: put_text(e["t"], str(e["root"]) + "/x", "x", remote_root=str(e["root"]), mode=0o10000),
])
def test_bad_input_refused_before_any_command(env, call):
    before = env["t"].counters.commands_run
    with pytest.raises((StagingInputError, UnsafePathError, ValueError)):
        call(env)
    assert env["t"].counters.commands_run == before


def test_input_errors_name_the_field():
    with pytest.raises(rg_layout.LayoutInputError, match=r"version='\.\./x'.*--version"):
        rg_layout.check_version("../x")
    with pytest.raises(rg_layout.LayoutInputError, match=r"type='fp': use FP or EXP"):
        rg_layout.check_run_type("fp")
    with pytest.raises(rg_layout.LayoutInputError, match=r"pull='all': use one of hist, outputs, logs"):
        rg_layout.check_kind("all")
    with pytest.raises(UnsafePathError, match=r"contains '\.\.'"):
        st.check_remote_path("/r/../etc", "/r")


def _tar(members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _member(name, data=b"x", kind=tarfile.REGTYPE, link=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, (data if kind == tarfile.REGTYPE else None)


@pytest.mark.parametrize("member,want", [
    (_member("/etc/x"), "/etc/x"),
    (_member("./../x"), "../x"),
    (_member("a/../../x"), "a/../../x"),
    (_member("./hist/a", kind=tarfile.SYMTYPE, link="/etc/passwd"), "hist/a"),
    (_member("./hist/a", kind=tarfile.LNKTYPE, link="/etc/passwd"), "hist/a"),
    (_member("./hist/a", kind=tarfile.CHRTYPE), "hist/a"),
    (_member("./not/asked"), "hist/a"),
])
def test_unsafe_tar_members_from_the_site_are_refused(tmp_path, member, want):
    local = tmp_path / "dest"
    rep = PullReport(remote_dir="/r", local_dir=str(local))
    with pytest.raises(UnsafePathError):
        transfer._install_pulled(_tar([member]), {want: "0" * 64}, local, rep, st.HashCache(None))
    assert not local.exists() or not any(local.rglob("*"))
    assert [p.name for p in tmp_path.iterdir()] == []  # temp dir removed


def test_file_changed_on_the_site_during_pull_is_not_installed(tmp_path):
    local = tmp_path / "dest"
    tree(local, {"hist/a": "old"})
    rep = PullReport(remote_dir="/r", local_dir=str(local))
    data = _tar([_member("./hist/a", b"newer"), _member("./hist/b", b"b")])
    want = {"hist/a": hashlib.sha256(b"new").hexdigest(), "hist/b": hashlib.sha256(b"b").hexdigest()}
    transfer._install_pulled(data, want, local, rep, st.HashCache(None))
    assert rep.changed_during_pull == ["hist/a"] and rep.received == ["hist/b"]
    assert (local / "hist/a").read_text() == "old" and (local / "hist/b").read_text() == "b"
    assert "pull again" in rep.summary()


# ----------------------------------------------------------------------------- disk full (real tmpfs)
@pytest.fixture
def tiny_site(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("the disk-full tests mount a real tmpfs and need root (as in CI)", pytrace=False)
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.fail(f"cannot mount tmpfs: {r.stderr.decode().strip()}", pytrace=False)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_leaves_no_partial_file_and_next_push_completes(tmp_path, tiny_site):
    root = tiny_site
    t = LocalTransport()
    cache = tmp_path / "cache.json"
    src = tree(tmp_path / "src", {f"f{i}.dat": os.urandom(1024) for i in range(4)})
    r = push_tree(t, src, str(root / "code/source"), remote_root=str(root), cache_file=cache)
    assert r.files_sent == 4
    v1 = files_under(root / "code/source")

    vfs = os.statvfs(root)
    (root / "filler").write_bytes(b"\0" * (vfs.f_bavail * vfs.f_frsize - 60 * 1024))
    tree(src, {**{f"f{i}.dat": os.urandom(20 * 1024) for i in range(4)},
               "new1.dat": os.urandom(20 * 1024), "new2.dat": os.urandom(20 * 1024)})
    with pytest.raises(RemoteDiskFullError) as e:
        push_tree(t, src, str(root / "code/source"), remote_root=str(root), cache_file=cache)
    assert "remote disk full or quota exceeded at" in str(e.value) and str(root / "code/source") in str(e.value)
    assert files_under(root / "code/source") == v1  # old content, nothing new under a final name
    assert not list(root.rglob(".batchsite-stage.*"))

    (root / "filler").unlink()
    r = push_tree(t, src, str(root / "code/source"), remote_root=str(root), cache_file=cache)
    assert r.files_sent == 6 and r.commands == 2
    assert files_under(root / "code/source") == files_under(src)


def test_put_text_disk_full_keeps_old_content(tmp_path, tiny_site):
    root, t = tiny_site, LocalTransport()
    put_text(t, str(root / "cfg.yaml"), "old\n", remote_root=str(root))
    vfs = os.statvfs(root)
    (root / "filler").write_bytes(b"\0" * (vfs.f_bavail * vfs.f_frsize - 8 * 1024))
    with pytest.raises(RemoteDiskFullError, match="remote disk full or quota exceeded at"):
        put_text(t, str(root / "cfg.yaml"), "new\n" * 10_000, remote_root=str(root))
    assert (root / "cfg.yaml").read_text() == "old\n"
    assert sorted(p.name for p in root.iterdir()) == ["cfg.yaml", "filler"]


# ----------------------------------------------------------------------------- pull
def _outputs(root: Path):
    return tree(root, {
        "job_outputs/v1/FP/hist/RG0/t_hist_RG0.npz": os.urandom(5000),
        "job_outputs/v1/FP/hist/z_hist_RG1.npz": os.urandom(5000),
        "job_outputs/v1/FP/batches/batch_0/t.npy": os.urandom(3000),
        "job_outputs/v1/FP/rg_fp_master_1.out": "out\n",
        "job_outputs/v1/EXP/hist/a.npz": "a",
        "job_outputs/v1/EXP/shift0.1/hist/b.npz": "b",
        "job_outputs/v1/EXP/shift0.1/batches/c.npy": "c",
        "job_outputs/v1/EXP/notshift/hist/d.npz": "d",
        "job_logs/v1/FP/rg_gen_RG0_1_0.err": "err\n",
    })


def test_pull_hist_fp_mirrors_the_layout(env):
    _outputs(env["root"])
    back = env["tmp"] / "back"
    n0 = env["t"].counters.commands_run
    r = env["staging"].pull("hist", "v1", "FP", back)
    assert env["t"].counters.commands_run - n0 == 1 and r.commands == 1
    assert r.files_received == 2 and r.files_unchanged == 0
    assert files_under(back) == {
        f"job_outputs/v1/FP/{k}": v for k, v in files_under(env["root"] / "job_outputs/v1/FP").items()
        if k.startswith("hist/")
    }
    assert not [p for p in back.parent.iterdir() if "batchsite-pull" in p.name]

    r = env["staging"].pull("hist", "v1", "FP", back)  # nothing changed: nothing sent
    assert (r.files_received, r.files_unchanged, r.commands) == (0, 2, 1)

    (env["root"] / "job_outputs/v1/FP/hist/z_hist_RG1.npz").write_bytes(b"new")
    (back / "job_outputs/v1/FP/hist/RG0/t_hist_RG0.npz").write_bytes(b"local edit")
    r = env["staging"].pull("hist", "v1", "FP", back)
    assert sorted(r.received) == ["hist/RG0/t_hist_RG0.npz", "hist/z_hist_RG1.npz"]
    assert (back / "job_outputs/v1/FP/hist/z_hist_RG1.npz").read_bytes() == b"new"


def test_pull_hist_exp_includes_shifts_and_outputs_logs(env):
    _outputs(env["root"])
    back = env["tmp"] / "back"
    env["staging"].pull("hist", "v1", "EXP", back)
    assert sorted(files_under(back / "job_outputs/v1/EXP")) == ["hist/a.npz", "shift0.1/hist/b.npz"]
    env["staging"].pull("outputs", "v1", "FP", back)
    assert files_under(back / "job_outputs/v1/FP") == files_under(env["root"] / "job_outputs/v1/FP")
    env["staging"].pull("logs", "v1", "FP", back)
    assert files_under(back / "job_logs/v1/FP") == {"rg_gen_RG0_1_0.err": sha(env["root"] / "job_logs/v1/FP/rg_gen_RG0_1_0.err")}


def test_pull_of_missing_version_says_so(env):
    with pytest.raises(StagingError, match=r"job_outputs/v9/FP does not exist on the site.*--version"):
        env["staging"].pull("outputs", "v9", "FP", env["tmp"] / "back")


# ----------------------------------------------------------------------------- single files
@pytest.mark.parametrize("mode", [0o600, 0o644, 0o755])
def test_put_text_mode_and_atomic(env, mode):
    p = env["root"] / "cred" / "token"
    put_text(env["t"], str(p), "s3cret\n", remote_root=str(env["root"]), mode=mode)
    assert stat.S_IMODE(p.stat().st_mode) == mode
    assert read_text(env["t"], str(p), remote_root=str(env["root"])) == "s3cret\n"
    put_text(env["t"], str(p), "rotated\n", remote_root=str(env["root"]), mode=mode)
    assert p.read_text() == "rotated\n" and stat.S_IMODE(p.stat().st_mode) == mode
    assert os.listdir(p.parent) == ["token"]


def test_read_text_missing(env):
    with pytest.raises(FileNotFoundError, match="does not exist on the site"):
        read_text(env["t"], str(env["root"] / "nope"), remote_root=str(env["root"]))


# ----------------------------------------------------------------------------- CLI and hook
@pytest.fixture
def local_conn(env, monkeypatch):
    monkeypatch.setenv("BATCHSITE_LOCAL_ROOT", str(env["root"]))
    monkeypatch.setenv("BATCHSITE_CACHE_DIR", str(env["tmp"] / "cachedir"))
    monkeypatch.delenv("BATCHSITE_CONN", raising=False)
    return env


def test_cli_push_and_pull(local_conn, capsys):
    env = local_conn
    code = tree(env["tmp"] / "source", {"rg.py": "x\n"})
    scripts = tree(env["tmp"] / "scripts", {"rg_fp_master.sh": "#!/bin/sh\n"})
    configs = tree(env["tmp"] / "configs", {"iqhe.yaml": "a: 1\n"})
    assert staging_main(["--action", "push", "--code", str(code), "--scripts", str(scripts),
                    "--scripts", str(configs), "--sys", "linux"]) == 0
    out = capsys.readouterr().out
    assert "push code:" in out and "1 file(s) sent" in out
    assert sorted(os.listdir(env["root"] / "scripts")) == ["iqhe.yaml", "rg_fp_master.sh"]
    _outputs(env["root"])
    assert staging_main(["--action", "pull", "--pull", "hist", "--version", "v1", "--type", "FP",
                    "--dest", str(env["tmp"] / "back"), "--sys", "linux"]) == 0
    assert "2 file(s) received" in capsys.readouterr().out
    assert (env["tmp"] / "back/job_outputs/v1/FP/hist/z_hist_RG1.npz").exists()


@pytest.mark.parametrize("argv,needle", [
    (["--action", "pull", "--pull", "hist", "--version", "../x", "--type", "FP"], "version='../x'"),
    (["--action", "pull", "--pull", "hist", "--type", "FP"], "needs --version"),
    (["--action", "pull", "--pull", "hist", "--version", "v1", "--type", "fp"], "--type"),
    (["--action", "push"], "--code DIR and/or --scripts DIR"),
    (["--action", "push", "--code", "/no/such/dir"], "not a local directory"),
])
def test_cli_bad_input_exits_2(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        staging_main(argv)
    assert e.value.code == 2
    assert needle in capsys.readouterr().err


def test_staging_hook_local(local_conn):
    from batchsite.hooks.staging import StagingHook

    env = local_conn
    code = tree(env["tmp"] / "source", {"rg.py": "x\n"})
    hook = StagingHook(site_conn_id="local", cache_file=env["cache"])
    try:
        assert hook.push_code(code).files_sent == 1
        assert hook.push_code(code).files_unchanged == 1
        _outputs(env["root"])
        assert hook.pull("logs", "v1", "FP", env["tmp"] / "back").files_received == 1
    finally:
        hook.close()


# ----------------------------------------------------------------------------- site manifest cache, switch-over
def test_site_manifest_cache_is_used_and_a_same_size_same_mtime_edit_is_still_seen(env):
    """rsync -a's quick check (size + mtime) skips a file rewritten with the same size and mtime;
    the site cache also keys on ctime, which no user tool can set back, so batchsite re-sends it."""
    src = tree(env["tmp"] / "src", {f"d{i % 3}/f{i}.dat": os.urandom(500) for i in range(12)})
    for p in src.rglob("*.dat"):
        os.utime(p, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    push(env, src)
    dest, cache = env["root"] / "code/source", env["root"] / "code/.batchsite-manifest.source"
    lines = cache.read_text().splitlines()
    assert len(lines) == 12 and not list(env["root"].rglob(".batchsite-stage.*"))
    # a wrong sum under a matching size/mtime/ctime is believed: the site did not hash the file again
    size, mtime, ctime, _, rel = lines[0].split(" ", 4)
    cache.write_text("\n".join([f"{size} {mtime} {ctime} {'0' * 64} {rel}", *lines[1:]]) + "\n")
    assert push(env, src).sent == [rel[2:]]

    victim = dest / "d1/f1.dat"
    st_before = victim.stat()
    victim.write_bytes(os.urandom(500))  # same size, then the old mtime put back
    os.utime(victim, ns=(st_before.st_atime_ns, st_before.st_mtime_ns))
    assert push(env, src).sent == ["d1/f1.dat"]
    assert files_under(dest) == files_under(src)

    # what rsync does with the same edit (documented in README "Staging speed")
    copy = env["tmp"] / "rsync-copy"
    subprocess.run(["rsync", "-a", f"{src}/", f"{copy}/"], check=True)
    (copy / "d1/f1.dat").write_bytes(os.urandom(500))
    os.utime(copy / "d1/f1.dat", ns=(st_before.st_atime_ns, st_before.st_mtime_ns))
    subprocess.run(["rsync", "-a", f"{src}/", f"{copy}/"], check=True)
    assert sha(copy / "d1/f1.dat") != sha(src / "d1/f1.dat")  # rsync kept the edited file


@pytest.fixture
def no_python3_on_site(tmp_path, monkeypatch):
    """The site's PATH without python3: the switch-over falls back to one `mv -t` per directory."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for exe in Path("/usr/bin").iterdir():
        if not exe.name.startswith("python"):
            (bin_dir / exe.name).symlink_to(exe)
    monkeypatch.setenv("PATH", str(bin_dir))
    assert subprocess.run(["/bin/bash", "-c", "command -v python3"], capture_output=True).returncode == 1


@pytest.mark.parametrize("python3", [True, False], ids=["python3", "mv-per-dir"])
def test_switch_over_into_existing_new_and_nested_dirs(env, python3, request):
    if not python3:
        request.getfixturevalue("no_python3_on_site")
    src = tree(env["tmp"] / "src", {"top.py": "t\n", "a/x.py": "x\n", "a/b/y.py": "y\n"})
    assert push(env, src).files_sent == 3  # empty destination: the stage renamed whole
    tree(src, {"top.py": "t2\n", "a/b/y.py": "y2\n", "a/new/deep/z.py": "z\n", "c/w.py": "w\n"})
    r = push(env, src)
    assert sorted(r.sent) == ["a/b/y.py", "a/new/deep/z.py", "c/w.py", "top.py"]
    assert files_under(env["root"] / "code/source") == files_under(src)
    assert not list(env["root"].rglob(".batchsite-stage.*"))


def test_a_site_path_in_the_way_refuses_before_any_rename(env):
    src = tree(env["tmp"] / "src", {"a.py": "a\n", "lib": "file here\n"})
    push(env, src)
    (src / "lib").unlink()
    tree(src, {"a.py": "a2\n", "lib/m.py": "m\n"})
    with pytest.raises(StagingError, match=r"lib on the site is in the way of the push"):
        push(env, src)
    assert (env["root"] / "code/source/a.py").read_text() == "a\n"  # nothing replaced


def test_cli_site_config_needs_no_airflow(env, tmp_path):
    code = tree(tmp_path / "source", {"rg.py": "x\n"})
    cfg = tmp_path / "plain.json"
    cfg.write_text(json.dumps({"extra": {"scheduler": "local", "transport": "local", "remote_root": str(env["root"])}}))
    probe = ("import sys; from batchsite.hooks.staging_cli import main; rc = main(sys.argv[1:]); "
             "assert not [m for m in sys.modules if m.split('.')[0] in ('airflow', 'paramiko')], 'imported'; "
             "sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", probe, "--action", "push", "--code", str(code), "--site-config", str(cfg)],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "BATCHSITE_CACHE_DIR": str(tmp_path / "c")})
    assert r.returncode == 0, r.stderr
    assert "1 file(s) sent" in r.stdout and (env["root"] / "code/source/rg.py").read_text() == "x\n"
    cfg.write_text(json.dumps({"host": "h", "extra": {"scheduler": "slurm", "remote_root": "/r"}}))
    r = subprocess.run([sys.executable, "-m", "batchsite.hooks.staging_cli", "--action", "push", "--code", str(code),
                        "--site-config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "transport 'ssh' takes its credentials from Airflow" in r.stderr
