"""File staging between this machine and a site: code and scripts up, outputs and logs down.

Built only on ``Transport.sh`` (a fixed shell snippet, user values passed as quoted ``$1 ..``),
so it behaves the same over ``local``, ``ssh`` and ``openssh``. No Airflow import here.

Remote commands per operation:

* ``push_tree``: 1 command lists the remote manifest (path, size, sha256); if something changed,
  1 more command receives ONE tar stream of only the changed files on stdin, extracts it into a
  temp dir next to the target (same filesystem), checks the sha256 of every received file, checks
  that every destination resolves (symlinks followed on the site) under remote_root, and only then
  renames each file into place. A reader never sees a half-written file under its final name.
  Unchanged tree: 1 command, 0 bytes.
* ``pull_tree``: 1 command. The local manifest goes up on stdin; the site answers with its manifest
  followed by ONE ``tar cf -`` of only the files whose sha256 differs. Files are written into a temp
  dir next to the local target, verified, then renamed into place.
* ``put_text`` / ``read_text``: 1 command each; writes go to a temp name in the same directory, then ``mv``.

Needs on the site: POSIX sh, awk, tar, and GNU coreutils/findutils (``realpath -m``, ``sha256sum``,
``xargs -d``, ``find -printf``), i.e. any Linux batch site.

Seed-compatible layer (the group's ``file_management.py``)::

    python -m batchsite.staging --action push --code source --scripts Taskfarm/scripts
    python -m batchsite.staging --action pull --pull hist --version v1 --type FP --sys linux
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import hashlib
import io
import json
import os
import posixpath
import re
import shutil
import stat
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from batchsite.model import CommandResult
from batchsite.transport.base import Transport

#: directories and files never staged (and never listed on the site)
SKIP_DIRS = frozenset({"__pycache__", ".git"})
SKIP_SUFFIXES = (".pyc",)
#: temp dirs of an unfinished push; never part of a manifest, removed after 12 h
STAGE_PREFIX = ".batchsite-stage."

#: the campaigns' version token (campaign.common.SAFE_TOKEN): 1-64 characters, used with fullmatch
VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
RUN_TYPES = ("FP", "EXP")
PULL_KINDS = ("hist", "outputs", "logs")
_PATTERN_RE = re.compile(r"^[A-Za-z0-9._*?/-]+$")

# exit codes of the remote snippets
_RC_UNSAFE = 77
_RC_MISMATCH = 73
_RC_MISSING = 3

_MB = 1024 * 1024


# --------------------------------------------------------------------------- errors / reports
class StagingError(Exception):
    """A staging operation failed; the message says where and what to do."""


class StagingInputError(StagingError, ValueError):
    """Bad input (version, type, kind, path); nothing was run on the site."""


class UnsafePathError(StagingError, ValueError):
    """A path leaves remote_root (``..``, or a symlink on the site pointing outside)."""


class RemoteDiskFullError(StagingError):
    """The site's filesystem is full or the quota is exceeded; nothing was half-written."""


class LocalDiskFullError(StagingError):
    """This machine's filesystem is full; nothing was half-written."""


@dataclasses.dataclass
class PushReport:
    remote_dir: str
    files_sent: int = 0
    bytes_sent: int = 0  # payload bytes (file contents) sent
    stream_bytes: int = 0  # bytes of the tar stream on stdin (payload + headers)
    files_unchanged: int = 0
    files_deleted: int = 0
    commands: int = 0  # remote commands used
    sent: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)  # local symlinked dirs, sockets, ...

    def summary(self) -> str:
        s = (f"{self.remote_dir}: {self.files_sent} file(s) sent ({_human(self.bytes_sent)}), "
             f"{self.files_unchanged} unchanged")
        if self.files_deleted:
            s += f", {self.files_deleted} deleted"
        if self.skipped:
            s += f", {len(self.skipped)} skipped (symlinked dirs / special files)"
        return s + f"; {self.commands} remote command(s)"


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


