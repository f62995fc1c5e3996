"""FASER campaign logic without a scheduler: params, config.json, layout, replan."""

import pytest

from batchsite.campaign.common import CampaignConfigError
from batchsite.campaign.faser import (
    base_dir, first_round, pad_run, parse_config, parse_files, parse_params, replan, round_request,
)


def test_file_ranges_are_end_exclusive_like_dag_manager():
    assert parse_files("400-450") == list(range(400, 450))
    assert len(parse_files("400:450")) == 50
    assert parse_files("400") == [400]


@pytest.mark.parametrize("bad", ["450-400", "400-400", "4OO", "400-", "", "1-2-3", "400;touch /tmp/x", "../1"])
def test_bad_file_ranges(bad):
    with pytest.raises(ValueError, match="files="):
        parse_files(bad)


def test_run_is_zero_padded_and_letters_refused():
    assert pad_run("11705") == "011705" and pad_run(11705) == "011705"
    with pytest.raises(ValueError, match="run="):
        pad_run("11a05")


@pytest.mark.parametrize("raw,needle", [
    ({"fourst": True, "threest": True}, "fourst and threest are exclusive"),
    ({"files": "450-400"}, "reversed"),
    ({"run": "R11705"}, "run"),
    ({"config": {"paths": {"env_scrpt": "/x"}}}, "paths.env_scrpt: unknown key"),
    ({"config": {"htcondor": {"job_flavour": "lunch"}}}, "htcondor.job_flavour"),
    ({"config": {"paths": {"env_script": "reco_condor_env.sh"}}}, "absolute path"),
    ({"config": {"paths": {"calypso_install": "/c"}}}, "set all of paths.calypso_install"),
    ({"config": {"storage": {"use_eos_for_output": True}}}, "eos_output_dir is not set"),
    ({"iterations": 0}, "iterations"),
])
def test_bad_params_name_the_field(raw, needle):
    with pytest.raises(CampaignConfigError) as e:
        parse_params(raw)
    assert needle in str(e.value)


def test_seed_config_json_is_accepted():
    cfg = parse_config({
        "paths": {"calypso_install": "/afs/u/calypso/install", "pede_install": "/afs/u/pede",
                  "env_script": "/afs/u/reco_condor_env.sh", "work_dir": "/afs/u/alignment-work",
                  "eos_output_dir": "/eos/user/u/out"},
        "htcondor": {"job_flavour": "longlunch", "request_cpus": 1, "max_retries": 3,
                     "requirements": '(Machine =!= LastRemoteHost) && (OpSysAndVer =?= "AlmaLinux9")'},
        "alignment": {"default_iterations": 10, "polling_interval_seconds": 300},
        "storage": {"use_eos_for_output": True, "keep_intermediate_root_files": True,
                    "cleanup_reco_temp_files": True},
    })
    assert cfg.uses_calypso


def test_layout_and_round_request_follow_the_seed():
    p = parse_params({"year": 2023, "run": "11705", "files": "400-406", "iterations": 3})
    assert base_dir(p, "/home/u/bs") == "/home/u/bs/faser/Y2023_R011705_F400-406"
    rd = round_request(p, 2, p.file_numbers, remote_root="/home/u/bs", python="python3").model_dump(mode="json")
    assert rd["workdir"] == "/home/u/bs/faser/Y2023_R011705_F400-406/iter02/1reco"
    assert rd["collect"]["kf_dir"].endswith("iter02/2kfalignment") and rd["collect"]["mp_dir"].endswith("iter02/3millepede")
    assert [u["name"] for u in rd["units"]][:2] == ["reco_00400", "reco_00401"]
    assert "--constants=/home/u/bs/faser/Y2023_R011705_F400-406/iter01/3millepede/inputforalign.txt" in rd["units"][0]["argv"]
    assert rd["fanin"][2] == "faser_reference.millepede"
    first = round_request(p, 1, [400], remote_root="/r", python="python3").model_dump(mode="json")
    assert not any(a.startswith("--constants") for a in first["units"][0]["argv"])


