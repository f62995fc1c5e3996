"""Push a tree to a site (over rsync, or the tar protocol), pull one back, put/read one file.

Built on ``Transport.sh`` running ``transfer.sh`` (beside this module; its header is
the site-side spec: modes, stdin/stdout formats, exit codes), user values passed as
positional arguments, so it behaves the same over ``local``, ``ssh`` and ``openssh``; rsync
pushes also use ``Transport.ssh_client`` (the system ssh with the transport's settings).

Remote commands per operation:

* ``push_tree`` over rsync (the default where this machine and the site both have ``rsync`` and
  the transport has ssh client settings, ``Transport.ssh_client``): 1 command lists the site's
  files (size, mtime; nothing hashed) and says whether the site has rsync, while the local tree is
  walked. Files whose size or mtime differ go in ONE ``rsync`` run over ssh with exactly the
  transport's settings (host, port, user, key, StrictHostKeyChecking and known_hosts; openssh: its
  ControlMaster). Its ``--rsync-path`` is ``transfer.sh rsync-recv``: the site's rsync writes the
  files into a stage dir (``--compare-dest``: the site's copy is the delta basis), then the same
  destination checks and switch-over as the tar push run. Files changed with their old size and
  mtime put back (ctime later than the last push of this pair, mtime not) are sent too
  (``--ignore-times``). ``delete=True`` adds 1 command. Unchanged tree: 1 command, 0 bytes. Where
  rsync is missing on either end the tar push below runs instead.
* ``push_tree`` over tar: 1 command lists the remote manifest (path, size, sha256; the site hashes only
  files whose size/mtime/ctime differ from its manifest cache) while the local tree is walked; if
  something changed, 1 more command receives ONE tar stream of only the changed files on stdin,
  extracts it into a temp dir next to the target (same filesystem), checks the sha256 of every
  received file, checks that every destination resolves (symlinks followed on the site) under
  remote_root and that nothing is in the way, and only then renames the files into place (one
  process). A reader never sees a half-written file under its final name. Unchanged tree:
  1 command, 0 bytes.
* ``pull_tree``: 1 command. The local manifest goes up on stdin; the site answers with its manifest
  followed by ONE ``tar cf -`` of only the files whose sha256 differs. Files are written into a temp
  dir next to the local target, verified, then renamed into place.
* ``put_text`` / ``read_text``: 1 command each; writes go to a temp name in the same directory, then ``mv``.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import os
import posixpath
import re
import shlex
import shutil
import stat
import tarfile
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from batchsite.model import CommandResult
from batchsite.shellscripts import load
from batchsite.staging.manifest import MB, HashCache, LocalEntry, cache_path, fill_sha, local_manifest, stamp
from batchsite.staging.paths import (
    StagingError, StagingInputError, UnsafePathError, check_rel, check_remote_path, check_remote_root, glob_to_ere,
)
from batchsite.transport.base import (
    HostKeyError, SSHClientCommand, Transport, TransportError, host_key_help, render_command_line,
)
from batchsite.transport.local import allowed_env, run_argv

#: the site side, run as ``sh -c <text> batchsite <mode> <remote_root> ...``
TRANSFER = load("batchsite.staging", "transfer.sh")

# exit codes of transfer.sh
_RC_UNSAFE = 77
_RC_MISMATCH = 73
_RC_MISSING = 3


class RemoteDiskFullError(StagingError):
    """The site's filesystem is full or the quota is exceeded; nothing was half-written."""


class LocalDiskFullError(StagingError):
    """This machine's filesystem is full; nothing was half-written."""


