"""Campaign helpers shared by every campaign: command templates and validation errors.

Plain Python (no Airflow). Job commands are campaign config: argv templates whose items are
``str.format``-ed with known values. An item whose placeholder value is ``None`` is dropped,
so optional flags (``--input-hist={input_hist}``) and optional positionals
(``{existing_t}``) need no special syntax. The argv is quoted when rendered into job
scripts; values never pass through a shell unquoted.
"""

from __future__ import annotations

import posixpath
import re
import string
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

_FMT = string.Formatter()


class CampaignSetup(BaseModel):
    """What a campaign DAG's first task hands every later task (XCom): the params, validated
    once there (typed by each campaign's subclass), and the site facts the rounds need."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    remote_root: str
    python: str


class CampaignConfigError(ValueError):
    """Bad campaign input; the message names the field and the fix."""


#: errors listed per message; a hostile input with 10,000 bad keys gets a readable message
MAX_ERRORS = 10


def short(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to about ``limit`` characters (a 100 kB value is not echoed back)."""
    r = repr(value)
    return r if len(r) <= limit else f"{r[:limit]}... ({len(r)} characters)"


def explain_validation(prefix: str, e: ValidationError) -> str:
    parts = []
    errors = e.errors()
    for err in errors[:MAX_ERRORS]:
        loc = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            parts.append(f"{loc}: unknown key (check the spelling; see the README for the accepted keys)")
        elif not loc:  # a rule across fields: the message names them; the input is everything
            parts.append(msg)
        elif isinstance(err.get("input"), dict):  # a section: its own message names the keys inside
            parts.append(f"{loc}: {msg}")
        else:
            parts.append(f"{loc}: {msg} (got {short(err.get('input'))})")
    if len(errors) > MAX_ERRORS:
        parts.append(f"... and {len(errors) - MAX_ERRORS} more error(s)")
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
    if not isinstance(value, str) or not SAFE_TOKEN.fullmatch(value):
        raise ValueError(
            f"{field}={short(value)}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or "
            "digit (it becomes a directory name)"
        )
    return value


# ---------------------------------------------------------------------------- Params

def param_schema(model: type[BaseModel], name: str) -> dict[str, Any]:
    """One field of a params model as the JSON schema keywords of an Airflow ``Param``, so the
    UI form and the server-side check (the model, in the campaign's first task) share their
    bounds: ``int | None`` with ``ge``/``le`` becomes ``type: ["null", "integer"]`` with
    ``minimum``/``maximum``; a nested model is an ``object`` (the model checks its fields).
    Cross-field rules (start_step <= the last step) stay the model's."""
    schema = model.model_json_schema()["properties"][name]
    out = {k: v for k, v in schema.items() if k not in ("anyOf", "default", "title", "$ref")}
    if "$ref" in schema:
        out["type"] = "object"
    variants = schema.get("anyOf")
    if variants:
        types = []
        for v in variants:
            types.append("object" if "$ref" in v else v["type"])
            out.update({k: val for k, val in v.items() if k not in ("type", "$ref", "title")})
        out["type"] = sorted(types, key=lambda t: t != "null")
    return out


def param_kwargs(model: type[BaseModel], name: str) -> dict[str, Any]:
    """``Param(**param_kwargs(Model, name), title=...)``: the field's default and JSON schema."""
    default = model.model_fields[name].get_default(call_default_factory=True)
    return {"default": default, **param_schema(model, name)}


def schema_pattern(regex: re.Pattern[str]) -> dict[str, dict[str, str]]:
    """``Field(**schema_pattern(RE))``: the JSON-schema form of a rule the field checks with a
    validator of its own (whose message says how to fix the value), so the form refuses the
    same values and the model keeps its message."""
    return {"json_schema_extra": {"pattern": regex.pattern}}


# ---------------------------------------------------------------------------- paths

#: what a path given in campaign config may contain: it ends up in job scripts, submit files
#: and DAGMan files, so no blanks, quotes, ``$`` (HTCondor macros), globs or shell characters
SAFE_PATH = re.compile(r"/[A-Za-z0-9._+@=,/-]*")
MAX_PATH_LEN = 1024
_PATH_CHARS = "letters, digits and '/._+@=,-' (no blanks, quotes, '~', '$', '`', ';', '|', '&', '<', '>', '*')"


