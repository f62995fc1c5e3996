"""Restart from round k (campaign/restart.py + restart.sh): what is checked and set aside, the
script run on its own through a real local site, the refusals, the Params' bounds and schemas,
and the first partitions of a restarted campaign."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest

from batchsite.campaign import faser, rg
from batchsite.campaign.common import CampaignConfigError, param_schema
from batchsite.campaign.restart import (
    RestartPlan, faser_restart_plan, parse_reply, refusal, rg_restart_plan, run_restart,
)
from batchsite.config import local_site_config
from batchsite.sitebuild import site_from_config

ROOT = "/r"

GROUP = {"repo_root": "/g/PX402-RGCC", "expr": "shaw", "env_script": "/g/rg-env.sh",
         "config": {"main": {"id": "hpc"}}}


def rg_params(**kw) -> rg.RGParams:
    return rg.parse_params({"version": "v1", "steps": 4, "samples": 800, "batches": 4, "throttle": 2, **kw})


# ---------------------------------------------------------------------------- what a plan checks

def test_reference_fp_restart_needs_done_and_every_histogram_of_the_previous_step():
    plan = rg_restart_plan(rg_params(start_step=3), ROOT)
    out = f"{ROOT}/job_outputs/v1/FP"
    assert plan.needs == [f"{out}/stats/DONE_RG2.json", f"{out}/hist/t/t_hist_RG2.npz",
                          f"{out}/hist/z/z_hist_RG2.npz", f"{out}/hist/sym_z/sym_z_hist_RG2.npz"]
    # every output a step >= 3 may have left, none of a step < 3
    assert (out, "batches/RG3") in plan.aside and (out, f"stats/DONE_RG{rg.MAX_STEPS}.json") in plan.aside
    assert (out, "hist/sym_z/sym_z_hist_RG3.npz") in plan.aside
    assert not [rel for _, rel in plan.aside if rel.endswith(("RG1", "RG2", "RG1.npz", "RG2.npz", "RG2.json"))]
    assert plan.param == "start_step=3" and plan.previous == "RG step 2 of FP version 'v1'"
    lines = plan.render().splitlines()
    assert lines[0] == f"need {out}/stats/DONE_RG2.json" and f"aside {out} batches/RG3" in lines


def test_reference_exp_restart_checks_every_shift_and_no_symmetrised_histogram():
    plan = rg_restart_plan(rg_params(type="EXP", shifts=[0.0, 0.5], start_step=2), ROOT)
    base = f"{ROOT}/job_outputs/v1/EXP"
    assert plan.needs == [f"{base}/shift{i}/{rel}" for i in (0, 1) for rel in
                          ("stats/DONE_RG1.json", "hist/t/t_hist_RG1.npz", "hist/z/z_hist_RG1.npz")]
    assert {b for b, _ in plan.aside} == {f"{base}/shift0", f"{base}/shift1"}


def test_group_restart_needs_done_histograms_and_every_laundered_batch():
    plan = rg_restart_plan(rg_params(group=GROUP, start_step=2), ROOT)
    run = "/g/PX402-RGCC/job_outputs/v1_analytic_shaw/FP"
    step = f"{run}/data/RG1"
    assert plan.needs == [f"{step}/DONE.json", *(f"{step}/hist/{k}/{k}_hist_RG1.npz" for k in
                                                   ("t", "z", "input_t", "sym_z")),
                          *(f"{step}/laundered/t_laundered_RG1_batch_{t}.npy" for t in range(4))]
    assert (run, "data/RG2") in plan.aside and (run, "data/RG1") not in plan.aside
    assert "laundered/ once it succeeded" in plan.fix and "from step 3 instead" in plan.fix


def test_group_exp_restart_is_per_shift_run_dir_without_sym_z():
    plan = rg_restart_plan(rg_params(group=GROUP, type="EXP", shifts=[0.003], start_step=1), ROOT)
    step = "/g/PX402-RGCC/job_outputs/v1_analytic_shaw/EXP/shift_0.003/data/RG0"
    assert f"{step}/hist/z/z_hist_RG0.npz" in plan.needs
    assert not [p for p in plan.needs if "sym_z" in p]


def test_restart_at_the_first_step_checks_nothing_and_sets_everything_aside():
    plan = rg_restart_plan(rg_params(start_step=1), ROOT)
    assert plan.needs == [] and (f"{ROOT}/job_outputs/v1/FP", "batches/RG1") in plan.aside
    assert rg_restart_plan(rg_params(), ROOT) is None  # no Param, no restart


def test_faser_restart_needs_the_previous_constants():
    ref = faser.parse_params({"files": "400-402", "iterations": 5, "start_iteration": 3})
    plan = faser_restart_plan(ref, ROOT)
    mp = f"{ROOT}/faser/Y2023_R011705_F400-402_ST3/iter02/3millepede"
    assert plan.needs == [f"{mp}/inputforalign.txt", f"{mp}/alignment.json"]
    assert plan.aside[0] == (f"{ROOT}/faser/Y2023_R011705_F400-402_ST3", "iter03")
    assert [rel for _, rel in plan.aside] == [f"iter{j:02d}" for j in range(3, faser.MAX_ITERATIONS + 1)]
    eos = {"paths": {"src_dir": "/s", "calypso_asetup": "/a", "calypso_setup": "/c", "env_pede": "/p",
                     "env_root": "/t", "eos_output_dir": "/eos/out"}, "storage": {"use_eos_for_output": True}}
    group = faser.parse_params({"files": "400-402", "iterations": 5, "start_iteration": 2, "config": eos})
    plan = faser_restart_plan(group, ROOT)
    assert plan.needs == ["/eos/out/Y2023_R011705_F400-402_ST3/iter01/inputforalign.txt"]
    assert plan.aside[0] == ("/eos/out/Y2023_R011705_F400-402_ST3", "iter02")
    # the first iteration this run submits applies those constants (stage copies them into 1reco/)
    assert faser.group_start_constants(group, ROOT) == plan.needs[0]
    assert faser.group_tree_dirs(group, ROOT)[0] == "/eos/out/Y2023_R011705_F400-402_ST3/iter02/1reco"


# ---------------------------------------------------------------------------- the reply and the refusal

def test_parse_reply():
    got = parse_reply("missing /a\nmissing /b c\n")
    assert got.missing == ["/a", "/b c"] and not got.moved and not got.finished
    got = parse_reply("moved /o/hist/z/z_hist_RG3.npz /o/set_aside/S/hist/z/z_hist_RG3.npz\nfailed /o/x\nok\n")
    assert got.moved == [("/o/hist/z/z_hist_RG3.npz", "/o/set_aside/S/hist/z/z_hist_RG3.npz")]
    assert got.failed == ["/o/x"] and got.finished


def test_refusal_names_the_param_what_is_missing_on_the_site_and_the_fix():
    plan = rg_restart_plan(rg_params(start_step=3), ROOT)
    msg = refusal(plan, [f"/m{i}" for i in range(9)], "taskfarm")
    assert msg.startswith("start_step=3: RG step 2 of FP version 'v1' is not complete on site taskfarm: missing "
                          "/m0, /m1, /m2, /m3, /m4, /m5 and 3 more.")
    assert "Nothing was submitted or moved." in msg
    assert "start_step=2 reruns step 2" in msg and "leave start_step unset to run from step 1" in msg
    fplan = faser_restart_plan(faser.parse_params({"files": "400", "iterations": 4, "start_iteration": 4}), ROOT)
    msg = refusal(fplan, ["/x/iter03/3millepede/inputforalign.txt"], "lxplus")
    assert msg.startswith("start_iteration=4: iteration 3 of Y2023_R011705_F400_ST3 is not complete on site "
                          "lxplus: missing /x/iter03/3millepede/inputforalign.txt.")
    assert "start_iteration=3 reruns iteration 3" in msg


# ---------------------------------------------------------------------------- restart.sh on a real (local) site

def _tree(root: Path, steps: range) -> Path:
    """A reference FP output dir holding steps ``steps`` as the aggregation writes them."""
    out = root / "job_outputs/v1/FP"
    for k in steps:
        for rel in (f"stats/DONE_RG{k}.json", f"hist/t/t_hist_RG{k}.npz", f"hist/z/z_hist_RG{k}.npz",
                    f"hist/sym_z/sym_z_hist_RG{k}.npz", f"batches/RG{k}/batch_000/READY"):
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / rel).write_text(f"step {k}\n")
    return out


def _files(d: Path) -> set[str]:
    return {p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file()}


def test_script_sets_aside_later_steps_only_when_the_previous_step_is_complete(tmp_path):
    out = _tree(tmp_path, range(1, 5))
    before = _files(out)
    site = site_from_config(local_site_config(str(tmp_path)))
    outcome = run_restart(site, rg_restart_plan(rg_params(start_step=3), str(tmp_path)))
    # steps 3 and 4 moved, byte for byte, under set_aside/<stamp>/; steps 1 and 2 untouched
    kept = {f for f in before if "RG1" in f or "RG2" in f}
    assert {f for f in _files(out) if not f.startswith("set_aside/")} == kept
    (stamp,) = [p.name for p in (out / "set_aside").iterdir()]
    assert {f.removeprefix(f"set_aside/{stamp}/") for f in _files(out) if f.startswith("set_aside/")} == before - kept
    assert len(outcome.moved) == 10 and outcome.finished  # 4 files + the batches dir, for 2 steps
    assert (out / f"set_aside/{stamp}/hist/z/z_hist_RG3.npz").read_text() == "step 3\n"
    # a retried task finds nothing more to move
    assert run_restart(site, rg_restart_plan(rg_params(start_step=3), str(tmp_path))).moved == []


def test_script_refuses_an_incomplete_previous_step_and_moves_nothing(tmp_path):
    out = _tree(tmp_path, range(1, 4))
    (out / "hist/sym_z/sym_z_hist_RG2.npz").unlink()
    (out / "stats/DONE_RG2.json").write_text("")  # an empty DONE (a write cut short) is not done
    before = _files(out)
    site = site_from_config(local_site_config(str(tmp_path)))
    with pytest.raises(CampaignConfigError) as e:
        run_restart(site, rg_restart_plan(rg_params(start_step=3), str(tmp_path)))
    assert str(e.value).startswith(
        f"start_step=3: RG step 2 of FP version 'v1' is not complete on site local: missing "
        f"{out}/stats/DONE_RG2.json, {out}/hist/sym_z/sym_z_hist_RG2.npz. Nothing was submitted or moved.")
    assert _files(out) == before


def test_script_needs_a_directory_with_an_entry(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    plan = RestartPlan(param="p=1", previous="round 0", fix="fix it", needs=[str(tmp_path / "full")], aside=[])
    site = site_from_config(local_site_config(str(tmp_path)))
    assert run_restart(site, plan).finished
    with pytest.raises(CampaignConfigError, match="missing .*/empty. Nothing"):
        run_restart(site, plan.model_copy(update={"needs": [str(tmp_path / "empty")]}))


def _group_step(run: Path, k: int, batches: int, laundered: bool) -> None:
    """Step k of the group's layout as their rg_hist_manager.sh leaves it."""
    data = run / f"data/RG{k}"
    for kind in ("t", "z", "input_t", "sym_z"):
        (data / f"hist/{kind}").mkdir(parents=True, exist_ok=True)
        (data / f"hist/{kind}/{kind}_hist_RG{k}.npz").write_text("h")
    (data / "DONE.json").write_text('{"rg_step": %d}' % k)
    if laundered:
        (data / "laundered").mkdir()
        for t in range(batches):
            (data / f"laundered/t_laundered_RG{k}_batch_{t}.npy").write_text("t")