# --------------------------------------------------------------------------- path safety (local side)
def check_remote_root(remote_root: str) -> str:
    if not isinstance(remote_root, str) or not remote_root.startswith("/"):
        raise StagingInputError(f"remote_root={remote_root!r} must be an absolute path on the site")
    if any(c in remote_root for c in "\n\r\x00\\"):
        raise StagingInputError(f"remote_root={remote_root!r} must not contain newlines, NUL or backslashes")
    if ".." in remote_root.split("/"):
        raise UnsafePathError(f"remote_root={remote_root!r} contains '..': give the real directory")
    return posixpath.normpath(remote_root)


def check_remote_path(path: str, remote_root: str) -> str:
    """``path`` must be absolute, normalised and inside ``remote_root``. Checked before any command runs."""
    root = check_remote_root(remote_root)
    if not isinstance(path, str) or not path.startswith("/"):
        raise StagingInputError(f"remote path {path!r} must be absolute (inside remote_root {root})")
    if any(c in path for c in "\n\r\x00\\"):
        raise StagingInputError(f"remote path {path!r} must not contain newlines, NUL or backslashes")
    if ".." in path.split("/"):
        raise UnsafePathError(f"remote path {path!r} contains '..': refused (it could leave remote_root {root})")
    norm = posixpath.normpath(path)
    if norm != path.rstrip("/") and norm != path:
        raise StagingInputError(f"remote path {path!r} is not normalised: use {norm!r}")
    if norm != root and not norm.startswith(root.rstrip("/") + "/"):
        raise UnsafePathError(f"remote path {path!r} is outside remote_root {root}: refused")
    return norm


def _check_rel(rel: str, what: str) -> None:
    if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in rel.split("/")):
        raise UnsafePathError(f"{what} {rel!r}: not a plain relative path")
    if any(c in rel for c in "\n\r\x00\\"):
        raise StagingInputError(
            f"{what} {rel!r}: file names with newlines or backslashes cannot be staged; rename the file"
        )


def glob_to_ere(pattern: str) -> str:
    """``hist/**`` -> ``^hist/.*$``; ``*`` and ``?`` never cross ``/``. Valid as POSIX ERE and Python re."""
    if not _PATTERN_RE.match(pattern) or pattern.startswith("/") or ".." in pattern.split("/"):
        raise StagingInputError(
            f"pattern {pattern!r}: use a relative glob of letters, digits, '._-/' and '*', '?' (e.g. 'hist/**')"
        )
    out, i = ["^"], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        out.append({"*": "[^/]*", "?": "[^/]", ".": "[.]"}.get(c, c))
        i += 1
    out.append("$")
    return "".join(out)


# --------------------------------------------------------------------------- local manifest (+ hash cache)
def default_cache_file() -> Path:
    base = os.environ.get("BATCHSITE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "batchsite"
    )
    return Path(base) / "staging-hashes.json"


class HashCache:
    """sha256 by (absolute path, size, mtime_ns) in a small JSON file, so big unchanged files are hashed once."""

    def __init__(self, path: Path | None):
        self.path = path
        self.entries: dict[str, list] = {}
        self.dirty = False
        if path is not None:
            try:
                data = json.loads(path.read_text())
                if data.get("version") == 1:
                    self.entries = data.get("entries", {})
            except (OSError, ValueError, AttributeError):
                self.entries = {}

    def sha256(self, p: Path, st: os.stat_result) -> str:
        key = str(p)
        hit = self.entries.get(key)
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            return hit[2]
        digest = _sha256_file(p)
        self.remember(p, st, digest)
        return digest

    def remember(self, p: Path, st: os.stat_result, digest: str) -> None:
        # a file modified within the mtime granularity right after hashing would look unchanged: don't cache it
        if time.time_ns() - st.st_mtime_ns < 2_000_000_000:
            self.entries.pop(str(p), None)
            return
        self.entries[str(p)] = [st.st_size, st.st_mtime_ns, digest]
        self.dirty = True

    def save(self) -> None:
        if self.path is None or not self.dirty:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".staging-hashes.", dir=self.path.parent)
            with os.fdopen(fd, "w") as f:
                json.dump({"version": 1, "entries": self.entries}, f)
            os.replace(tmp, self.path)
            self.dirty = False
        except OSError:
            pass  # the cache is an optimisation only


