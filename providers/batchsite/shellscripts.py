"""Shell scripts kept as ``.sh`` files beside the module that runs them (package data).

* ``load(package, name)``: the text of ``<package>/<name>``, read once through
  ``importlib.resources`` (works from a wheel or an editable install);
* ``with_values(text, **values)``: the one substitution a script gets. The script reads
  its inputs as plain shell variables named in its header (``: "${wd:?}"``); rendering
  inserts ``name='value'`` lines, every value ``shlex.quote``-d, right after the header
  comment. Run on its own, the same variables come from the environment
  (``wd=/tmp/r py=python3 sh local_submit.sh``). No text of the body is ever rewritten.

Scripts that run as a remote command take their values as positional arguments instead
(``Transport.sh(load(...), "mode", arg, ...)``).
"""

from __future__ import annotations

import functools
import re
import shlex
from importlib import resources

_NAME = re.compile(r"[a-z][a-z0-9_]*")


@functools.cache
def load(package: str, name: str) -> str:
    """The text of the script ``name`` shipped in ``package`` (e.g. ``"batchsite.backends"``)."""
    return resources.files(package).joinpath(name).read_text(encoding="utf-8")


def with_values(text: str, **values: str | int) -> str:
    """``text`` with a quoted ``name=value`` line per value, after the leading comment block."""
    lines = text.splitlines(keepends=True)
    at = 0
    while at < len(lines) and lines[at].startswith("#"):
        at += 1
    assigns = []
    for name, value in values.items():
        if not _NAME.fullmatch(name):
            raise ValueError(f"shell value name {name!r}: use lower-case letters, digits and '_'")
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise TypeError(f"shell value {name}={value!r}: give a str or an int")
        text_value = str(value)
        if "\x00" in text_value:
            raise ValueError(f"shell value {name}: contains NUL")
        assigns.append(f"{name}={shlex.quote(text_value)}\n")
    return "".join(lines[:at] + assigns + lines[at:])