def test_group_layout_restart_on_a_real_local_site(tmp_path):
    """The group's chain: step k-1's laundered input must still be there (their aggregation of
    step k deletes it); a partial step k of an earlier run is set aside."""
    repo = tmp_path / "PX402-RGCC"
    params = rg_params(group={**GROUP, "repo_root": str(repo)}, start_step=2)
    run = repo / "job_outputs/v1_analytic_shaw/FP"
    _group_step(run, 0, 4, laundered=False)  # deleted by step 1's aggregation
    _group_step(run, 1, 4, laundered=True)
    (run / "data/RG2/batches/batch_0").mkdir(parents=True)  # an earlier run's step 2, cut short
    (run / "data/RG2/batches/batch_0/READY").write_text("")
    site = site_from_config(local_site_config(str(tmp_path / "root")))
    outcome = run_restart(site, rg_restart_plan(params, str(tmp_path / "root")))
    assert [src for src, _ in outcome.moved] == [f"{run}/data/RG2"]
    assert not (run / "data/RG2").exists() and (run / "data/RG1/laundered").is_dir()
    # later, step 2 aggregated (step 1's laundered/ deleted by it): restarting at 2 is refused
    _group_step(run, 2, 4, laundered=True)
    for f in (run / "data/RG1/laundered").iterdir():
        f.unlink()
    (run / "data/RG1/laundered").rmdir()
    with pytest.raises(CampaignConfigError) as e:
        run_restart(site, rg_restart_plan(params, str(tmp_path / "root")))
    msg = str(e.value)
    assert msg.startswith(f"start_step=2: RG step 1 of FP version 'v1_analytic_shaw' is not complete on site local: "
                          f"missing {run}/data/RG1/laundered/t_laundered_RG1_batch_0.npy, ")
    assert "_batch_3.npy. Nothing was submitted or moved." in msg
    assert "when step 2 was aggregated, restart from step 3 instead" in msg
    assert (run / "data/RG2/DONE.json").exists()  # refused: nothing moved