@dataclasses.dataclass
class PushReport:
    remote_dir: str
    files_sent: int = 0
    bytes_sent: int = 0  # payload bytes (file contents) sent
    #: bytes of the stream sent: tar, the tar on stdin (payload + headers); rsync, its "Total bytes
    #: sent" (deltas, literal data and protocol)
    stream_bytes: int = 0
    files_unchanged: int = 0
    files_deleted: int = 0
    commands: int = 0  # remote commands used (an rsync run counts as one)
    sent: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)  # local symlinked dirs, sockets, ...
    method: str = "tar"  # "rsync" or "tar": how the files went
    #: why the tar push ran where rsync was asked for ("" when rsync ran or was not asked for)
    fallback_reason: str = ""

    def summary(self) -> str:
        s = (f"{self.remote_dir}: {self.files_sent} file(s) sent ({_human(self.bytes_sent)}), "
             f"{self.files_unchanged} unchanged")
        if self.files_deleted:
            s += f", {self.files_deleted} deleted"
        if self.skipped:
            s += f", {len(self.skipped)} skipped (symlinked dirs / special files)"
        how = f"via {self.method}" + (f" ({self.fallback_reason})" if self.fallback_reason else "")
        return s + f"; {how}, {_human(self.stream_bytes)} streamed; {self.commands} remote command(s)"


@dataclasses.dataclass
class PullReport:
    remote_dir: str
    local_dir: str
    files_received: int = 0
    bytes_received: int = 0
    files_unchanged: int = 0
    commands: int = 0
    received: list[str] = dataclasses.field(default_factory=list)
    #: files that changed (or vanished) on the site while being pulled: local copy left as it was
    changed_during_pull: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        s = (f"{self.remote_dir} -> {self.local_dir}: {self.files_received} file(s) received "
             f"({_human(self.bytes_received)}), {self.files_unchanged} unchanged")
        if self.changed_during_pull:
            s += (f"; {len(self.changed_during_pull)} changed on the site while pulling and were left as they "
                  f"were (pull again): {', '.join(self.changed_during_pull[:5])}")
        return s + f"; {self.commands} remote command(s)"


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)



def _raise_for(r: CommandResult, what: str, where: str) -> None:
    """Turn a failed snippet into the error a person can act on."""
    if r.returncode == 0:
        return
    err = r.err.strip()
    if r.returncode == _RC_UNSAFE:
        raise UnsafePathError(err.replace("batchsite: ", "", 1) or f"{where}: refused (outside remote_root)")
    if "@@ENOSPC" in err or "No space left on device" in err or "Disk quota exceeded" in err:
        at = where
        for line in err.splitlines():
            if line.startswith("@@ENOSPC "):
                at = line[len("@@ENOSPC "):]
                break
        detail = [ln for ln in err.splitlines() if not ln.startswith("@@")][-3:]
        raise RemoteDiskFullError(
            f"remote disk full or quota exceeded at {at} while {what}; nothing was left half-written "
            f"(files keep their previous content). Free space or raise the quota, then run it again. "
            f"Site said: {' | '.join(detail)}"
        )
    if r.returncode == _RC_MISMATCH:
        raise StagingError(f"{what}: {err or 'checksum mismatch after transfer'}")
    tail = " | ".join(err.splitlines()[-5:]) or r.out.strip()[-300:]
    raise StagingError(f"{what} failed (exit {r.returncode}) at {where}: {tail}")


def _parse_sums(lines: Iterable[str]) -> dict[str, str]:
    out = {}
    for line in lines:
        if len(line) < 67 or line.startswith("\\"):
            continue  # names with newline/backslash: sha256sum escapes them; never ours
        rel = line[66:]
        out[rel[2:] if rel.startswith("./") else rel] = line[:64]
    return out



def _rindex(lines: list[str], marker: str, before: int | None = None) -> int:
    end = len(lines) if before is None else before
    for i in range(end - 1, -1, -1):
        if lines[i] == marker:
            return i
    raise ValueError(marker)


def _section(lines: list[str], first: str, last: str, what: str) -> list[str]:
    """The lines between the last ``first`` .. ``last`` markers of a reply (searched from the end:
    an env script may print before us)."""
    try:
        i_last = _rindex(lines, last)
        i_first = _rindex(lines, first, i_last)
    except ValueError:
        raise StagingError(f"unexpected reply while {what}: {chr(10).join(lines)[-300:]!r}") from None
    return lines[i_first + 1:i_last]


