"""Where the RG campaign keeps its files on a site, and what ``--pull`` fetches of them.

``<remote_root>/job_outputs/{version}/{FP|EXP}/`` holds the outputs (``hist/`` and, for EXP,
``shift*/hist/``), ``<remote_root>/job_logs/{version}/{type}/`` the logs: see the README,
"RG campaign". Used by the seed-compatible staging layer (``batchsite.staging.Staging.pull``
and ``python -m batchsite.hooks.staging_cli --action pull``).
"""

from __future__ import annotations

from batchsite.campaign.common import SAFE_TOKEN

RUN_TYPES = ("FP", "EXP")
PULL_KINDS = ("hist", "outputs", "logs")


class LayoutInputError(ValueError):
    """A bad version, run type or pull kind; the message names the flag and an example."""


def check_version(version: str) -> str:
    if not isinstance(version, str) or not SAFE_TOKEN.fullmatch(version):
        shown = repr(version) if len(repr(version)) <= 80 else f"{repr(version)[:80]}..."
        raise LayoutInputError(
            f"version={shown}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit "
            f"(e.g. --version v1.2); no '/' and no '..'"
        )
    return version


def check_run_type(run_type: str) -> str:
    if run_type not in RUN_TYPES:
        raise LayoutInputError(f"type={run_type!r}: use FP or EXP (e.g. --type FP)")
    return run_type


def check_kind(kind: str) -> str:
    if kind not in PULL_KINDS:
        raise LayoutInputError(f"pull={kind!r}: use one of hist, outputs, logs (e.g. --pull hist)")
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