def _sha256_file(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(_MB), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclasses.dataclass
class LocalEntry:
    path: Path
    size: int
    sha256: str


def local_manifest(
    local_dir: Path, cache: HashCache, *, regexes: Sequence[str] = (), skipped: list[str] | None = None,
    strict: bool = True,
) -> dict[str, LocalEntry]:
    """{relative posix path: entry} of regular files under local_dir (file symlinks followed, dir symlinks not).

    ``strict``: a name that cannot be staged (newline, backslash, not UTF-8) is an error; else it is skipped.
    """
    out: dict[str, LocalEntry] = {}
    compiled = [re.compile(r) for r in regexes]
    if not local_dir.is_dir():
        return out
    for dirpath, dirnames, filenames in os.walk(local_dir):
        here = Path(dirpath)
        keep = []
        for d in dirnames:
            if d in SKIP_DIRS or d.startswith(STAGE_PREFIX):
                continue
            if (here / d).is_symlink():
                if skipped is not None:
                    skipped.append((here / d).relative_to(local_dir).as_posix() + "/")
                continue
            keep.append(d)
        dirnames[:] = sorted(keep)
        for name in sorted(filenames):
            if name.endswith(SKIP_SUFFIXES) or name == ".git":
                continue
            p = here / name
            rel = p.relative_to(local_dir).as_posix()
            if compiled and not any(c.match(rel) for c in compiled):
                continue
            try:
                st = p.stat()
            except OSError:  # dangling symlink
                if skipped is not None:
                    skipped.append(rel)
                continue
            if not stat.S_ISREG(st.st_mode):
                if skipped is not None:
                    skipped.append(rel)
                continue
            try:
                _check_rel(rel, "local file")
                try:
                    rel.encode("utf-8")
                except UnicodeEncodeError:
                    raise StagingInputError(f"local file {p}: the name is not valid UTF-8; rename the file") from None
            except StagingError:
                if strict:
                    raise
                continue
            out[rel] = LocalEntry(p, st.st_size, cache.sha256(p, st))
    if not regexes:  # forget cached hashes of files that are gone
        prefix = str(local_dir) + os.sep
        seen = {str(e.path) for e in out.values()}
        for key in [k for k in cache.entries if k.startswith(prefix) and k not in seen]:
            del cache.entries[key]
            cache.dirty = True
    return out


# --------------------------------------------------------------------------- remote snippets
# Every snippet starts with this. realpath -m resolves symlinks of the parts that exist on the site.
_PRELUDE = r"""
set -u
trap '' HUP PIPE
command -v realpath >/dev/null 2>&1 || { cat >/dev/null; echo "batchsite: the site has no 'realpath' (GNU coreutils >= 8.15 needed for staging)" >&2; exit 78; }
canon() { realpath -m -- "$1"; }
inside() { case "$1" in "$2"|"${2%/}"/*) return 0;; esac; return 1; }
refuse() { cat >/dev/null; echo "batchsite: refused: $1 resolves to $2 on the site, outside remote_root $root ($root_r); a symlink on the site points outside remote_root" >&2; exit 77; }
fail_io() {
  cat >/dev/null
  case "$2" in
    *"No space left"*|*"uota"*|*ENOSPC*|*EDQUOT*) echo "@@ENOSPC $1" >&2 ;;
  esac
  printf 'batchsite: %s: %s\n' "$1" "$2" >&2
  exit 74
}
root_r=$(canon "$root") && [ -n "$root_r" ] || { cat >/dev/null; echo "batchsite: cannot resolve remote_root $root" >&2; exit 78; }
"""

_PRUNE = r"""\( -name .git -o -name __pycache__ -o -name '.batchsite-stage.*' \) -prune -o -type f ! -name '*.pyc'"""

_MANIFEST = r"""root=$1; dir=$2
""" + _PRELUDE + r"""
dir_r=$(canon "$dir"); inside "$dir_r" "$root_r" || refuse "$dir" "$dir_r"
[ -d "$dir_r" ] || { echo "@@NODIR"; exit 0; }
cd "$dir_r" || exit 71
echo "@@SIZES"
find . """ + _PRUNE + r""" -printf '%s %p\n'
echo "@@SUMS"
find . """ + _PRUNE + r""" -print0 | xargs -0 -r sha256sum --
echo "@@END"
"""

# stdin: a tar with ctl/list (files to install), ctl/sums (their sha256, sha256sum format),
# ctl/check (list + delete, for the symlink check), ctl/delete, and f/<file> payloads.
_PUSH = r"""root=$1; dir=$2; parent=$3
""" + _PRELUDE + r"""
dir_r=$(canon "$dir"); inside "$dir_r" "$root_r" || refuse "$dir" "$dir_r"
parent_r=$(canon "$parent"); inside "$parent_r" "$root_r" || refuse "$parent" "$parent_r"
e=$(mkdir -p -- "$dir_r" "$parent_r" 2>&1) || fail_io "$dir" "$e"
find "$parent_r" -maxdepth 1 -type d -name '.batchsite-stage.*' -mmin +720 -exec rm -rf {} + 2>/dev/null
tmp=$(mktemp -d "$parent_r/.batchsite-stage.XXXXXX" 2>&1) || fail_io "$dir" "$tmp"
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM
e=$(tar -xf - -C "$tmp" --no-same-owner 2>&1 >/dev/null) || fail_io "$dir" "$e"
cd "$tmp" || exit 71
if [ -s ctl/check ]; then
  n=$(wc -l < ctl/check | tr -d ' ')
  bad=$(cd "$dir_r" && xargs -d '\n' realpath -m -- < "$tmp/ctl/check" | R="${root_r%/}/" N="$n" awk '
    index($0, ENVIRON["R"]) != 1 { print; bad = 1; exit }
    END { if (!bad && NR != ENVIRON["N"] + 0) print "(realpath could not resolve every destination)" }')
  [ -z "$bad" ] || refuse "a destination under $dir" "$bad"
fi
got=
if [ -s ctl/list ]; then
  got=$(cd f && xargs -d '\n' sha256sum -- < ../ctl/list 2>&1) || fail_io "$dir" "$got"
  if [ "$got" != "$(cat ctl/sums)" ]; then
    echo "@@SUMS"; printf '%s\n' "$got"
    echo "batchsite: checksum mismatch after transfer into $dir; nothing was replaced" >&2
    exit 73
  fi
fi
last=
while IFS= read -r rel; do
  case $rel in */*) d=$dir_r/${rel%/*} ;; *) d=$dir_r ;; esac
  if [ "$d" != "$last" ]; then e=$(mkdir -p -- "$d" 2>&1) || fail_io "$d" "$e"; last=$d; fi
  mv -fT -- "f/$rel" "$dir_r/$rel" || fail_io "$dir_r/$rel" "mv failed (files listed before it are already in place)"
done < ctl/list
if [ -s ctl/delete ]; then (cd "$dir_r" && xargs -d '\n' rm -f -- < "$tmp/ctl/delete") || exit 72; fi
echo "@@SUMS"; [ -z "$got" ] || printf '%s\n' "$got"
echo "@@DONE"
"""

# stdin: the local manifest (sha256sum format). stdout: "@@M <n>\n", n bytes of manifest
# ("= sha rel" unchanged / "S sha rel" sent), then one tar of the "S" files (if any).
_PULL = r"""root=$1; dir=$2; shift 2
""" + _PRELUDE + r"""
dir_r=$(canon "$dir"); inside "$dir_r" "$root_r" || refuse "$dir" "$dir_r"
[ -d "$dir_r" ] || { cat >/dev/null; echo "@@NODIR $dir" >&2; exit 3; }
tmp=$(mktemp -d "${TMPDIR:-/tmp}/batchsite-pull.XXXXXX") || { cat >/dev/null; echo "batchsite: mktemp failed in ${TMPDIR:-/tmp}" >&2; exit 72; }
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM
cat > "$tmp/local" || exit 72
i=0; for p in "$@"; do i=$((i + 1)); export "BSP$i=$p"; done; export BSPN=$i
cd "$dir_r" || exit 71
find . """ + _PRUNE + r""" -print | awk '
  BEGIN { n = ENVIRON["BSPN"] + 0 }
  { f = $0; sub(/^\.\//, "", f); ok = (n == 0)
    for (i = 1; i <= n && !ok; i++) if (f ~ ENVIRON["BSP" i]) ok = 1
    if (ok) print }' > "$tmp/selected" || exit 72
xargs -d '\n' -r sha256sum -- < "$tmp/selected" > "$tmp/remote" 2>/dev/null
M="$tmp/manifest" W="$tmp/want" awk '
  BEGIN { m = ENVIRON["M"]; w = ENVIRON["W"] }
  FILENAME == ARGV[1] { loc[substr($0, 67)] = substr($0, 1, 64); next }
  /^\\/ { next }
  { h = substr($0, 1, 64); f = substr($0, 67); sub(/^\.\//, "", f)
    if ((f in loc) && loc[f] == h) { print "= " h " " f > m }
    else { print "S " h " " f > m; print "./" f > w } }
' "$tmp/local" "$tmp/remote" || exit 72
touch "$tmp/manifest"
printf '\n@@BATCHSITE-PULL %s\n' "$(wc -c < "$tmp/manifest" | tr -d ' ')"
cat "$tmp/manifest"
if [ -s "$tmp/want" ]; then
  tar -cf - -C "$dir_r" -T "$tmp/want"
  rc=$?; [ $rc -le 1 ] || echo "batchsite: tar exited $rc (files vanished while pulling?)" >&2
fi
exit 0
"""

_PUT = r"""root=$1; path=$2; mode=$3
""" + _PRELUDE + r"""
p_r=$(canon "$path"); inside "$p_r" "$root_r" || refuse "$path" "$p_r"
[ "$p_r" != "$root_r" ] || { cat >/dev/null; echo "batchsite: $path is remote_root itself, not a file" >&2; exit 72; }
d=${p_r%/*}; [ -n "$d" ] || d=/
e=$(mkdir -p -- "$d" 2>&1) || fail_io "$d" "$e"
umask 077
t=$(mktemp "$d/.batchsite-put.XXXXXX" 2>&1) || fail_io "$path" "$t"
trap 'rm -f "$t"' EXIT
e=$(cat 2>&1 > "$t") || fail_io "$path" "$e"
chmod "$mode" "$t" || exit 72
e=$(mv -fT -- "$t" "$p_r" 2>&1) || fail_io "$path" "$e"
echo "@@DONE"
"""

_READ = r"""root=$1; path=$2
""" + _PRELUDE + r"""
p_r=$(canon "$path"); inside "$p_r" "$root_r" || refuse "$path" "$p_r"
[ -f "$p_r" ] || { echo "@@NOFILE $path" >&2; exit 3; }
printf '\n@@BATCHSITE-FILE\n'
cat -- "$p_r"
"""


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


def remote_manifest(transport: Transport, remote_dir: str, *, remote_root: str) -> dict[str, tuple[int, str]] | None:
    """{rel: (size, sha256)} of the files under remote_dir, or None if it does not exist. One command."""
    root = check_remote_root(remote_root)
    rdir = check_remote_path(remote_dir, root)
    r = transport.sh(_MANIFEST, root, rdir, timeout=1800)
    _raise_for(r, "listing the site", rdir)
    return _parse_manifest(r.out, rdir)


def _rindex(lines: list[str], marker: str, before: int | None = None) -> int:
    end = len(lines) if before is None else before
    for i in range(end - 1, -1, -1):
        if lines[i] == marker:
            return i
    raise ValueError(marker)


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
) -> PushReport:
    """Make remote_dir hold the files of local_dir; send only what differs (by sha256).

    ``delete=True`` also removes remote files that are not in local_dir (never ``__pycache__``,
    ``*.pyc`` or ``.git``). ``cache_file``: True = the default hash cache, a path, or None/False = none.
    """
    root = check_remote_root(remote_root)
    rdir = check_remote_path(remote_dir, root)
    local = Path(local_dir).resolve()
    if not local.is_dir():
        raise StagingInputError(f"local directory {local_dir} does not exist (or is not a directory)")
    parent = posixpath.dirname(rdir) if rdir != root else rdir
    report = PushReport(remote_dir=rdir)
    cache = HashCache(_cache_path(cache_file))
    start = transport.counters.commands_run
    try:
        mine = local_manifest(local, cache, skipped=report.skipped)
    finally:
        cache.save()

    r = transport.sh(_MANIFEST, root, rdir, timeout=timeout)
    _raise_for(r, f"listing {rdir} on the site", rdir)
    theirs = _parse_manifest(r.out, rdir) or {}

    changed = [rel for rel in sorted(mine) if theirs.get(rel, (None, None))[1] != mine[rel].sha256]
    to_delete = sorted(set(theirs) - set(mine)) if delete else []
    report.files_unchanged = len(mine) - len(changed)
    if not changed and not to_delete:
        report.commands = transport.counters.commands_run - start
        return report

    payload, sums = _push_payload(mine, changed, to_delete)
    report.stream_bytes = len(payload)
    r = transport.sh(_PUSH, root, rdir, parent, stdin=payload, timeout=timeout)
    report.commands = transport.counters.commands_run - start
    _raise_for(r, f"pushing {local_dir} to {rdir}", rdir)
    lines = r.out.splitlines()
    try:
        i_done = _rindex(lines, "@@DONE")
        i_sums = _rindex(lines, "@@SUMS", i_done)
    except ValueError:
        raise StagingError(f"unexpected reply while pushing to {rdir}: {r.out[-300:]!r} {r.err[-300:]!r}") from None
    got = _parse_sums(lines[i_sums + 1:i_done])
    if got != sums:
        bad = sorted(k for k in set(got) | set(sums) if got.get(k) != sums.get(k))
        raise StagingError(f"checksums on the site differ from what was sent to {rdir}: {bad[:10]}")
    report.files_sent = len(changed)
    report.bytes_sent = sum(mine[rel].size for rel in changed)
    report.sent = changed
    report.files_deleted = len(to_delete)
    return report