def _parse_manifest(out: str, where: str) -> dict[str, tuple[int, str]] | None:
    lines = out.splitlines()  # markers are searched from the end: an env script may print before us
    if lines and lines[-1] == "@@NODIR":
        return None
    try:
        i_end = _rindex(lines, "@@END")
        i_sums = _rindex(lines, "@@SUMS", i_end)
        i_sizes = _rindex(lines, "@@SIZES", i_sums)
    except ValueError:
        raise StagingError(f"unexpected reply while listing {where} on the site: {out[:300]!r}") from None
    sizes = {}
    for line in lines[i_sizes + 1:i_sums]:
        size, _, rel = line.partition(" ")
        if size.isdigit() and rel.startswith("./"):
            sizes[rel[2:]] = int(size)
    sums = _parse_sums(lines[i_sums + 1:i_end])
    return {rel: (sizes.get(rel, -1), sha) for rel, sha in sums.items()}



# --------------------------------------------------------------------------- push
def push_tree(
    transport: Transport,
    local_dir: str | os.PathLike,
    remote_dir: str,
    *,
    remote_root: str,
    delete: bool = False,
    cache_file: str | os.PathLike | None | bool = True,
    timeout: float = 1800.0,
    method: str = "auto",
) -> PushReport:
    """Make remote_dir hold the files of local_dir; send only what differs.

    ``delete=True`` also removes remote files that are not in local_dir (never ``__pycache__``,
    ``*.pyc`` or ``.git``). ``cache_file``: True = the default hash cache, a path, or None/False = none.
    ``method``: "auto" (rsync where both ends have it, else tar), "rsync" (error without it) or "tar".
    """
    if method not in PUSH_METHODS:
        raise StagingInputError(f"method={method!r}: use one of {', '.join(PUSH_METHODS)}")
    root = check_remote_root(remote_root)
    rdir = check_remote_path(remote_dir, root)
    local = Path(local_dir).resolve()
    if not local.is_dir():
        raise StagingInputError(f"local directory {local_dir} does not exist (or is not a directory)")
    parent = posixpath.dirname(rdir) if rdir != root else rdir
    cache = HashCache(cache_path(cache_file))
    fallback_reason = ""
    if method != "tar":
        try:
            pushed = _rsync_push(transport, local, rdir, root, parent, delete=delete, cache=cache, timeout=timeout)
        finally:
            cache.save()
        if isinstance(pushed, PushReport):
            return pushed
        if method == "rsync":
            raise StagingError(f"pushing {local_dir} to {rdir} with rsync: {pushed}")
        fallback_reason = pushed
    report = PushReport(remote_dir=rdir, fallback_reason=fallback_reason)
    start = transport.counters.commands_run
    try:
        # the local walk (cached sums only) runs while the site lists its side
        with ThreadPoolExecutor(1) as pool:
            walk = pool.submit(local_manifest, local, cache, skipped=report.skipped, need_sha=lambda rel, size: False)
            r = transport.sh(TRANSFER, "manifest", root, rdir, parent, timeout=timeout)
            mine = walk.result()
        _raise_for(r, f"listing {rdir} on the site", rdir)
        theirs = _parse_manifest(r.out, rdir) or {}
        # only a file the site has with the same size needs its sha256 now; the others differ anyway
        # and are hashed once, as they are sent
        fill_sha(mine, cache, lambda rel, size: theirs.get(rel, (-1, ""))[0] == size)
        changed = [rel for rel in sorted(mine) if theirs.get(rel, (None, None))[1] != mine[rel].sha256]
        to_delete = sorted(set(theirs) - set(mine)) if delete else []
        report.files_unchanged = len(mine) - len(changed)
        if not changed and not to_delete:
            report.commands = transport.counters.commands_run - start
            return report
        payload, sums = _push_payload(mine, changed, to_delete, cache)
    finally:
        cache.save()
    report.stream_bytes = len(payload)
    r = transport.sh(TRANSFER, "push", root, rdir, parent, stdin=payload, timeout=timeout)
    report.commands = transport.counters.commands_run - start
    _raise_for(r, f"pushing {local_dir} to {rdir}", rdir)
    got = _parse_sums(_section(r.out.splitlines(), "@@SUMS", "@@DONE", f"pushing to {rdir} (stderr: {r.err[-300:]!r})"))
    if got != sums:
        bad = sorted(k for k in set(got) | set(sums) if got.get(k) != sums.get(k))
        raise StagingError(f"checksums on the site differ from what was sent to {rdir}: {bad[:10]}")
    report.files_sent = len(changed)
    report.bytes_sent = sum(mine[rel].size for rel in changed)
    report.sent = changed
    report.files_deleted = len(to_delete)
    return report


