"""The RG campaign logic without any scheduler: params, layout, replan, convergence."""

import numpy as np
import pytest

from batchsite.campaign.common import CampaignConfigError, render_argv
from batchsite.campaign.rg import (
    coarsen, hist_l1, initial_partitions, noise_floor, parse_params, replan, round_request,
)


def params(**kw):
    base = {"type": "FP", "version": "v1", "steps": 3, "samples": 8000, "batches": 8, "throttle": 2}
    return parse_params({**base, **kw})


@pytest.mark.parametrize("field,value,needle", [
    ("steps", 0, "steps"), ("steps", -1, "steps"), ("samples", 0, "samples"),
    ("throttle", 9, "throttle=9 is larger than batches=8"), ("type", "XYZ", "type"),
    ("version", "../../etc", "version"), ("version", "v1; touch /tmp/pwned", "version"),
    ("site_conn_id", "$(id)", "site_conn_id"), ("shifts", [0.1], "shifts are only used with type=EXP"),
    ("tolerance", 0, "tolerance"), ("steps", "3", "steps"), ("bogus", 1, "bogus: unknown key"),
])
def test_bad_params_name_the_field(field, value, needle):
    with pytest.raises(CampaignConfigError) as e:
        params(**{field: value})
    assert needle in str(e.value)


def test_exp_needs_shifts():
    with pytest.raises(CampaignConfigError, match="type=EXP needs at least one value in shifts"):
        params(type="EXP")


def test_round_request_renders_reference_commands_and_layout():
    p = params()
    (part,) = initial_partitions(p)
    rd = round_request(p, part, remote_root="/home/u/bs", python="/usr/bin/python3").model_dump(mode="json")
    assert [u["index"] for u in rd["units"]] == list(range(8))
    u3 = rd["units"][3]["argv"]
    assert u3[:3] == ["/usr/bin/python3", "-m", "source.generate"]
    assert "--batch" in u3 and u3[u3.index("--batch") + 1] == "3"
    assert not any(a.startswith("--input-hist") for a in u3)  # step 1: no input histogram
    assert rd["workdir"] == "/home/u/bs/job_logs/v1/FP/RG1"
    assert rd["collect"]["out_dir"] == "/home/u/bs/job_outputs/v1/FP"
    assert rd["fanin"][:3] == ["/usr/bin/python3", "-m", "source.aggregate"]
    assert rd["throttle"] == 2


def test_exp_partitions_one_per_shift_and_seeded_from_fp():
    p = params(type="EXP", shifts=[0.05, 0.1], fp_version="fpv")
    parts = initial_partitions(p, fp_step=4)
    assert [x["shift"] for x in parts] == [0.05, 0.1]
    rd = round_request(p, parts[1], remote_root="/r", python="python3").model_dump(mode="json")
    argv = rd["units"][0]["argv"]
    assert "--input-hist=/r/job_outputs/fpv/FP/hist/sym_z/sym_z_hist_RG4.npz" in argv
    assert "--shift=0.1" in argv
    assert rd["collect"]["out_dir"] == "/r/job_outputs/v1/EXP/shift1"


def test_render_argv_drops_items_with_none_and_refuses_unknown():
    assert render_argv(["a", "--x={x}", "{y}"], {"x": None, "y": "2"}) == ["a", "2"]
    with pytest.raises(CampaignConfigError, match="uses \\['zz'\\]"):
        render_argv(["{zz}"], {"x": 1})


def result(part, **kw):
    base = {"done": True, "missing": [], "z_mean": 0.0, "z_std": 2.3, "samples": 8000,
            "distance": None, "noise": None}
    return {**part, **base, **kw}


def test_replan_repairs_only_missing_batches():
    p = params()
    (part,) = initial_partitions(p)
    nxt, why = replan(p, [result(part, done=False, missing=[2, 5])])
    assert len(nxt) == 1 and nxt[0]["batches"] == [2, 5] and nxt[0]["step"] == 1 and nxt[0]["repair"] == 1
    assert "repair [2, 5]" in why


def test_replan_gives_up_after_max_repairs():
    p = params(max_repairs=1)
    (part,) = initial_partitions(p)
    part = {**part, "repair": 1}
    with pytest.raises(CampaignConfigError, match="still missing after 1 repair"):
        replan(p, [result(part, done=False, missing=[1])])


