"""The local side of a tree: which files, their size and sha256 (with a hash cache)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import stat
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from batchsite.staging.paths import StagingError, StagingInputError, check_rel

#: directories and files never staged (and never listed on the site)
SKIP_DIRS = frozenset({"__pycache__", ".git"})
SKIP_SUFFIXES = (".pyc",)
#: temp dirs of an unfinished push; never part of a manifest, removed after 12 h
STAGE_PREFIX = ".batchsite-stage."
#: the site's manifest cache of a tree, beside it (``transfer.sh``); never staged
MANIFEST_PREFIX = ".batchsite-manifest."

MB = 1024 * 1024


def default_cache_file() -> Path:
    base = os.environ.get("BATCHSITE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "batchsite"
    )
    return Path(base) / "staging-hashes.json"


class HashCache:
    """sha256 by (absolute path, size, mtime_ns, ctime_ns) in a small JSON file, so unchanged files are hashed once.

    ctime is in the key because a file rewritten with the same size and mtime (``touch -r``, a tool
    restoring timestamps) still gets a new ctime; rsync's quick check (size + mtime) would skip it.
    """

    VERSION = 2

    def __init__(self, path: Path | None):
        self.path = path
        self.entries: dict[str, list] = {}
        #: "<local dir>\0<site>:<remote dir>" -> when (ns, this machine's clock) the last rsync push
        #: of that pair started: a file whose ctime is later but whose mtime is not was changed with
        #: its timestamp put back since then, which rsync's quick check would miss
        self.pushes: dict[str, int] = {}
        self.dirty = False
        if path is not None:
            try:
                data = json.loads(path.read_text())
                if data.get("version") == self.VERSION:
                    self.entries = data.get("entries", {})
                    self.pushes = data.get("pushes", {})
            except (OSError, ValueError, AttributeError):
                self.entries, self.pushes = {}, {}

    def cached(self, path: Path, st: os.stat_result) -> str | None:
        hit = self.entries.get(str(path))
        return hit[3] if hit and hit[:3] == [st.st_size, st.st_mtime_ns, st.st_ctime_ns] else None

    def sha256(self, path: Path, st: os.stat_result) -> str:
        hit = self.cached(path, st)
        if hit is not None:
            return hit
        digest = sha256_file(path)
        self.remember(path, st, digest)
        return digest

    def remember(self, path: Path, st: os.stat_result, digest: str) -> None:
        # a file modified within the mtime granularity right after hashing would look unchanged: don't cache it
        if time.time_ns() - st.st_mtime_ns < 2_000_000_000:
            self.entries.pop(str(path), None)
            return
        self.entries[str(path)] = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, digest]
        self.dirty = True

    def pushed(self, key: str, started_ns: int) -> None:
        self.pushes[key] = started_ns
        self.dirty = True

    def save(self) -> None:
        if self.path is None or not self.dirty:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".staging-hashes.", dir=self.path.parent)
            with os.fdopen(fd, "w") as f:
                json.dump({"version": self.VERSION, "entries": self.entries, "pushes": self.pushes}, f)
            os.replace(tmp, self.path)
            self.dirty = False
        except OSError:
            pass  # the cache is an optimisation only


def stamp(st: os.stat_result) -> tuple[int, int, int]:
    """(size, mtime_ns, ctime_ns): what says a file is unchanged without reading it."""
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(MB), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclasses.dataclass
class LocalEntry:
    path: Path
    size: int
    sha256: str  # "" when not needed yet (see local_manifest's need_sha): hashed as it is sent
    #: the stat the sha256 belongs to: a file read later with the same one needs no second hash
    stamp: tuple[int, int, int] = (0, 0, 0)


def local_manifest(
    local_dir: Path, cache: HashCache, *, regexes: Sequence[str] = (), skipped: list[str] | None = None,
    strict: bool = True, need_sha: Callable[[str, int], bool] | None = None,
) -> dict[str, LocalEntry]:
    """{relative posix path: entry} of regular files under local_dir (file symlinks followed, dir symlinks not).

    ``strict``: a name that cannot be staged (newline, backslash, not UTF-8) is an error; else it is skipped.
    ``need_sha(rel, size)``: False for a file that differs anyway (absent on the site, another size):
    its sha256 is left "" unless cached, so it is read once, when it is sent.
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
            if name.endswith(SKIP_SUFFIXES) or name == ".git" or name.startswith(MANIFEST_PREFIX):
                continue
            path = here / name
            rel = path.relative_to(local_dir).as_posix()
            if compiled and not any(c.match(rel) for c in compiled):
                continue
            try:
                st = path.stat()
            except OSError:  # dangling symlink
                if skipped is not None:
                    skipped.append(rel)
                continue
            if not stat.S_ISREG(st.st_mode):
                if skipped is not None:
                    skipped.append(rel)
                continue
            try:
                check_rel(rel, "local file")
                try:
                    rel.encode("utf-8")
                except UnicodeEncodeError:
                    raise StagingInputError(f"local file {path}: the name is not valid UTF-8; rename the file") from None
            except StagingError:
                if strict:
                    raise
                continue
            if need_sha is None or need_sha(rel, st.st_size):
                digest = cache.sha256(path, st)
            else:
                digest = cache.cached(path, st) or ""
            out[rel] = LocalEntry(path, st.st_size, digest, stamp(st))
    if not regexes:  # forget cached hashes of files that are gone
        prefix = str(local_dir) + os.sep
        seen = {str(e.path) for e in out.values()}
        for key in [k for k in cache.entries if k.startswith(prefix) and k not in seen]:
            del cache.entries[key]
            cache.dirty = True
    return out


def fill_sha(entries: dict[str, LocalEntry], cache: HashCache, need_sha: Callable[[str, int], bool]) -> None:
    """Hash (or take from the cache) the entries left without a sha256 for which ``need_sha(rel, size)``."""
    for rel, e in entries.items():
        if not e.sha256 and need_sha(rel, e.size):
            try:
                st = e.path.stat()
            except OSError as exc:
                raise StagingError(f"local file {e.path} vanished while listing the tree: {exc}") from exc
            e.sha256, e.size, e.stamp = cache.sha256(e.path, st), st.st_size, stamp(st)


def cache_path(cache_file: str | os.PathLike | None | bool) -> Path | None:
    """True: the default hash cache; a path; None/False: no cache."""
    if cache_file is True:
        return default_cache_file()
    if not cache_file:
        return None
    return Path(cache_file)