# --------------------------------------------------------------------------- push over rsync
PUSH_METHODS = ("auto", "rsync", "tar")
#: rsync's destination argument; transfer.sh rsync-recv replaces it with its stage. A path that
#: cannot be created, so an rsync run without the wrapper fails instead of writing anywhere
_RSYNC_DEST_PLACEHOLDER = "/dev/null/batchsite-stage"
#: rsync exits with these when the connection failed or broke (and ssh's own 255)
_RSYNC_CONNECTION_CODES = (10, 12, 30, 35, 255)
#: rsync's exit codes that need words when its own message did not reach us (it can end first)
_RSYNC_EXIT_MEANINGS = {11: "file I/O error on the site, e.g. a full disk or quota",
                        23: "some files could not be transferred"}
_ITEM_RE = re.compile(rb"^([<>ch.*][fdLDS]\S{9}) (\d+) (.*)$")


def rsync_rsh(argv: Sequence[str]) -> str:
    """``argv`` as the one string ``rsync -e`` takes: rsync splits it on spaces and honours
    single and double quotes (not backslashes), which is what ``shlex.quote`` emits."""
    for a in argv:
        if any(c in a for c in "\n\r\x00\\"):
            raise StagingInputError(f"ssh option {a!r}: newlines, NUL and backslashes cannot pass through rsync -e")
    return " ".join(shlex.quote(a) for a in argv)


def rsync_argv(client: SSHClientCommand, local: Path, rdir: str, rsync_path: str, *,
               ignore_times: bool = False) -> list[str]:
    """The local rsync of a push: the files named on stdin (NUL-separated, relative to ``local``),
    file symlinks followed, mtimes kept, modes as the tar push (the umask applies, u+rw added),
    only files differing from ``rdir`` by size or mtime sent (``--compare-dest``, ``rdir``'s copy
    as the delta basis), one itemized line per file sent and the byte counts on stdout."""
    return [
        "rsync", "--files-from=-", "--from0", "--times", "--copy-links", "--chmod=u+rw",
        *(["--ignore-times"] if ignore_times else []),
        f"--compare-dest={rdir}", "--out-format=%i %l %n", "--stats", "--no-human-readable",
        f"--rsync-path={rsync_path}", "-e", rsync_rsh(client.argv),
        f"{local}/", f"{client.destination}:{_RSYNC_DEST_PLACEHOLDER}",
    ]


