"""Restart a campaign from round k (the RG runbook's "restart from RG step k", FASER's "start
from iteration N"), as plain Python (no Airflow).

Before anything is submitted, ONE remote command (``restart.sh`` beside this module) checks on
the site that round k-1 left its outputs complete, and only then sets aside what rounds >= k of
an earlier run left in the same output tree (moved to ``<tree>/set_aside/<stamp>/``, never
deleted), so the new rounds' results never mix with the old ones: a rerun from k with a
corrected payload (the RG ``code_dir``, the FASER group's ``paths.src_dir``) starts clean at k.
Nothing before k is submitted: the campaign's first partitions start at k
(``RGParams.begin_step``, ``FaserParams.begin_iteration``).

What "complete" means:

* RG, reference layout (``<out>`` per FP run / EXP shift): ``stats/DONE_RG{k-1}.json`` and the
  histograms ``hist/{t,z}/*_hist_RG{k-1}.npz`` (+ ``hist/sym_z/`` for FP, the next step's input);
* RG, the group's layout (``<run>/data/RG{k-1}``): ``DONE.json``, ``hist/{t,z,input_t}`` (+
  ``sym_z`` when symmetrised) and every batch's ``laundered/t_laundered_RG{k-1}_batch_{t}.npy``
  (the input of step k, which their ``rg_hist_manager.sh`` of step k deletes once it succeeded);
* FASER: the constants iteration k-1 wrote (reference payload: ``3millepede/inputforalign.txt`` and
  ``alignment.json``, written last; the group's chain: ``iter(k-1)/inputforalign.txt``).

Round records are keyed by the DAG run (``batchsite.keys.job_key``), so a restart, a new run,
never re-attaches to the jobs of an earlier run's round k; a retried task of the same run does.
Not checked: that the earlier run's jobs have stopped. Jobs of it still running would write into
the new round's directories; stop that run first (marking its tasks failed cancels its jobs).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from batchsite.campaign.common import CampaignConfigError
from batchsite.campaign.faser import MAX_ITERATIONS, FaserParams, data_iter_dir, data_tree_dir, group_outputs, tree_name
from batchsite.campaign.rg import MAX_STEPS, RGParams, output_dirs
from batchsite.campaign.rg_layout import group_laundered_dir, group_step_dir
from batchsite.shellscripts import load

if TYPE_CHECKING:
    from batchsite.site import Site

SCRIPT = "restart.sh"
#: where a restart moves what rounds >= k of an earlier run left, under each output tree
ASIDE_DIR = "set_aside"
#: missing paths named in a refusal (the rest are counted)
MAX_NAMED = 6


class RestartPlan(BaseModel):
    """What one restart checks and sets aside; ``render`` is restart.sh's stdin."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    param: str  # "start_step=3": the Param the refusal names
    previous: str  # "RG step 2 of FP version 'v1'": what must be complete
    fix: str  # what to do when it is not
    needs: list[str]  # round k-1's outputs
    aside: list[tuple[str, str]]  # (tree, path relative to it) of every output a round >= k may have left

    def render(self) -> str:
        lines = [f"need {p}" for p in self.needs] + [f"aside {base} {rel}" for base, rel in self.aside]
        return "\n".join(lines) + "\n"


class RestartOutcome(BaseModel):
    """restart.sh's answer: the unmet needs (nothing moved then), or what was moved where."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    missing: list[str]
    moved: list[tuple[str, str]]
    failed: list[str]
    finished: bool  # the script got to its end ("ok")


def parse_reply(out: str) -> RestartOutcome:
    missing, moved, failed, finished = [], [], [], False
    for line in out.splitlines():
        verb, _, rest = line.partition(" ")
        if verb == "missing":
            missing.append(rest)
        elif verb == "moved":
            src, _, dst = rest.partition(" ")
            moved.append((src, dst))
        elif verb == "failed":
            failed.append(rest)
        elif line == "ok":
            finished = True
    return RestartOutcome(missing=missing, moved=moved, failed=failed, finished=finished)


def refusal(plan: RestartPlan, missing: list[str], site_name: str) -> str:
    """The error of a restart whose round k-1 is incomplete: the Param, what is missing on the
    site, and the fix."""
    named = ", ".join(missing[:MAX_NAMED]) + (f" and {len(missing) - MAX_NAMED} more" if len(missing) > MAX_NAMED
                                               else "")
    return (f"{plan.param}: {plan.previous} is not complete on site {site_name}: missing {named}. "
            f"Nothing was submitted or moved. {plan.fix}")


def stamp() -> str:
    """The name of one restart's set-aside dir: UTC time + random (two restarts never share one)."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