def test_replan_stops_when_converged_and_after_last_step():
    p = params(tolerance=0.05)
    (part,) = initial_partitions(p)
    part2 = {**part, "step": 2}
    nxt, why = replan(p, [result(part2, distance=0.01, noise=0.001)])
    assert nxt == [] and "converged at RG step 2" in why
    part3 = {**part, "step": 3}
    nxt, why = replan(p, [result(part3, distance=0.5, noise=0.001)])
    assert nxt == [] and "all 3 steps done" in why


def test_replan_doubles_samples_when_change_is_within_noise():
    p = params(tolerance=0.001)
    (part,) = initial_partitions(p)
    nxt, why = replan(p, [result({**part, "step": 2}, distance=0.05, noise=0.04)])
    assert nxt[0]["step"] == 3 and nxt[0]["samples_per_batch"] == 2 * part["samples_per_batch"]
    assert "samples doubled" in why
    nxt, _ = replan(p, [result({**part, "step": 2}, distance=0.5, noise=0.04)])
    assert nxt[0]["samples_per_batch"] == part["samples_per_batch"]


def test_hist_l1_and_noise_floor_match_sampling_noise():
    rng = np.random.default_rng(0)
    edges = np.linspace(-10, 10, 201)
    n = 20000
    a, _ = np.histogram(rng.normal(0, 2.3, n), bins=edges, density=True)
    b, _ = np.histogram(rng.normal(0, 2.3, n), bins=edges, density=True)
    d = hist_l1(a, edges, b, edges)
    floor = noise_floor(a, edges, n)
    assert 0.5 * floor < d < 1.6 * floor  # two samples of one law differ by about the floor
    c, _ = np.histogram(rng.normal(1.0, 2.3, n), bins=edges, density=True)
    assert hist_l1(a, edges, c, edges) > 3 * floor
    assert hist_l1(a, edges, a, edges) == 0.0


def test_coarsen_keeps_mass_and_reduces_bins():
    edges = np.linspace(-25, 25, 1001)
    vals = np.exp(-0.5 * (0.5 * (edges[:-1] + edges[1:])) ** 2) / np.sqrt(2 * np.pi)
    v, e = coarsen(vals, edges)
    assert len(v) == 100 and len(e) == 101
    assert np.isclose(np.sum(v * np.diff(e)), np.sum(vals * np.diff(edges)))


def test_the_groups_own_cli_can_replace_the_reference_payload():
    cmds = {"generate": ["{python}", "-m", "source.data_generation", "{samples}", "{batch_root}/batch_{batch}",
                         "{initial}", "{step}", "{seed}", "{input_hist}"]}
    p = params(commands=cmds)
    (part,) = initial_partitions(p)
    rd = round_request(p, part, remote_root="/r", python="python3").model_dump(mode="json")
    assert rd["units"][2]["argv"] == ["python3", "-m", "source.data_generation", "1000",
                                      "/r/job_outputs/v1/FP/batches/RG1/batch_2", "1", "1", "1"]
    rd2 = round_request(p, {**part, "step": 2}, remote_root="/r", python="python3").model_dump(mode="json")
    assert rd2["units"][0]["argv"][-3:] == ["2", "1", "/r/job_outputs/v1/FP/hist/sym_z/sym_z_hist_RG1.npz"]
    assert rd2["units"][0]["argv"][5] == "0"
    with pytest.raises(CampaignConfigError, match="unknown command"):
        params(commands={"generat": ["x"]})


def test_command_templates_use_only_the_placeholders_round_request_renders():
    from batchsite.campaign.rg import PLACEHOLDERS

    argv = ["{python}", "-m", "source.x"] + [f"--{n}={{{n}}}" for n in sorted(PLACEHOLDERS)]
    p = params(commands={"generate": argv})
    (part,) = initial_partitions(p)
    rd = round_request(p, {**part, "step": 2}, remote_root="/r", python="python3").model_dump(mode="json")
    assert not any("{" in a for a in rd["units"][0]["argv"])  # every placeholder has a value