def _unescape_rsync_name(name: bytes) -> str:
    """rsync writes a non-printable byte of a name as ``\\#ooo`` (octal)."""
    return re.sub(rb"\\#([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), name).decode("utf-8", "surrogateescape")


def parse_rsync_output(out: bytes) -> tuple[list[tuple[str, int]], int]:
    """(the files rsync sent with their sizes, "Total bytes sent") from ``rsync_argv``'s stdout."""
    sent, total = [], -1
    for line in out.splitlines():
        m = _ITEM_RE.match(line)
        if m and m.group(1)[:2] in (b"<f", b">f"):  # "<": sent to the remote side; ">": a local copy
            sent.append((_unescape_rsync_name(m.group(3)), int(m.group(2))))
        elif line.startswith(b"Total bytes sent: "):
            total = int(line.split(b":", 1)[1].strip().replace(b",", b"").replace(b".", b""))
    if total < 0:
        raise StagingError(f"rsync printed no 'Total bytes sent' line: {out[-300:]!r}")
    return sent, total


def _forced(mine: dict[str, LocalEntry], last_push_ns: int | None) -> list[str]:
    """Files changed since the last push of this pair with their mtime set back to before it
    (``touch -r``, a tool restoring timestamps): a ctime after that push, an mtime not."""
    if last_push_ns is None:
        return []
    return sorted(rel for rel, e in mine.items() if e.stamp[2] > last_push_ns >= e.stamp[1])


@dataclasses.dataclass
class SiteListing:
    """``transfer.sh stat``'s reply."""

    has_rsync: bool
    free_bytes: int | None  # where the stage goes; None: df said nothing
    files: dict[str, tuple[int, int]] | None  # {rel: (size, mtime_ns)}; None: DIR does not exist


def _parse_stat(out: str, where: str) -> SiteListing:
    lines = out.splitlines()  # markers are searched from the end: an env script may print before us
    probe = [line for line in lines if line in ("@@RSYNC yes", "@@RSYNC no")]
    free = [line.split(" ", 1)[1] for line in lines if line.startswith("@@FREE ")]
    if not probe or not free:
        raise StagingError(f"unexpected reply while listing {where} on the site: {out[:300]!r}")
    listing = SiteListing(probe[-1] == "@@RSYNC yes", int(free[-1]) * 1024 if free[-1].isdigit() else None, None)
    if lines[-1] == "@@NODIR":
        return listing
    listing.files = {}
    for line in _section(lines, "@@STAT", "@@END", f"listing {where} on the site"):
        size, mtime, rel = line.split(" ", 2)
        sec, _, frac = mtime.partition(".")
        listing.files[rel] = (int(size), int(sec) * 1_000_000_000 + int(frac[:9].ljust(9, "0")))
    return listing


def _rsync_push(transport: Transport, local: Path, rdir: str, root: str, parent: str, *, delete: bool,
                cache: HashCache, timeout: float) -> PushReport | str:
    """The push over rsync; returns why not (a str) where rsync is missing on either end.

    1 command lists the site's files (size, mtime; free space; whether it has rsync) while the local
    tree is walked; the files whose size or mtime differ (or are forced, see ``_forced``) go in ONE
    rsync run; ``delete`` adds 1 command when there is something to remove. A pair (local dir, site
    dir) never pushed from here (no record in the cache) skips the listing unless ``delete``: every
    file goes to the one rsync run, which compares them itself (a first push: 1 round trip less)."""
    if shutil.which("rsync", path=allowed_env().get("PATH")) is None:
        return "no rsync on this machine"
    with transport.ssh_client() as client:
        if client is None:
            return f"the {transport.kind} transport gives no ssh client settings"
        started = time.time_ns()
        report = PushReport(remote_dir=rdir, method="rsync")
        start = transport.counters.commands_run
        pair = f"{local}\0{client.destination}:{client.port}:{rdir}"
        last_push = cache.pushes.get(pair)
        if last_push is None and not delete:
            mine = local_manifest(local, cache, skipped=report.skipped, need_sha=lambda rel, size: False)
            candidates, to_delete, forced = sorted(mine), [], []
        else:
            with ThreadPoolExecutor(1) as pool:
                walk = pool.submit(local_manifest, local, cache, skipped=report.skipped,
                                   need_sha=lambda rel, size: False)
                r = transport.sh(TRANSFER, "stat", root, rdir, parent, timeout=timeout)
                mine = walk.result()
            _raise_for(r, f"listing {rdir} on the site", rdir)
            listing = _parse_stat(r.out, rdir)
            if not listing.has_rsync:
                return "no rsync on the site's PATH"
            theirs = listing.files or {}
            forced = _forced(mine, last_push)
            candidates = sorted({rel for rel, e in mine.items() if theirs.get(rel) != (e.size, e.stamp[1])}
                                | set(forced))
            to_delete = sorted(set(theirs) - set(mine)) if delete else []
            needed = sum(mine[rel].size for rel in candidates)
            if listing.free_bytes is not None and needed > listing.free_bytes:
                # the stage holds a whole copy of every file sent: it cannot fit, so send nothing
                raise RemoteDiskFullError(
                    f"remote disk full or quota exceeded at {rdir}: the push needs {_human(needed)} in a stage "
                    f"dir there and the site's filesystem has {_human(listing.free_bytes)} free; nothing was sent "
                    "(files keep their previous content). Free space or raise the quota, then run it again.")
        if candidates:
            rsync_path = render_command_line(["sh", "-c", TRANSFER, "batchsite", "rsync-recv", root, rdir, parent],
                                             env_script=transport.env_script, env_output_to_stderr=True)
            # a forced file passes rsync's quick check: --ignore-times sends it (as deltas against the
            # site's copy); the other candidates differ anyway
            argv = rsync_argv(client, local, rdir, rsync_path, ignore_times=bool(forced))
            rc, out, err = run_argv(argv, "".join(f"{rel}\0" for rel in candidates).encode(), timeout,
                                    client.pass_env)
            report.commands += 1
            if rc != 0:
                if b"@@NORSYNC" in err:
                    return "no rsync on the site's PATH"
                _unstage(transport, root, err)
                _raise_for_rsync(client, rc, out, err, rdir)
            if b"@@INSTALLED " not in err:
                raise StagingError(f"rsync to {rdir} ended without batchsite's switch-over on the site: {err[-300:]!r}")
            sent, report.stream_bytes = parse_rsync_output(out)
            report.sent = sorted(rel for rel, _ in sent)
            report.files_sent = len(sent)
            report.bytes_sent = sum(size for _, size in sent)
    report.files_unchanged = len(mine) - report.files_sent
    if to_delete:
        for rel in to_delete:
            check_rel(rel, "remote file")
        r = transport.sh(TRANSFER, "delete", root, rdir, stdin="".join(f"{rel}\n" for rel in to_delete).encode(),
                         timeout=timeout)
        _raise_for(r, f"removing files of {rdir} that are not in {local}", rdir)
        report.files_deleted = len(_section(r.out.splitlines(), "@@DELETED", "@@END", f"deleting under {rdir}"))
    report.commands += transport.counters.commands_run - start
    cache.pushed(pair, started)
    return report


def _unstage(transport: Transport, root: str, err: bytes) -> None:
    """Remove the stage dir of a failed rsync run now (the rsync client can end before the site's
    script has removed it; a full disk wants the space back). Best effort: a cut connection
    leaves it to the site's script, or to the next push after 12 h."""
    stage = re.search(rb"^@@STAGE (/.+)$", err, re.M)
    if stage is None:
        return
    try:
        transport.sh(TRANSFER, "unstage", root, stage.group(1).decode("utf-8", "surrogateescape"), timeout=60)
    except TransportError:
        pass


def _raise_for_rsync(client: SSHClientCommand, rc: int, out: bytes, err: bytes, rdir: str) -> None:
    """An rsync push failed: refused path, full disk, broken connection or host key, else the site's words."""
    text = err.decode("utf-8", "replace")
    if "batchsite: refused" in text:
        _raise_for(CommandResult(argv=["rsync"], returncode=_RC_UNSAFE, stdout=out, stderr=err), "", rdir)
    if "batchsite: " in text or "@@ENOSPC" in text or "No space left on device" in text or "Disk quota" in text:
        _raise_for(CommandResult(argv=["rsync"], returncode=rc, stdout=out, stderr=err), f"pushing to {rdir}", rdir)
    if "Host key verification failed" in text or "REMOTE HOST IDENTIFICATION HAS CHANGED" in text:
        raise HostKeyError(host_key_help(client.host, client.port, client.known_hosts))
    tail = " | ".join(text.strip().splitlines()[-4:])
    if rc in _RSYNC_CONNECTION_CODES:
        raise TransportError(f"rsync over ssh to {client.destination}:{client.port} failed (exit {rc}): {tail}")
    meaning = _RSYNC_EXIT_MEANINGS.get(rc, "")
    raise StagingError(f"rsync to {rdir} failed (exit {rc}{': ' + meaning if meaning else ''}): {tail}; nothing of "
                       "this push was renamed into place")


def _push_payload(mine: dict[str, LocalEntry], changed: list[str], to_delete: list[str],
                  cache: HashCache) -> tuple[bytes, dict[str, str]]:
    """ONE tar: control lists + the changed files.

    A file whose stat changed since the manifest is hashed again as read, so the sums match what
    is sent; the site checks them before anything is renamed into place.
    """
    buf = io.BytesIO()
    sums: dict[str, str] = {}
    now = int(time.time())
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in changed:
            e = mine[rel]
            try:
                with open(e.path, "rb") as f:
                    data = f.read()
                    st = os.fstat(f.fileno())
            except OSError as exc:
                raise StagingError(f"local file {e.path} vanished or became unreadable while pushing: {exc}") from exc
            if e.sha256 and stamp(st) == e.stamp and len(data) == e.size:
                sums[rel] = e.sha256
            else:
                sums[rel] = hashlib.sha256(data).hexdigest()
                if len(data) == st.st_size:
                    cache.remember(e.path, st, sums[rel])
            e.size = len(data)
            info = tarfile.TarInfo("f/" + rel)
            info.size = len(data)
            info.mode = stat.S_IMODE(st.st_mode) & 0o777 | 0o600
            info.mtime = int(st.st_mtime)
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
        for rel in to_delete:
            check_rel(rel, "remote file")
        ctl = {
            "ctl/list": "".join(f"{rel}\n" for rel in changed),
            "ctl/sums": "".join(f"{sums[rel]}  {rel}\n" for rel in changed),
            "ctl/delete": "".join(f"./{rel}\n" for rel in to_delete),
            "ctl/check": "".join(f"./{rel}\n" for rel in [*changed, *to_delete]),
        }
        for name, text in ctl.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o600, now
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue(), sums



# --------------------------------------------------------------------------- pull
def pull_tree(
    transport: Transport,
    remote_dir: str,
    local_dir: str | os.PathLike,
    *,
    remote_root: str,
    patterns: Sequence[str] | None = None,
    cache_file: str | os.PathLike | None | bool = True,
    timeout: float = 3600.0,
) -> PullReport:
    """Mirror the files of remote_dir (matching ``patterns``, globs relative to remote_dir) into local_dir.

    Only files whose sha256 differs are transferred and replaced. One remote command.
    """
    root = check_remote_root(remote_root)
    rdir = check_remote_path(remote_dir, root)
    regexes = [glob_to_ere(pattern) for pattern in (patterns or [])]
    local = Path(local_dir).absolute()
    report = PullReport(remote_dir=rdir, local_dir=str(local))
    cache = HashCache(cache_path(cache_file))
    start = transport.counters.commands_run
    try:
        mine = local_manifest(local, cache, regexes=regexes, strict=False)
        stdin = "".join(f"{e.sha256}  {rel}\n" for rel, e in mine.items()).encode()

        r = transport.sh(TRANSFER, "pull", root, rdir, *regexes, stdin=stdin, timeout=timeout)
        report.commands = transport.counters.commands_run - start
        if r.returncode == _RC_MISSING and "@@NODIR" in r.err:
            raise StagingError(f"nothing to pull: {rdir} does not exist on the site (check --version and --type)")
        _raise_for(r, f"pulling {rdir}", rdir)
        manifest, tar_bytes = _split_pull_reply(r.stdout, rdir)
        want: dict[str, str] = {}
        for line in manifest.splitlines():
            flag, sha, rel = line[:1], line[2:66], line[67:]
            if flag == "=":
                report.files_unchanged += 1
            elif flag == "S":
                check_rel(rel, f"file from the site under {rdir}")
                want[rel] = sha
        if want:
            _install_pulled(tar_bytes, want, local, report, cache)
        missing = sorted(set(want) - set(report.received) - set(report.changed_during_pull))
        report.changed_during_pull.extend(missing)
    finally:
        cache.save()
    return report


_PULL_MARK = b"\n@@BATCHSITE-PULL "
_FILE_MARK = "\n@@BATCHSITE-FILE\n"


def _split_pull_reply(stdout: bytes, where: str) -> tuple[str, bytes]:
    """Skip anything the site's env script printed; then "<n>\n", n bytes of manifest, the tar."""
    i = stdout.find(_PULL_MARK)
    head, sep, rest = stdout[i + len(_PULL_MARK):].partition(b"\n") if i >= 0 else (b"", b"", b"")
    if not sep or not head.isdigit():
        raise StagingError(f"unexpected reply while pulling {where}: {stdout[:300]!r}")
    n = int(head)
    return rest[:n].decode("utf-8", "surrogateescape"), rest[n:]


def _install_pulled(tar_bytes: bytes, want: dict[str, str], local: Path, report: PullReport, cache: HashCache) -> None:
    """Write each wanted member into a temp dir next to ``local``, verify, then rename into place."""
    try:
        local.parent.mkdir(parents=True, exist_ok=True)
        tmpdir = Path(tempfile.mkdtemp(prefix=f".{local.name}.batchsite-pull.", dir=local.parent))
    except OSError as e:
        _raise_local(e, local)
    try:
        ok: list[tuple[str, tarfile.TarInfo]] = []
        try:
            with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r|") as tar:
                for m in tar:
                    name = m.name[2:] if m.name.startswith("./") else m.name
                    if m.name.startswith("/") or ".." in m.name.split("/"):
                        raise UnsafePathError(f"the site sent a tar member with an unsafe name {m.name!r}: refused")
                    if not m.isreg():
                        raise UnsafePathError(
                            f"the site sent {m.name!r} as a {'symlink' if m.issym() else 'link/device/dir'}: refused"
                        )
                    if name not in want:
                        raise UnsafePathError(f"the site sent {m.name!r}, which was not asked for: refused")
                    check_rel(name, "tar member")
                    dest = tmpdir / name
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    h = hashlib.sha256()
                    src = tar.extractfile(m)
                    with open(dest, "wb") as f:
                        for chunk in iter(lambda: src.read(MB), b""):
                            h.update(chunk)
                            f.write(chunk)
                    if h.hexdigest() != want[name]:
                        report.changed_during_pull.append(name)
                        dest.unlink()
                        continue
                    os.chmod(dest, stat.S_IMODE(m.mode) & 0o777 | 0o600)
                    os.utime(dest, (m.mtime, m.mtime))
                    ok.append((name, m))
        except tarfile.TarError as e:
            raise StagingError(f"the tar stream from the site for {report.remote_dir} is damaged: {e}") from e
        for name, m in ok:
            final = local / name
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmpdir / name, final)
            report.received.append(name)
            report.bytes_received += m.size
            cache.remember(final, final.stat(), want[name])
        report.files_received = len(report.received)
    except OSError as e:
        _raise_local(e, local)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _raise_local(e: OSError, where: Path):
    if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        raise LocalDiskFullError(
            f"local disk full or quota exceeded at {where}; nothing was left half-written. Free space and pull again."
        ) from e
    raise StagingError(f"writing into {where} failed: {e}") from e