def _push_payload(mine: dict[str, LocalEntry], changed: list[str], to_delete: list[str]) -> tuple[bytes, dict[str, str]]:
    """ONE tar: control lists + the changed files (hashed again as read, so the sums match what is sent)."""
    buf = io.BytesIO()
    sums: dict[str, str] = {}
    now = int(time.time())
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in changed:
            e = mine[rel]
            try:
                data = e.path.read_bytes()
                st = e.path.stat()
            except OSError as exc:
                raise StagingError(f"local file {e.path} vanished or became unreadable while pushing: {exc}") from exc
            sums[rel] = hashlib.sha256(data).hexdigest()
            e.size = len(data)
            info = tarfile.TarInfo("f/" + rel)
            info.size = len(data)
            info.mode = stat.S_IMODE(st.st_mode) & 0o777 | 0o600
            info.mtime = int(st.st_mtime)
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
        for rel in to_delete:
            _check_rel(rel, "remote file")
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


def _cache_path(cache_file) -> Path | None:
    if cache_file is True:
        return default_cache_file()
    if not cache_file:
        return None
    return Path(cache_file)


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
    regexes = [glob_to_ere(p) for p in (patterns or [])]
    local = Path(local_dir).absolute()
    report = PullReport(remote_dir=rdir, local_dir=str(local))
    cache = HashCache(_cache_path(cache_file))
    start = transport.counters.commands_run
    try:
        mine = local_manifest(local, cache, regexes=regexes, strict=False)
        stdin = "".join(f"{e.sha256}  {rel}\n" for rel, e in mine.items()).encode()

        r = transport.sh(_PULL, root, rdir, *regexes, stdin=stdin, timeout=timeout)
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
                _check_rel(rel, f"file from the site under {rdir}")
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
                    _check_rel(name, "tar member")
                    dest = tmpdir / name
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    h = hashlib.sha256()
                    src = tar.extractfile(m)
                    with open(dest, "wb") as f:
                        for chunk in iter(lambda: src.read(_MB), b""):
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
    p = check_remote_path(path, root)
    if not isinstance(mode, int) or not 0 <= mode <= 0o7777:
        raise StagingInputError(f"mode={mode!r} must be an int like 0o644 or 0o600")
    data = text.encode() if isinstance(text, str) else bytes(text)
    r = transport.sh(_PUT, root, p, f"{mode:o}", stdin=data, timeout=300)
    _raise_for(r, f"writing {p}", p)
    if "@@DONE" not in r.out.splitlines():
        raise StagingError(f"unexpected reply while writing {p}: {r.out[-300:]!r}")