def check_site_path(field: str, value: str) -> str:
    """An absolute, normalised path on the site made of safe characters; ``..`` is refused."""
    if not isinstance(value, str):
        raise ValueError(f"{field} must be a string (got {short(value)})")
    if len(value) > MAX_PATH_LEN:
        raise ValueError(f"{field} is {len(value)} characters long; a path has at most {MAX_PATH_LEN}")
    if not value.startswith("/"):
        raise ValueError(f"{field}={short(value)} must be an absolute path on the site (starting with '/'); "
                         "'~' and relative paths are not expanded")
    if not SAFE_PATH.fullmatch(value):
        raise ValueError(f"{field}={short(value)}: a path may only contain {_PATH_CHARS}")
    comps = value.rstrip("/").split("/")[1:]
    if ".." in comps or "." in comps:
        raise ValueError(f"{field}={short(value)} must not contain '.' or '..' components: give the real directory")
    if value != "/" and posixpath.normpath(value) != value.rstrip("/"):
        raise ValueError(f"{field}={short(value)} is not normalised: use {posixpath.normpath(value)!r}")
    return value


# ---------------------------------------------------------------------------- command templates

#: one argv item of a user command template: placeholders, flags, module names, relative paths
SAFE_ARG = re.compile(r"[A-Za-z0-9_./=:,+@%{}-]+")
MAX_ARGS = 64
MAX_ARG_LEN = 512
_DOTDOT = re.compile(r"(^|[/=:,])\.\.(/|$)")


def check_argv_template(field: str, argv: Any, placeholders: frozenset[str] | set[str]) -> list[str]:
    """A job command template (argv list) from campaign config, checked before anything runs.

    Items are plain ``{name}`` placeholders and literal text of safe characters: the argv is
    quoted when rendered, but refusing shell characters, absolute literal paths (site paths
    come from placeholders such as ``{remote_root}``; programs from PATH set by the site's
    env_script) and ``..`` keeps every value a job sees under remote_root.
    """
    if not isinstance(argv, list) or not argv:
        raise ValueError(f"{field} must be a non-empty list of strings (an argv), e.g. [\"{{python}}\", \"-m\", "
                         f"\"source.generate\"] (got {short(argv)})")
    if len(argv) > MAX_ARGS:
        raise ValueError(f"{field} has {len(argv)} items; at most {MAX_ARGS}")
    for i, item in enumerate(argv):
        where = f"{field}[{i}]"
        if not isinstance(item, str):
            raise ValueError(f"{where} must be a string (got {short(item)})")
        if len(item) > MAX_ARG_LEN:
            raise ValueError(f"{where} is {len(item)} characters long; at most {MAX_ARG_LEN}")
        if not SAFE_ARG.fullmatch(item):
            raise ValueError(f"{where}={short(item)}: use letters, digits, '_./=:,+@%-' and {{placeholders}} only "
                             "(no blanks, quotes or shell characters: the command is not run by a shell)")
        try:
            fields = list(_FMT.parse(item))
        except ValueError as e:
            raise ValueError(f"{where}={short(item)}: bad placeholder ({e}); write {{name}}") from None
        for _, name, spec, conv in fields:
            if name is None:
                continue
            if name not in placeholders or spec or conv:
                raise ValueError(f"{where}={short(item)}: {{{name}{'!' + conv if conv else ''}"
                                 f"{':' + spec if spec else ''}}} is not a known placeholder; use one of "
                                 + ", ".join(f"{{{p}}}" for p in sorted(placeholders)))
        if item.startswith("/") or "=/" in item:
            raise ValueError(f"{where}={short(item)}: no absolute paths in a command template; use a placeholder "
                             "({remote_root}, {batch_root}, {out_dir}, ...) or put the program on PATH with the "
                             "site's env_script")
        if _DOTDOT.search(item):
            raise ValueError(f"{where}={short(item)}: '..' is refused (it could leave remote_root)")
    return argv