# ---------------------------------------------------------------------------- Params: bounds and schema

@pytest.mark.parametrize(("kw", "error"), [
    ({"start_step": 0}, "start_step=0 is not a step of this campaign: with steps=4 its steps are 1..4"),
    ({"start_step": 5}, "start_step=5 is not a step of this campaign: with steps=4 its steps are 1..4"),
    ({"start_step": 4, "group": GROUP}, "start_step=4 is not a step of this campaign: with steps=4 its steps are 0..3"),
    ({"start_step": 11}, "start_step: Input should be less than or equal to 10 (got 11)"),
    ({"start_step": -1}, "start_step: Input should be greater than or equal to 0 (got -1)"),
    ({"start_step": "3"}, "start_step: Input should be a valid integer (got '3')"),
])
def test_rg_start_step_bounds(kw, error):
    with pytest.raises(CampaignConfigError) as e:
        rg_params(**kw)
    assert error in str(e.value)


def test_rg_start_step_accepted_bounds():
    assert rg_params(start_step=4).begin_step == 4 and rg_params().begin_step == 1
    assert rg_params(start_step=0, group=GROUP).begin_step == 0


@pytest.mark.parametrize(("kw", "error"), [
    ({"start_iteration": 6}, "start_iteration=6 is after the last iteration (iterations=5"),
    ({"start_iteration": 0}, "start_iteration: Input should be greater than or equal to 1 (got 0)"),
])
def test_faser_start_iteration_bounds(kw, error):
    with pytest.raises(CampaignConfigError) as e:
        faser.parse_params({"files": "400", "iterations": 5, **kw})
    assert error in str(e.value)


