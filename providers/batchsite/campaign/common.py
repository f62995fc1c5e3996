"""Campaign helpers shared by every campaign: command templates and validation errors.

Plain Python (no Airflow). Job commands are campaign config: argv templates whose items are
``str.format``-ed with known values. An item whose placeholder value is ``None`` is dropped,
so optional flags (``--input-hist={input_hist}``) and optional positionals
(``{existing_t}``) need no special syntax. The argv is quoted when rendered into job
scripts; values never pass through a shell unquoted.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

_FMT = string.Formatter()


class CampaignConfigError(ValueError):
    """Bad campaign input; the message names the field and the fix."""


def explain_validation(prefix: str, e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            parts.append(f"{loc}: unknown key (check the spelling; see the README for the accepted keys)")
        elif not loc:  # a rule across fields: the message names them; the input is everything
            parts.append(msg)
        else:
            parts.append(f"{loc}: {msg} (got {err.get('input')!r})")
    return f"{prefix}: " + "; ".join(parts)


def render_argv(template: Sequence[str], values: Mapping[str, Any]) -> list[str]:
    out = []
    for item in template:
        names = [f for _, f, _, _ in _FMT.parse(item) if f]
        unknown = [n for n in names if n not in values]
        if unknown:
            raise CampaignConfigError(
                f"command template item {item!r} uses {unknown}; known placeholders: {sorted(values)}"
            )
        if any(values[n] is None for n in names):
            continue
        out.append(item.format(**values))
    if not out:
        raise CampaignConfigError("command template rendered to an empty command")
    return out


SAFE_TOKEN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_token(field: str, value: str) -> str:
    if not isinstance(value, str) or not SAFE_TOKEN.match(value):
        raise ValueError(
            f"{field}={value!r}: use 1-64 letters, digits, '.', '_' or '-' (it becomes a directory name)"
        )
    return value