@pytest.mark.parametrize("item,needle", [
    ("{step:0999999999}", "not a known placeholder"),      # a format spec would allocate 1 GB
    ("{python.__class__}", "not a known placeholder"),
    ("{step!r}", "no blanks"),
    ("{nope}", "not a known placeholder"),
    ("{step", "bad placeholder"),
    ("/usr/bin/env", "no absolute paths"),
    ("--out=/etc", "no absolute paths"),
    ("{batch_root}/../../x", "'..' is refused"),
    ("a b", "no blanks"),
    ("$(id)", "no blanks"),
    ("x" * 600, "at most 512"),
])
def test_bad_command_template_items_are_refused_naming_the_item(item, needle):
    with pytest.raises(CampaignConfigError) as e:
        params(commands={"generate": ["{python}", item]})
    assert "commands.generate[1]" in str(e.value) and needle in str(e.value)


@pytest.mark.parametrize("field,value,needle", [
    ("seed", 2**32, "seed"), ("mem_mb", 10**12, "mem_mb"), ("max_samples", 10**12, "max_samples"),
    ("throttle", 10**6, "throttle"), ("version", "v1\n", "version"), ("code_dir", "/tmp/../etc", "code_dir"),
])
def test_bounds_and_trailing_newlines(field, value, needle):
    with pytest.raises(CampaignConfigError) as e:
        params(**{field: value})
    assert f"{needle}:" in str(e.value)


def test_a_huge_value_is_not_echoed_back():
    with pytest.raises(CampaignConfigError) as e:
        params(version="a" * 100_000)
    assert len(str(e.value)) < 1000 and "100002 characters" in str(e.value)


# ---------------------------------------------------------------------------- the group's own chain

GROUP = {"repo_root": "/site/PX402-RGCC", "expr": "shaw", "env_script": "/site/rg-env.sh"}


def gparams(**kw):
    base = {"type": "FP", "version": "v1", "steps": 3, "samples": 8000, "batches": 4, "throttle": 2, "seed": 5,
            "group": GROUP}
    return parse_params({**base, **kw})


def test_config_writer_puts_the_params_into_the_members_config_as_lowercase_yaml():
    import yaml

    base = {"main": {"id": "hpc"}, "engine": {"model": "iqhe", "resample": "i"},
            "parameter_settings": {"z": {"bins": 50000, "range": [-25.0, 25.0]}},
            "convergence": {"msd_tol": 1.0e-3, "std_tol": 5.0e-4, "tiny": 1e-05}}
    p = gparams(type="EXP", shifts=[0.0, 0.003], group={**GROUP, "config": base})
    text = p.group_config_text()
    doc = yaml.safe_load(text)  # a YAML 1.1 reader, as the group's PyYAML
    assert doc == {
        "main": {"id": "hpc", "version": "v1", "type": "exp"},
        "engine": {"model": "iqhe", "resample": "i", "method": "analytic", "expr": "shaw", "symmetrise": 0},
        "parameter_settings": {"z": {"bins": 50000, "range": [-25.0, 25.0]}},
        "convergence": {"msd_tol": 1.0e-3, "std_tol": 5.0e-4, "tiny": 1e-05},
        "rg_settings": {"seed": 5, "steps": 3, "samples": 8000},
        "data_settings": {"shifts": [0.0, 0.003]},
    }
    assert all(line == line.lower() for line in text.splitlines() if not line.startswith(" "))
    assert p.group_config_path("/r") == "/r/job_configs/v1_analytic_shaw/EXP/updated_config.yaml"
    assert gparams().symmetrise == 1 and yaml.safe_load(gparams().group_config_text())["main"]["type"] == "fp"


@pytest.mark.parametrize("group,needle", [
    ({**GROUP, "config": {"Engine": {"method": "x"}}}, "key 'Engine' must be lowercase"),
    ({**GROUP, "config": {"engine": {"Method": "x"}}}, "key 'Method' must be lowercase"),
    ({"repo_root": "/site/r", "expr": "shaw"}, "need DATA_DIR, LOCAL_DIR, ROOT_DIR, TASKFARM_DIR, HOST, REMOTE_DIR, "
                                               "CONFIG_FILE, PYTHONPATH: set them in job_env, or give env_script"),
    ({**GROUP, "job_env": {"RG_CONFIG": "/x"}}, "job_env key RG_CONFIG: batchsite sets it"),
    ({**GROUP, "job_env": {"SLURM_ARRAY_TASK_MAX": "31"}}, "batchsite sets it"),
    ({**GROUP, "repo_root": "relative/path"}, "repo_root='relative/path' must be an absolute path"),
    ({**GROUP, "expr": "a b"}, "expr='a b'"),
    ({**GROUP, "bogus": 1}, "group.bogus: unknown key"),
])
def test_bad_group_params_name_the_field_and_the_fix(group, needle):
    with pytest.raises(CampaignConfigError) as e:
        gparams(group=group)
    assert needle in str(e.value)