def test_eos_output_and_calypso_chain():
    p = parse_params({"files": "400-402", "config": {
        "paths": {"calypso_install": "/c", "pede_install": "/p", "env_script": "/e.sh", "eos_output_dir": "/eos/o"},
        "storage": {"use_eos_for_output": True}}})
    rd = round_request(p, 1, p.file_numbers, remote_root="/r", python="python3").model_dump(mode="json")
    assert rd["collect"]["kf_dir"] == "/eos/o/Y2023_R011705_F400-402/iter01/2kfalignment"
    assert rd["units"][0]["argv"][:2] == ["bash", "/r/scripts/runAlignment.sh"]


def test_replan_stops_on_tolerance_and_on_max_iterations():
    p = parse_params({"iterations": 3, "tolerance": 0.001})
    (part,) = first_round(p)
    nxt, why = replan(p, [{**part, "done": True, "max_rel_change": 0.2}])
    assert nxt[0]["iteration"] == 2 and "next iteration" in why
    nxt, why = replan(p, [{**part, "iteration": 2, "done": True, "max_rel_change": 0.0004}])
    assert nxt == [] and "converged" in why
    nxt, why = replan(p, [{**part, "iteration": 3, "done": True, "max_rel_change": 0.5}])
    assert nxt == [] and "3 iterations done" in why
    with pytest.raises(CampaignConfigError, match="Millepede left no alignment.json"):
        replan(p, [{**part, "done": False}])


@pytest.mark.parametrize("requirements,needle", [
    ('(OpSysAndVer =?= "$(touch /tmp/x)")', "'$'"),
    ("`touch /tmp/x`", "'`'"),
    ("Memory > 1; executable = /bin/evil", "';'"),
    ("Memory > 1\nexecutable = /bin/evil", "one line"),
    ("(((", "not a ClassAd expression"),
    ("400-450 touch", "not a ClassAd expression"),
])
def test_requirements_must_be_one_classad_expression(requirements, needle):
    with pytest.raises(CampaignConfigError) as e:
        parse_config({"htcondor": {"requirements": requirements}})
    assert "htcondor.requirements" in str(e.value) and needle in str(e.value)


@pytest.mark.parametrize("path,needle", [
    ("/afs/u/my work", "may only contain"), ("/afs/u/$(id)", "may only contain"), ("~/work", "absolute"),
    ("/afs/u/./w", "'.' or '..'"), ("/afs//u", "not normalised"), ("/" + "a" * 2000, "at most 1024"),
])
def test_site_paths_are_absolute_normalised_and_plain(path, needle):
    with pytest.raises(CampaignConfigError) as e:
        parse_config({"paths": {"work_dir": path}})
    assert "paths.work_dir" in str(e.value) and needle in str(e.value)


def test_config_errors_are_reported_with_the_other_params():
    with pytest.raises(CampaignConfigError) as e:
        parse_params({"tolerance": 5.0, "config": {"paths": {"work_dir": "rel"}}})
    assert "tolerance:" in str(e.value) and "paths.work_dir" in str(e.value)


def test_run_and_files_take_ascii_digits_only():
    with pytest.raises(CampaignConfigError, match="run"):
        parse_params({"run": "\u0661\u0661\u0667\u0660\u0665"})  # Arabic-Indic digits
    with pytest.raises(CampaignConfigError, match="files"):
        parse_params({"files": "\u0664\u0660\u0660"})
    with pytest.raises(CampaignConfigError, match="run"):
        parse_params({"run": 10**12})


def test_max_rescues_reaches_the_operator_as_its_rescue_policy():
    # the round request carries it as a typed field (it was an unread top-level key before)
    params = parse_params({"files": "400-402", "max_rescues": 5})
    request = round_request(params, 1, params.file_numbers, remote_root="/r", python="python3")
    assert request.rescue.max_rescues == 5
    assert request.collect.summary.endswith("iter01/3millepede/alignment.json")
