"""Path guards of staging, checked on this side before any command runs.

Remote paths must be absolute, normalised and inside ``remote_root``; relative names
(files of a tree) must be plain; globs become anchored EREs. The site checks again after
resolving symlinks (``transfer.sh``).
"""

from __future__ import annotations

import posixpath
import re

_PATTERN_RE = re.compile(r"^[A-Za-z0-9._*?/-]+$")


class StagingError(Exception):
    """A staging operation failed; the message says where and what to do."""


class StagingInputError(StagingError, ValueError):
    """Bad input (version, type, kind, path); nothing was run on the site."""


class UnsafePathError(StagingError, ValueError):
    """A path leaves remote_root (``..``, or a symlink on the site pointing outside)."""


def _check_plain_absolute(path: str, label: str, absolute: str, dotdot: str) -> None:
    """Absolute, no newline, NUL or backslash (the site's shell and tar see it), no '..'."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise StagingInputError(f"{label} must be {absolute}")
    if any(c in path for c in "\n\r\x00\\"):
        raise StagingInputError(f"{label} must not contain newlines, NUL or backslashes")
    if ".." in path.split("/"):
        raise UnsafePathError(f"{label} contains '..': {dotdot}")


def check_remote_root(remote_root: str) -> str:
    _check_plain_absolute(remote_root, f"remote_root={remote_root!r}", "an absolute path on the site",
                          "give the real directory")
    return posixpath.normpath(remote_root)


def check_remote_path(path: str, remote_root: str) -> str:
    """``path`` must be absolute, normalised and inside ``remote_root``. Checked before any command runs."""
    root = check_remote_root(remote_root)
    _check_plain_absolute(path, f"remote path {path!r}", f"absolute (inside remote_root {root})",
                          f"refused (it could leave remote_root {root})")
    norm = posixpath.normpath(path)
    if norm != path.rstrip("/") and norm != path:
        raise StagingInputError(f"remote path {path!r} is not normalised: use {norm!r}")
    if norm != root and not norm.startswith(root.rstrip("/") + "/"):
        raise UnsafePathError(f"remote path {path!r} is outside remote_root {root}: refused")
    return norm


def check_rel(rel: str, what: str) -> None:
    if not rel or rel.startswith("/") or any(part in ("", ".", "..") for part in rel.split("/")):
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