def test_group_mode_refuses_what_its_scripts_cannot_take():
    with pytest.raises(CampaignConfigError, match="samples=8001 must be divisible by batches=4"):
        gparams(samples=8001)
    with pytest.raises(CampaignConfigError, match="leave code_dir and commands unset"):
        gparams(commands={"generate": ["{python}"]})
    with pytest.raises(CampaignConfigError, match="symmetrise the shift away"):
        gparams(type="EXP", shifts=[0.1], group={**GROUP, "symmetrise": 1})
    with pytest.raises(CampaignConfigError, match="disagrees with the Params"):
        gparams(group={**GROUP, "config": {"engine": {"method": "numerical"}}}).group_config_text()
    # the same value in both places is fine
    gparams(group={**GROUP, "config": {"engine": {"method": "analytic"}}}).group_config_text()


def _args(argv):
    """The group script's own arguments and the wrapper's geometry of one unit's argv."""
    script = next(i for i, a in enumerate(argv) if a.endswith(".sh") and "/Taskfarm/" in a)
    return argv[script - 1], argv[script].rsplit("/", 1)[1], argv[script + 1:]


def test_group_fp_rounds_follow_the_groups_contract_from_step_0():
    p = gparams()
    (part,) = initial_partitions(p)
    assert part["step"] == 0 and part["phase"] == "rg"
    rd = round_request(p, part, remote_root="/r", python="python3").model_dump(mode="json")
    cfg = "/r/job_configs/v1_analytic_shaw/FP/updated_config.yaml"
    for t, unit in enumerate(rd["units"]):
        assert unit["argv"][:4] == ["bash", "/r/code/batchsite/rg_group_job.sh", "/site/rg-env.sh",
                                    "/site/PX402-RGCC/Taskfarm"]
        geo, script, args = _args(unit["argv"])
        # N is the TOTAL count, SEED the campaign's (the script derives each batch's seed from t)
        assert (geo, script) == (f"{t}/4", "rg_gen_batch.sh")
        assert args == [cfg, "FP", "v1_analytic_shaw", "8000", "0", "5", "analytic", "shaw", "1", ""]
    geo, script, args = _args(rd["fanin"])
    assert (geo, script, args) == ("-", "rg_hist_manager.sh", [cfg, "FP", "v1_analytic_shaw", "8000", "0", "5", "1"])
    assert rd["env"] == {"RG_CONFIG": cfg} and rd["cwd"] == "/site/PX402-RGCC/Taskfarm"
    assert rd["resources"] == {**rd["resources"], "time_minutes": 60, "mem_mb": 3988}
    assert rd["fanin_resources"]["time_minutes"] == 300
    assert rd["workdir"] == "/r/job_logs/v1_analytic_shaw/FP/RG0"
    assert rd["collect"]["done_json"] == "/site/PX402-RGCC/job_outputs/v1_analytic_shaw/FP/data/RG0/DONE.json"
    assert rd["collect"]["hist"].endswith("/FP/data/RG0/hist/sym_z/sym_z_hist_RG0.npz")
    # step k >= 1 reads the laundered output of step k-1
    nxt, _ = replan(p, [result(part, samples=8000)])
    rd1 = round_request(p, nxt[0], remote_root="/r", python="python3").model_dump(mode="json")
    _, _, args = _args(rd1["units"][2]["argv"])
    assert args[4] == "1" and args[8:] == ["0", "/site/PX402-RGCC/job_outputs/v1_analytic_shaw/FP/data/RG0/laundered"]
    # steps 0..steps-1: step 2 is the last of steps=3
    nxt, why = replan(p, [result({**part, "step": 2}, distance=0.5, noise=0.001)])
    assert nxt == [] and "all 3 steps done" in why