def read_text(transport: Transport, path: str, *, remote_root: str) -> str:
    root = check_remote_root(remote_root)
    p = check_remote_path(path, root)
    r = transport.sh(_READ, root, p, timeout=300)
    if r.returncode == _RC_MISSING and "@@NOFILE" in r.err:
        raise FileNotFoundError(f"{p} does not exist on the site")
    _raise_for(r, f"reading {p}", p)
    i = r.out.find(_FILE_MARK)
    if i < 0:
        raise StagingError(f"unexpected reply while reading {p}: {r.out[:300]!r}")
    return r.out[i + len(_FILE_MARK):]


# --------------------------------------------------------------------------- seed-compatible layer
def check_version(version: str) -> str:
    if not isinstance(version, str) or not VERSION_RE.fullmatch(version):
        shown = repr(version) if len(repr(version)) <= 80 else f"{repr(version)[:80]}..."
        raise StagingInputError(
            f"version={shown}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit "
            f"(e.g. --version v1.2); no '/' and no '..'"
        )
    return version


def check_run_type(run_type: str) -> str:
    if run_type not in RUN_TYPES:
        raise StagingInputError(f"type={run_type!r}: use FP or EXP (e.g. --type FP)")
    return run_type


def check_kind(kind: str) -> str:
    if kind not in PULL_KINDS:
        raise StagingInputError(f"pull={kind!r}: use one of hist, outputs, logs (e.g. --pull hist)")
    return kind