@pytest.mark.parametrize(("model", "name", "good", "bad"), [
    (rg.RGParams, "start_step", [None, 0, 3, rg.MAX_STEPS], [-1, rg.MAX_STEPS + 1, "3", 2.5]),
    (faser.FaserParams, "start_iteration", [None, 1, faser.MAX_ITERATIONS], [0, faser.MAX_ITERATIONS + 1, "2"]),
])
def test_restart_param_schema_is_the_models_field(model, name, good, bad):
    """The form's schema comes from the model's field (same bounds as the first task's check)."""
    schema = param_schema(model, name)
    assert schema["type"] == ["null", "integer"]
    for v in good:
        jsonschema.validate(v, schema)
    for v in bad:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(v, schema)


# ---------------------------------------------------------------------------- the first partitions

def test_restarted_rg_campaign_starts_at_k():
    (part,) = rg.initial_partitions(rg_params(start_step=3))
    assert part["step"] == 3 and part["phase"] == "rg" and part["batches"] == [0, 1, 2, 3]
    request = rg.round_request(rg_params(start_step=3), part, remote_root=ROOT, python="python3")
    # step 3 samples from step 2's symmetrised histogram on the site
    assert f"--input-hist={ROOT}/job_outputs/v1/FP/hist/sym_z/sym_z_hist_RG2.npz" in request.units[0].argv
    # the group's EXP run: a restart past step 0 reads step k-1's laundered output, no perturbed start
    parts = rg.initial_partitions(rg_params(group=GROUP, type="EXP", shifts=[0.1, 0.2], start_step=2), fp_step=None)
    assert [(p["phase"], p["step"]) for p in parts] == [("rg", 2), ("rg", 2)]
    parts = rg.initial_partitions(rg_params(group=GROUP, type="EXP", shifts=[0.1], start_step=0), fp_step=3)
    assert [(p["phase"], p["step"]) for p in parts] == [("perturb", 0)]


def test_restarted_faser_campaign_starts_at_k():
    params = faser.parse_params({"files": "400-402", "iterations": 5, "start_iteration": 3})
    (part,) = faser.first_round(params)
    assert part["iteration"] == 3
    request = faser.round_request(params, 3, part["files"], remote_root=ROOT, python="python3")
    assert (f"--constants={ROOT}/faser/Y2023_R011705_F400-402_ST3/iter02/3millepede/inputforalign.txt"
            in request.units[0].argv)



def test_faser_cli_start_iteration(tmp_path):
    """``batchsite faser-align --start-iteration N`` sets the DAG's Param (main.py's ``-i N``); the
    dry run renders iteration N, with iteration N-1's constants."""
    from batchsite import cli

    def conf(*argv: str) -> dict:
        return cli.faser_conf_from_args(cli.build_parser().parse_args(["faser-align", "-y", "2023", "-r", "11705",
                                                                       "-f", "400-402", *argv]))

    assert conf("-i", "5", "--start-iteration", "3")["start_iteration"] == 3
    assert conf("-i", "5")["start_iteration"] is None
    with pytest.raises(CampaignConfigError, match=r"start_iteration=6 is after the last iteration \(iterations=5"):
        conf("-i", "5", "--start-iteration", "6")
    with pytest.raises(CampaignConfigError, match=r"start_iteration \(--start-iteration\): Input should be greater"):
        conf("-i", "5", "--start-iteration", "0")
    r = cli.render_first_round(conf("-i", "5", "--start-iteration", "3"), scheduler="htcondor", out=str(tmp_path))
    units = r["files"]["units.tab"] if "units.tab" in r["files"] else "\n".join(r["files"].values())
    assert "iter02/3millepede/inputforalign.txt" in units and "iter01/" not in units