def test_a_repair_keeps_the_full_array_geometry_and_the_batch_seeds():
    """Only batches 3 and 7 of 32 rerun: they still say batch t of 32 (the script computes
    N/32 samples and the seed of t from it), with the very same arguments as the first time."""
    p = gparams(batches=32, samples=32000)
    (part,) = initial_partitions(p)
    first = round_request(p, part, remote_root="/r", python="python3").model_dump(mode="json")
    nxt, why = replan(p, [result(part, done=False, missing=[3, 7])])
    assert "repair [3, 7]" in why
    rd = round_request(p, nxt[0], remote_root="/r", python="python3").model_dump(mode="json")
    assert [u["index"] for u in rd["units"]] == [3, 7]
    assert [_args(u["argv"])[0] for u in rd["units"]] == ["3/32", "7/32"]
    assert [u["argv"] for u in rd["units"]] == [first["units"][3]["argv"], first["units"][7]["argv"]]
    assert rd["fanin"] == first["fanin"]


def test_all_batches_there_but_no_aggregation_reruns_the_aggregation_alone():
    p = gparams()
    (part,) = initial_partitions(p)
    nxt, why = replan(p, [result({**part, "step": 1}, done=False, missing=[])])
    assert nxt[0]["batches"] == [] and "aggregation only" in why
    rd = round_request(p, nxt[0], remote_root="/r", python="python3").model_dump(mode="json")
    assert rd["fanin"] is None and len(rd["units"]) == 1
    assert _args(rd["units"][0]["argv"])[:2] == ("-", "rg_hist_manager.sh")  # a plain job, not an array task
    assert rd["resources"]["time_minutes"] == 300


def test_group_exp_starts_from_the_fps_last_sym_z_and_passes_the_shift_at_every_step():
    p = gparams(type="EXP", version="e1", fp_version="f1", shifts=[0.0, 0.003], steps=2)
    parts = initial_partitions(p, fp_step=8)
    assert [(x["phase"], x["shift"]) for x in parts] == [("perturb", 0.0), ("perturb", 0.003)]
    rd = round_request(p, parts[1], remote_root="/r", python="python3").model_dump(mode="json")
    geo, script, args = _args(rd["units"][1]["argv"])
    fp_hist = "/site/PX402-RGCC/job_outputs/f1_analytic_shaw/FP/data/RG8/hist/sym_z/sym_z_hist_RG8.npz"
    assert (geo, script) == ("1/4", "gen_shifted_data.sh")
    assert args == ["/r/job_configs/e1_analytic_shaw/EXP/updated_config.yaml", "e1_analytic_shaw", "8000", fp_hist,
                    "Initial", "5", "0.003"]
    assert rd["fanin"] is None and rd["workdir"] == "/r/job_logs/e1_analytic_shaw/EXP/shift_0.003/Initial"
    run = "/site/PX402-RGCC/job_outputs/e1_analytic_shaw/EXP/shift_0.003"
    nxt, why = replan(p, [result(parts[1])])
    assert nxt[0]["phase"] == "rg" and nxt[0]["step"] == 0 and "perturbed start done -> RG step 0" in why
    step0 = round_request(p, nxt[0], remote_root="/r", python="python3").model_dump(mode="json")
    _, script, args = _args(step0["units"][0]["argv"])
    assert script == "rg_gen_batch.sh" and args[1] == "EXP" and args[8:] == ["0", f"{run}/data/Initial", "0.003"]
    assert _args(step0["fanin"])[2][-2:] == ["0", "0.003"]  # SYMMETRISE 0 and the shift
    nxt, _ = replan(p, [result(nxt[0])])
    step1 = round_request(p, nxt[0], remote_root="/r", python="python3").model_dump(mode="json")
    _, _, args = _args(step1["units"][0]["argv"])
    assert args[8:] == ["0", f"{run}/data/RG0/laundered", "0.003"]  # SHIFT at step 1 too
    assert step1["collect"]["hist"] == f"{run}/data/RG1/hist/z/z_hist_RG1.npz"