def run_restart(site: Site, plan: RestartPlan) -> RestartOutcome:
    """Check round k-1 and set aside rounds >= k, in ONE remote command. Raises
    CampaignConfigError (the refusal) when round k-1 is incomplete."""
    r = site.transport.sh(load("batchsite.campaign", SCRIPT), stamp(), stdin=plan.render().encode(), timeout=300,
                          what=f"{SCRIPT} ({plan.param}) on site {site.name}")
    outcome = parse_reply(r.out)
    if outcome.missing:
        raise CampaignConfigError(refusal(plan, outcome.missing, site.name))
    if r.returncode != 0 or not outcome.finished:
        raise CampaignConfigError(
            f"{plan.param}: setting aside the outputs of the earlier run's later rounds failed on site {site.name} "
            f"({', '.join(outcome.failed) or 'exit ' + str(r.returncode)}): {r.err.strip()[-500:]}; fix the "
            "permissions (or move those paths away by hand) and trigger the restart again")
    return outcome


def describe(outcome: RestartOutcome) -> str:
    if not outcome.moved:
        return "nothing of later rounds to set aside"
    return f"set aside {len(outcome.moved)} path(s) of the earlier run's later rounds: " + "; ".join(
        f"{src} -> {dst}" for src, dst in outcome.moved)


def restart_campaign(plan: RestartPlan | None, open_site: Callable[[], Site]) -> str | None:
    """A campaign's first task: when restarting (``plan``), check round k-1 and set aside rounds
    >= k on the site ``open_site`` opens (the adapter's connection); returns what it did (None:
    not a restart). Raises CampaignConfigError, the refusal, before anything is submitted."""
    if plan is None:
        return None
    site = open_site()
    try:
        outcome = run_restart(site, plan)
    finally:
        site.close()
    return f"{plan.param}: {plan.previous} is complete; {describe(outcome)}"


# ---------------------------------------------------------------------------- RG

def _reference_step_files(params: RGParams, step: int) -> list[str]:
    """A step's outputs in the reference layout, relative to its output dir."""
    kinds = ["t", "z"] + (["sym_z"] if params.type == "FP" else [])
    return [f"stats/DONE_RG{step}.json", *(f"hist/{kind}/{kind}_hist_RG{step}.npz" for kind in kinds)]


def _group_step_needs(params: RGParams, run: str, step: int) -> list[str]:
    data = group_step_dir(run, step)
    kinds = ["t", "z", "input_t"] + (["sym_z"] if params.symmetrise else [])
    laundered = group_laundered_dir(run, step)
    return [f"{data}/DONE.json", *(f"{data}/hist/{kind}/{kind}_hist_RG{step}.npz" for kind in kinds),
            *(f"{laundered}/t_laundered_RG{step}_batch_{t}.npy" for t in range(params.batches))]


def rg_restart_plan(params: RGParams, remote_root: str) -> RestartPlan | None:
    """The restart of an RG campaign at ``start_step`` (None when the Param is not set)."""
    k = params.start_step
    if k is None:
        return None
    group = params.group is not None
    dirs = output_dirs(remote_root, params)
    needs: list[str] = []
    if k > params.first_step:
        for out in dirs:
            needs += (_group_step_needs(params, out, k - 1) if group
                      else [f"{out}/{rel}" for rel in _reference_step_files(params, k - 1)])
    later = range(k, MAX_STEPS + 1)
    aside: list[tuple[str, str]] = []
    for out in dirs:
        if group:
            aside += [(out, f"data/RG{j}") for j in later]
        else:
            aside += [(out, rel) for j in later for rel in (f"batches/RG{j}", *_reference_step_files(params, j))]
    version = params.versionstr if group else params.version
    previous = f"RG step {k - 1} of {params.type} version {version!r}"
    fix = (f"Restart from a step whose previous step is complete (start_step={k - 1} reruns step {k - 1}), or "
           f"leave start_step unset to run from step {params.first_step}.")
    if group:
        fix += (f" The group's rg_hist_manager.sh of step {k} deletes step {k - 1}'s laundered/ once it "
                f"succeeded: when step {k} was aggregated, restart from step {k + 1} instead.")
    return RestartPlan(param=f"start_step={k}", previous=previous, fix=fix, needs=needs, aside=aside)


# ---------------------------------------------------------------------------- FASER

def faser_restart_plan(params: FaserParams, remote_root: str) -> RestartPlan | None:
    """The restart of a FASER campaign at ``start_iteration`` (None when the Param is not set)."""
    k = params.start_iteration
    if k is None:
        return None
    group = params.cfg.uses_group_chain
    needs: list[str] = []
    if k > 1:
        if group:
            needs.append(group_outputs(params, remote_root, k - 1).constants_out)
        else:
            mp = f"{data_iter_dir(params, remote_root, k - 1)}/3millepede"
            needs += [f"{mp}/inputforalign.txt", f"{mp}/alignment.json"]
    # every file of an iteration is under iterNN/ of the data tree (with EOS output, the work
    # dir's iterNN/ holds only round records, keyed by run: left where they are)
    tree = data_tree_dir(params, remote_root)
    aside = [(tree, f"iter{j:02d}") for j in range(k, MAX_ITERATIONS + 1)]
    previous = f"iteration {k - 1} of {tree_name(params)}"
    fix = (f"Restart from an iteration whose previous iteration wrote its constants (start_iteration={k - 1} "
           f"reruns iteration {k - 1}), or leave start_iteration unset to run from iteration 1.")
    return RestartPlan(param=f"start_iteration={k}", previous=previous, fix=fix, needs=needs, aside=aside)
