"""The FASER group's tree on a site (no Airflow): prepare it before iteration 1, measure an
iteration from the files their scripts leave. The shell is ``faser_site.sh`` beside this
module, run through the site's transport with the paths as argv."""

from __future__ import annotations

from typing import Any

from batchsite.backends.common import split_sections
from batchsite.campaign.faser import (
    FaserOutputs, FaserParams, data_iter_dir, group_iteration_result, group_start_constants, group_tree_dirs,
)
from batchsite.model import CommandResult
from batchsite.shellscripts import load
from batchsite.site import Site


def _run(site: Site, command: str, *args: str) -> CommandResult:
    return site.transport.sh(load("batchsite.campaign", "faser_site.sh"), command, *args, timeout=120, check=True,
                             what=f"faser_site.sh {command} on site {site.name}")


def prepare_tree(site: Site, params: FaserParams, remote_root: str) -> str:
    """Every iteration's dirs, and the group's initial constants (restarting at iteration k:
    iteration k-1's) as the first iteration's ``1reco/inputforalign.txt``; returns what was
    copied where."""
    first = f"{data_iter_dir(params, remote_root, params.begin_iteration)}/1reco/inputforalign.txt"
    return _run(site, "prepare", group_start_constants(params, remote_root), first,
                *group_tree_dirs(params, remote_root)).out.strip()


def read_iteration(site: Site, outputs: FaserOutputs) -> dict[str, Any]:
    """``group_iteration_result`` of one iteration, from the site's files."""
    r = _run(site, "iteration", outputs.constants_in or "", outputs.constants_out, outputs.mp_dir, outputs.kf_dir)
    sec = split_sections(r.out)
    return group_iteration_result(outputs, sec.get(("applied", "-")), sec.get(("written", "-")),
                                  sec.get(("chi2", "-"), ""), sec.get(("kfalignment", "-"), "").split())