def pull_plan(kind: str, version: str, run_type: str) -> tuple[tuple[str, ...], list[str] | None]:
    """(remote sub path under remote_root, patterns). The local side mirrors the sub path."""
    check_kind(kind)
    check_version(version)
    check_run_type(run_type)
    if kind == "logs":
        return ("job_logs", version, run_type), None
    if kind == "outputs":
        return ("job_outputs", version, run_type), None
    patterns = ["hist/**"] + (["shift*/hist/**"] if run_type == "EXP" else [])
    return ("job_outputs", version, run_type), patterns


def payload_dir(name: str) -> Path:
    """A payload shipped in ``include/`` (``batchsite.include.<name>``), e.g. ``rg_reference``."""
    import batchsite.include as inc

    d = Path(inc.__file__).parent / name
    if not d.is_dir():
        raise StagingInputError(f"no payload {name!r} in {d.parent}")
    return d


class Staging:
    """The group's ``file_management.py`` on a batchsite ``Site``.

    code -> ``<remote_root>/code/source``; scripts/configs -> ``<remote_root>/scripts``;
    pull hist/outputs -> ``job_outputs/{version}/{type}``, logs -> ``job_logs/{version}/{type}``,
    mirrored under ``local_root``.
    """

    def __init__(self, site, *, cache_file: str | os.PathLike | None | bool = True):
        self.site = site
        self.cache_file = cache_file

    @property
    def remote_root(self) -> str:
        return self.site.remote_root

    def push_tree_to(self, local_dir: str | os.PathLike, remote_rel: str, *, delete: bool = False) -> PushReport:
        """Push a local tree to ``<remote_root>/<remote_rel>`` (only changed files)."""
        return push_tree(self.site.transport, local_dir, self.site.path(*remote_rel.split("/")),
                         remote_root=self.remote_root, delete=delete, cache_file=self.cache_file)

    def push_code(self, local_code_dir: str | os.PathLike, *, delete: bool = False) -> PushReport:
        return self.push_tree_to(local_code_dir, "code/source", delete=delete)

    def push_scripts(self, local_dir: str | os.PathLike, *, delete: bool = False) -> PushReport:
        return self.push_tree_to(local_dir, "scripts", delete=delete)

    def pull(self, kind: str, version: str, run_type: str, local_root: str | os.PathLike) -> PullReport:
        sub, patterns = pull_plan(kind, version, run_type)
        remote_dir = self.site.path(*sub)
        local_dir = Path(local_root).joinpath(*sub)
        return pull_tree(self.site.transport, remote_dir, local_dir, remote_root=self.remote_root,
                         patterns=patterns, cache_file=self.cache_file)