# --------------------------------------------------------------------------- single files
def put_text(transport: Transport, path: str, text: str | bytes, *, remote_root: str, mode: int = 0o644) -> None:
    """Write one file atomically (temp name in the same dir + mv). mode=0o600 for credential files."""
    root = check_remote_root(remote_root)
    checked = check_remote_path(path, root)
    if not isinstance(mode, int) or not 0 <= mode <= 0o7777:
        raise StagingInputError(f"mode={mode!r} must be an int like 0o644 or 0o600")
    data = text.encode() if isinstance(text, str) else bytes(text)
    r = transport.sh(TRANSFER, "put", root, checked, f"{mode:o}", stdin=data, timeout=300)
    _raise_for(r, f"writing {checked}", checked)
    if "@@DONE" not in r.out.splitlines():
        raise StagingError(f"unexpected reply while writing {checked}: {r.out[-300:]!r}")


def read_text(transport: Transport, path: str, *, remote_root: str) -> str:
    root = check_remote_root(remote_root)
    checked = check_remote_path(path, root)
    r = transport.sh(TRANSFER, "read", root, checked, timeout=300)
    if r.returncode == _RC_MISSING and "@@NOFILE" in r.err:
        raise FileNotFoundError(f"{checked} does not exist on the site")
    _raise_for(r, f"reading {checked}", checked)
    i = r.out.find(_FILE_MARK)
    if i < 0:
        raise StagingError(f"unexpected reply while reading {checked}: {r.out[:300]!r}")
    return r.out[i + len(_FILE_MARK):]