def test_the_wrapper_presents_the_full_array_geometry(tmp_path):
    """rg_group_job.sh under a rescue array's Slurm variables (--array=3,7: MAX 7, COUNT 2)."""
    import os
    import subprocess

    from batchsite.shellscripts import load

    wrapper = tmp_path / "rg_group_job.sh"
    wrapper.write_text(load("batchsite.campaign", "rg_group_job.sh"))
    env_script = tmp_path / "env.sh"
    env_script.write_text("export FROM_ENV_SCRIPT=yes\n")
    script = tmp_path / "show.sh"
    script.write_text('echo "$SLURM_ARRAY_TASK_ID $SLURM_ARRAY_TASK_MIN $SLURM_ARRAY_TASK_MAX '
                      '$SLURM_ARRAY_TASK_COUNT $BATCHSITE_SCHED_ARRAY_TASK_MAX $SLURM_SUBMIT_DIR $PWD '
                      '$FROM_ENV_SCRIPT ${SLURM_ARRAY_TASK_ID+array} $*"\n')
    slurm = {**os.environ, "SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "3", "SLURM_ARRAY_TASK_MAX": "7",
             "SLURM_ARRAY_TASK_COUNT": "2"}

    def run(*args, env=slurm):
        return subprocess.run(["bash", str(wrapper), *args], env=env, capture_output=True, text=True)

    r = run(str(env_script), str(tmp_path), "7/32", str(script), "a", "")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["7", "0", "31", "32", "7", str(tmp_path), str(tmp_path), "yes", "array", "a"]
    r = run("-", str(tmp_path), "-", str(script))  # the aggregation: a plain job
    assert r.returncode == 0 and "array" not in r.stdout.split()
    # a round split into several arrays runs unit offset + Slurm's index: the argv's batch wins
    r = run("-", str(tmp_path), "3/32", str(script))
    assert r.returncode == 0 and r.stdout.split()[:5] == ["3", "0", "31", "32", "7"]
    r = run("-", str(tmp_path), "32/32", str(script))
    assert r.returncode == 2 and "outside the array 0..31" in r.stderr
    r = run("/nonexistent/env.sh", str(tmp_path), "-", str(script))
    assert r.returncode == 2 and "group.env_script" in r.stderr


# ---------------------------------------------------------------------------- normalisation and nu

def test_raw_counts_and_densities_give_the_same_metric():
    """The group's histograms are raw counts: read as densities the L1 metric came out ~158
    instead of ~0.04; normalised, counts and densities give the same distance and moments."""
    from batchsite.campaign.rg import normalised, z_moments

    rng = np.random.default_rng(3)
    edges = np.linspace(-25, 25, 1001)
    n = 100_000
    za, zb = rng.normal(0.3, 2.2, n), rng.normal(0.3, 2.2, n)
    ca, _ = np.histogram(za, bins=edges)
    cb, _ = np.histogram(zb, bins=edges)
    da, db = (np.histogram(z, bins=edges, density=True)[0] for z in (za, zb))
    naive = float(np.sum(np.abs(coarsen(ca, edges)[0] - coarsen(cb, edges)[0]) * np.diff(coarsen(ca, edges)[1])))
    assert naive > 50  # what reading counts as densities gave (grows with N)
    d_counts = hist_l1(*coarsen(ca, edges), *coarsen(cb, edges))
    d_dens = hist_l1(*coarsen(da, edges), *coarsen(db, edges))
    assert d_counts == pytest.approx(d_dens, rel=1e-9) and 0.01 < d_counts < 0.06
    assert noise_floor(ca, edges, n) == pytest.approx(noise_floor(da, edges, n), rel=1e-9)
    assert np.sum(normalised(ca, edges) * np.diff(edges)) == pytest.approx(1.0)
    m = z_moments(ca, edges)
    assert m == pytest.approx(z_moments(da, edges), rel=1e-9)
    assert m["z_mean"] == pytest.approx(0.3, abs=0.03) and m["z_std"] == pytest.approx(2.2, abs=0.03)
    assert m["z_peak"] == pytest.approx(0.3, abs=0.15)
    with pytest.raises(ValueError, match="no \\(or negative\\) mass"):
        normalised(np.zeros(1000), edges)


