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