# --------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m batchsite.staging",
        description="Stage code/scripts to a batch site and pull outputs back (file_management.py compatible).",
    )
    p.add_argument("--action", required=True, choices=["push", "pull"])
    p.add_argument("--pull", dest="kind", choices=list(PULL_KINDS), help="what to pull (with --action pull)")
    p.add_argument("--version", help="run version, e.g. v1 (with --action pull)")
    p.add_argument("--type", dest="run_type", choices=list(RUN_TYPES), help="run type (with --action pull)")
    p.add_argument("--code", help="local code dir -> <remote_root>/code/source")
    p.add_argument("--scripts", action="append", default=[],
                   help="local scripts/configs dir -> <remote_root>/scripts (may be repeated)")
    p.add_argument("--dest", default=".", help="local root for pulled files (default: current dir)")
    p.add_argument("--delete", action="store_true", help="push: also remove remote files missing locally")
    p.add_argument("--conn", default=os.environ.get("BATCHSITE_CONN") or "local",
                   help="site connection id (default: $BATCHSITE_CONN or 'local')")
    p.add_argument("--sys", default="linux", help="accepted for compatibility with file_management.py; ignored")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.action == "push":
            if not args.code and not args.scripts:
                parser.error("--action push needs --code DIR and/or --scripts DIR")
            for d in [args.code, *args.scripts]:
                if d and not Path(d).is_dir():
                    parser.error(f"{d!r} is not a local directory")
        else:
            missing = [f for f, v in (("--pull", args.kind), ("--version", args.version), ("--type", args.run_type))
                       if not v]
            if missing:
                parser.error(f"--action pull needs {', '.join(missing)} (e.g. --pull hist --version v1 --type FP)")
            check_version(args.version)
    except StagingInputError as e:
        parser.error(str(e))

    from batchsite.hooks.site import site_from_conn_id  # lazily: the core module does not import Airflow

    try:
        site = site_from_conn_id(args.conn)
    except Exception as e:  # SiteConfigError and friends: a usage problem
        print(f"batchsite.staging: site {args.conn!r}: {e}", file=sys.stderr)
        return 2
    staging = Staging(site)
    try:
        if args.action == "push":
            if args.code:
                print("push code:", staging.push_code(args.code).summary())
            for d in args.scripts:
                print("push scripts:", staging.push_scripts(d).summary())
        else:
            rep = staging.pull(args.kind, args.version, args.run_type, args.dest)
            print(f"pull {args.kind}:", rep.summary())
    except StagingInputError as e:
        print(f"batchsite.staging: {e}", file=sys.stderr)
        return 2
    except (StagingError, FileNotFoundError) as e:
        print(f"batchsite.staging: {e}", file=sys.stderr)
        return 1
    finally:
        site.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