def test_nu_from_the_slopes_of_peak_and_mean_against_the_shift():
    """A shift growing as (2^n)^(1/nu) per n RG steps gives back nu, relative to shift 0
    (whose drift is subtracted), both from the peak and from the mean."""
    from batchsite.campaign.rg import critical_exponent, format_nu, nu_from_slope

    nu = 2.5
    p = params(type="EXP", shifts=[0.0, 0.1, 0.2])
    drift = {1: 0.05, 2: -0.03}
    per_shift = {s: {k: {"z_peak": drift[k] + s * 2 ** (k / nu), "z_mean": drift[k] + 1.01 * s * 2 ** (k / nu)}
                     for k in (1, 2)} for s in (0.0, 0.1, 0.2)}
    rows = critical_exponent(p, per_shift)
    assert [(r.step, r.n) for r in rows] == [(1, 1), (2, 2)]
    assert rows[1].nu_peak == pytest.approx(nu, rel=1e-9) and rows[1].nu_mean == pytest.approx(2.46, abs=0.02)
    text = format_nu(rows)
    assert "RG step 2 (n=2): slope(z peak) 1.7411 -> nu 2.500" in text
    assert "published: 2.39" in text and "published: 2.51 +/- 0.11" in text
    assert nu_from_slope(0.9, 2) is None and "n/a" in format_nu([])
    # the group's steps start at 0 and already apply the RG unit once: step k is n = k + 1
    g = gparams(type="EXP", shifts=[0.0, 0.1])
    assert [r.n for r in critical_exponent(g, {s: {0: {"z_peak": s, "z_mean": s}} for s in (0.0, 0.1)})] == [1]


# ---------------------------------------------------------------------------- collect on the group's outputs

def _group_step(run, k, n, batches, seed, ready=None, done_n=None):
    """What rg_hist_manager.sh leaves for step k: raw-count histograms, READY batches, DONE.json."""
    import json

    rng = np.random.default_rng(seed)
    edges = np.linspace(-25, 25, 1001)
    step = run / "data" / f"RG{k}"
    z = rng.normal(0.0, 2.2, n)
    for kind, values in (("z", z), ("sym_z", np.concatenate((z, -z)))):
        (step / "hist" / kind).mkdir(parents=True)
        np.savez(step / "hist" / kind / f"{kind}_hist_RG{k}.npz", histval=np.histogram(values, bins=edges)[0],
                 binedges=edges, bincenters=0.5 * (edges[:-1] + edges[1:]))
    for t in (range(batches) if ready is None else ready):
        (step / "batches" / f"batch_{t}").mkdir(parents=True)
        (step / "batches" / f"batch_{t}" / "READY").write_text("OK")
    (step / "DONE.json").write_text(json.dumps({
        "rg_step": k, "n_total": done_n or n, "num_batches": batches, "batch_size": n // batches, "job_id": "1",
        "created": "2026-01-01T00:00:00+00:00", "config": "/x"}))


def test_collect_reads_the_groups_raw_counts_through_the_real_collect_script(local_site, tmp_path):
    from batchsite.campaign.collect import collect_round
    from batchsite.campaign.rg import RGOutputs, RGRoundRequest

    p = gparams(group={**GROUP, "repo_root": str(tmp_path / "repo")})
    run = tmp_path / "repo/job_outputs/v1_analytic_shaw/FP"
    _group_step(run, 0, 8000, 4, seed=1)
    _group_step(run, 1, 8000, 4, seed=2)
    (part,) = initial_partitions(p)

    def outputs(k) -> RGOutputs:
        rd = round_request(p, {**part, "step": k}, remote_root=str(tmp_path / "bs"), python="python3")
        return RGRoundRequest.model_validate(rd.model_dump()).collect

    prev = f"{run}/data/RG0/hist/sym_z/sym_z_hist_RG0.npz"
    got = collect_round(local_site, outputs(1), prev, [0, 1, 2, 3])
    assert got["done"] and got["missing"] == [] and got["samples"] == 8000, got
    assert abs(got["z_mean"]) < 0.1 and 2.1 < got["z_std"] < 2.3 and abs(got["z_peak"]) < 0.4
    # two samples of one law: an L1 at the noise floor, not the ~158 of counts read as densities
    assert 0 < got["distance"] < 2 * got["noise"] < 0.2
    # a batch without READY is named; a DONE.json of another N is stale: the aggregation reruns alone
    _group_step(run, 2, 8000, 4, seed=3, ready=[0, 1, 3])
    assert collect_round(local_site, outputs(2), None, [0, 1, 2, 3])["missing"] == [2]
    _group_step(run, 3, 8000, 4, seed=4, done_n=4000)
    stale = collect_round(local_site, outputs(3), None, [0, 1, 2, 3])
    assert not stale["done"] and stale["missing"] == []
