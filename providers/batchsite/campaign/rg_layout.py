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


# ---------------------------------------------------------------------------- the group's own layout

#: the ``STEP`` argument of the group's ``gen_shifted_data.sh``: the perturbed start of an EXP run
PERTURBED_STEP = "Initial"


def shift_text(shift: float) -> str:
    """How a shift appears in the group's folder names and arguments (``shift_0.003``): the
    shortest text that reads back as the same float, as their shift lists are written."""
    return repr(float(shift))


def version_string(version: str, method: str, expr: str) -> str:
    """The group's ``VERSIONSTR``: ``{version}_{method}_{expr}``, the name of the output tree."""
    return f"{version}_{method}_{expr}"


def group_run_dir(repo_root: str, versionstr: str, run_type: str, shift: float | None) -> str:
    """``<repo root>/job_outputs/{versionstr}/{FP | EXP/shift_<value>}``: where the group's
    scripts write one run (FP) or one shift of an EXP run."""
    base = f"{repo_root}/job_outputs/{versionstr}/{check_run_type(run_type)}"
    return base if shift is None else f"{base}/shift_{shift_text(shift)}"


def group_step_dir(run_dir: str, step: int) -> str:
    return f"{run_dir}/data/RG{step}"


def group_hist(run_dir: str, step: int, kind: str) -> str:
    """One of the histograms ``rg_hist_manager.sh`` writes for step k: kind t, z, sym_z or input_t."""
    return f"{group_step_dir(run_dir, step)}/hist/{kind}/{kind}_hist_RG{step}.npz"


def group_laundered_dir(run_dir: str, step: int) -> str:
    """The input of step k+1 (``t_laundered_RG{k}_batch_{t}.npy``), deleted once step k+1 is histogrammed."""
    return f"{group_step_dir(run_dir, step)}/laundered"


def group_perturbed_dir(run_dir: str) -> str:
    return f"{run_dir}/data/{PERTURBED_STEP}"


def group_perturbed_file(run_dir: str, shift: float, batch: int) -> str:
    return f"{group_perturbed_dir(run_dir)}/perturbed_t_shift_{shift_text(shift)}_batch_{batch}.npy"
