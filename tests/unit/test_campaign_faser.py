"""FASER campaign logic without a scheduler: params, config.json, layout, replan."""

import pytest

from batchsite.campaign.common import CampaignConfigError
import htcondor2

from batchsite.backends.htcondor import render_round
from batchsite.campaign.faser import (
    GROUP_REQUIREMENTS, base_dir, first_round, group_iteration_result, group_outputs, max_relative_change, pad_run,
    parse_chi2, parse_config, parse_constants, parse_files, parse_params, replan, round_request,
)
from batchsite.config import SiteConfig
from batchsite.rounds import spec_from_request

#: the group's chain as a member configures it
GROUP_PATHS = {"src_dir": "/home/u/faser-alignment-script", "calypso_asetup": "/eos/u/calypso/asetup.faser",
               "calypso_setup": "/eos/u/install/setup.sh", "env_pede": "/eos/u/Millepede-II/V04-17-05",
               "env_root": "/cvmfs/sft.cern.ch/lcg/app/releases/ROOT/6.36.04/bin/thisroot.sh",
               "work_dir": "/afs/u/alignment"}


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
    ({"config": {"paths": {"env_script": "/afs/u/reco_condor_env.sh"}}}, "remove paths.env_script"),
    ({"config": {"paths": {"calypso_install": "/c"}}}, "set paths.src_dir, paths.calypso_asetup, paths.env_pede"),
    ({"config": {"paths": {"src_dir": "/s", "calypso_asetup": "/a", "calypso_setup": "/c", "env_pede": "/p"}}},
     "set paths.env_root too"),
    ({"files": "99999-100001", "config": {"paths": GROUP_PATHS}}, "FILE as 5 digits"),
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
                  "src_dir": "/afs/u/faser-alignment-script", "calypso_asetup": "/afs/u/calypso/asetup.faser",
                  "env_root": "/cvmfs/root/bin/thisroot.sh", "work_dir": "/afs/u/alignment-work",
                  "eos_output_dir": "/eos/user/u/out"},
        "htcondor": {"job_flavour": "longlunch", "request_cpus": 1, "max_retries": 3,
                     "requirements": '(Machine =!= LastRemoteHost) && (OpSysAndVer =?= "AlmaLinux9")'},
        "alignment": {"default_iterations": 10, "polling_interval_seconds": 300},
        "storage": {"use_eos_for_output": True, "keep_intermediate_root_files": True,
                    "cleanup_reco_temp_files": True},
    })
    assert cfg.uses_group_chain
    # main.py's install dirs stand in for the contract's CALYPSO_SETUP and ENV_PEDE
    assert cfg.group_paths.calypso_setup == "/afs/u/calypso/install/setup.sh"
    assert cfg.group_paths.env_pede == "/afs/u/pede"
    assert cfg.group_paths.initial_constants == "/afs/u/faser-alignment-script/templates/inputforalign.txt"


def test_layout_and_round_request_follow_the_seed():
    p = parse_params({"year": 2023, "run": "11705", "files": "400-406", "iterations": 3})
    assert base_dir(p, "/home/u/bs") == "/home/u/bs/faser/Y2023_R011705_F400-406_ST3"
    rd = round_request(p, 2, p.file_numbers, remote_root="/home/u/bs", python="python3").model_dump(mode="json")
    assert rd["workdir"] == "/home/u/bs/faser/Y2023_R011705_F400-406_ST3/iter02/1reco"
    assert rd["collect"]["kf_dir"].endswith("iter02/2kfalignment") and rd["collect"]["mp_dir"].endswith("iter02/3millepede")
    assert [u["name"] for u in rd["units"]][:2] == ["reco_00400", "reco_00401"]
    assert "--constants=/home/u/bs/faser/Y2023_R011705_F400-406_ST3/iter01/3millepede/inputforalign.txt" \
        in rd["units"][0]["argv"]
    assert rd["fanin"][2] == "faser_reference.millepede"
    first = round_request(p, 1, [400], remote_root="/r", python="python3").model_dump(mode="json")
    assert not any(a.startswith("--constants") for a in first["units"][0]["argv"])


def _group(**over):
    raw = {"year": 2022, "run": "8023", "files": "0-4", "iterations": 3, "config": {"paths": GROUP_PATHS}}
    return parse_params({**raw, **over})


def _spec(request):
    cfg = SiteConfig(conn_id="s", scheduler="htcondor", transport="local", remote_root="/r")
    return spec_from_request(request, key="k1", cfg=cfg, site_path=lambda rel: f"/r/{rel}")


def test_group_chain_runs_their_scripts_with_the_contract_arguments():
    p = _group()
    tree = "/afs/u/alignment/Y2022_R008023_F0-4_ST3"
    first = round_request(p, 1, p.file_numbers, remote_root="/r", python="python3")
    src = GROUP_PATHS["src_dir"]
    # RUN as the 6-digit string and FILE as the 5-digit string, never through printf %d
    assert first.units[3].argv == [
        "bash", f"{src}/templates/runAlignment.sh", "2022", "008023", "3", "00003", f"{tree}/iter01/1reco",
        f"{tree}/iter01/2kfalignment", src, GROUP_PATHS["calypso_asetup"], GROUP_PATHS["calypso_setup"]]
    assert [u.name for u in first.units] == ["reco_00000", "reco_00001", "reco_00002", "reco_00003"]
    # Millepede hands its constants to the next iteration's 1reco/ ...
    assert first.fanin == ["bash", f"{src}/templates/runMillepede.sh", "True", src, f"{tree}/iter01/2kfalignment",
                           f"{tree}/iter02/1reco", GROUP_PATHS["env_pede"], GROUP_PATHS["env_root"]]
    # ... and reconstruction k+1 reads them there
    second = round_request(p, 2, p.file_numbers, remote_root="/r", python="python3")
    assert second.units[0].argv[6] == f"{tree}/iter02/1reco"
    # the last iteration: TO_NEXT_ITER False and no NEXT_RECO_DIR (5 arguments)
    last = round_request(p, 3, p.file_numbers, remote_root="/r", python="python3")
    assert last.fanin[2:] == ["False", src, f"{tree}/iter03/2kfalignment", GROUP_PATHS["env_pede"],
                              GROUP_PATHS["env_root"]]
    # batchsite computes convergence from the group's files
    assert first.collect == group_outputs(p, "/r", 1)
    assert first.collect.constants_in == f"{tree}/iter01/1reco/inputforalign.txt"
    assert first.collect.constants_out == f"{tree}/iter01/inputforalign.txt"
    assert first.collect.mp_dir == f"{tree}/iter01/3millepede" and first.collect.summary is None
    # the jobs run in the round's own dir (the group's script moves to $_CONDOR_SCRATCH_DIR)
    assert first.cwd is None and first.workdir == f"{tree}/iter01/1reco"


def test_group_chain_submit_settings_are_those_of_reco_sub_and_mille_sub():
    p = _group()
    spec = _spec(round_request(p, 1, p.file_numbers, remote_root="/r", python="python3"))
    files = render_round(spec).files
    unit, fanin = htcondor2.Submit(files["unit.sub"]), htcondor2.Submit(files["fanin.sub"])
    assert (unit["request_cpus"], unit["request_memory"], unit["request_disk"], unit["MY.JobFlavour"]) == \
        ("2", "4096MB", "8192MB", '"workday"')
    assert unit["requirements"] == GROUP_REQUIREMENTS
    assert (fanin["request_cpus"], fanin["request_memory"], fanin["request_disk"], fanin["MY.JobFlavour"]) == \
        ("1", "2048MB", "2048MB", '"workday"')
    assert "requirements" not in fanin.keys()
    dag = files["k1.dag"]
    assert "RETRY reco_00002 3 UNLESS-EXIT" in dag and "RETRY fanin 2 UNLESS-EXIT" in dag
    # a site that is not lxplus overrides the reco job's settings in config.json
    debian = '(OpSysAndVer =?= "Debian12")'
    q = _group(config={"paths": GROUP_PATHS, "htcondor": {"requirements": debian, "max_retries": 1}})
    spec = _spec(round_request(q, 1, q.file_numbers, remote_root="/r", python="python3"))
    assert htcondor2.Submit(render_round(spec).files["unit.sub"])["requirements"] == debian
    assert spec.retries == 1 and spec.fanin_retries == 2 and spec.resources.cpus == 2


def test_four_station_pass_has_its_own_tree_and_passes_stations_only():
    three, four = _group(), _group(fourst=True)
    assert base_dir(three, "/r") != base_dir(four, "/r")
    assert base_dir(four, "/r") == "/afs/u/alignment/Y2022_R008023_F0-4_ST4"
    argv = round_request(four, 1, [0], remote_root="/r", python="python3").units[0].argv
    # STATIONS=4; the reco options (--noIFT for 3 stations only) are the group script's business
    assert argv[4] == "4" and not [a for a in argv if a.startswith("-")]
    assert round_request(three, 1, [0], remote_root="/r", python="python3").units[0].argv[4] == "3"
    # the reference payload keeps the station tag as well
    ref3, ref4 = parse_params({}), parse_params({"fourst": True})
    assert base_dir(ref3, "/r").endswith("_ST3") and base_dir(ref4, "/r").endswith("_ST4")


def test_group_chain_data_on_eos_round_files_in_the_work_dir():
    p = _group(config={"paths": {**GROUP_PATHS, "eos_output_dir": "/eos/user/u/out"},
                       "storage": {"use_eos_for_output": True}})
    r = round_request(p, 1, p.file_numbers, remote_root="/r", python="python3")
    eos = "/eos/user/u/out/Y2022_R008023_F0-4_ST3"
    assert r.units[0].argv[6:8] == [f"{eos}/iter01/1reco", f"{eos}/iter01/2kfalignment"]
    assert r.fanin[5] == f"{eos}/iter02/1reco"
    assert r.workdir == "/afs/u/alignment/Y2022_R008023_F0-4_ST3/iter01/1reco"


def test_an_already_padded_run_is_kept_not_read_as_octal():
    assert _group(run="011705").run == "011705" and _group(run="008023").run == "008023"
    assert round_request(_group(run="011705"), 1, [450], remote_root="/r", python="p").units[0].argv[3:6] == \
        ["011705", "3", "00450"]


CONSTANTS_K = '"10": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],\n"11": [0.02, -0.001, 0.0, 0.0, 0.0, 1e-4],\n'


def test_constants_files_and_their_relative_change():
    before = parse_constants(CONSTANTS_K, "a")
    assert before["11"] == [0.02, -0.001, 0.0, 0.0, 0.0, 1e-4] and parse_constants("  \n", "a") == {}
    after = {**before, "11": [0.02002, -0.001, 0.0, 0.0, 0.0, 1e-4]}
    change, where = max_relative_change(before, after)
    assert change == pytest.approx(0.00002 / 0.02002) and where == "11 dx"
    # near zero the floor (0.01 mm, 5e-5 rad) bounds it; a new entry counts against zero
    change, where = max_relative_change({}, {"12": [0.0, 0.0, 0.0, 0.0, 0.0, 1e-5]})
    assert change == pytest.approx(0.2) and where == "12 rz"
    for bad, needle in [('"10": [1, 2]', "expected 6 finite numbers"), ('"10": [0,0,0,0,0,0], "10": [0,0,0,0,0,0]',
                                                                          "appears twice"), ("10: [", "not a comma")]:
        with pytest.raises(CampaignConfigError, match=needle):
            parse_constants(bad, "/x/iter02/inputforalign.txt")


def test_chi2_from_millepede_res_or_log():
    res = ("Parameter ! first 3 elements per line\n 1101 0.1 0.0 0.1 0.01\n"
           "! Sum(Chi^2)/Sum(Ndf) = 1234.5 / 1200 = 1.02875\n")
    assert parse_chi2(res) == {"chi2": 1234.5, "ndf": 1200.0, "chi2_ndf": 1.02875}
    log = " Sum(Chi^2)/Sum(Ndf) =   0.36452D+05 /     3577 =    10.191\n"
    assert parse_chi2(log) == {"chi2": 36452.0, "ndf": 3577.0, "chi2_ndf": 10.191}
    assert parse_chi2("pede ended without a chi2 line\n") is None


def test_group_iteration_result_needs_the_constants_millepede_wrote():
    out = group_outputs(_group(), "/r", 2)
    missing = group_iteration_result(out, CONSTANTS_K, None, "", ["kfalignment_008023_00000.root"])
    assert missing["done"] is False and missing["why"] == f"no {out.constants_out}"
    done = group_iteration_result(out, CONSTANTS_K, CONSTANTS_K, "! Sum(Chi^2)/Sum(Ndf) = 10 / 10 = 1.0", [])
    assert done["done"] and done["max_rel_change"] == 0.0 and done["chi2_ndf"] == 1.0


def test_replan_stops_on_tolerance_and_on_max_iterations():
    p = parse_params({"iterations": 3, "tolerance": 0.001})
    (part,) = first_round(p)
    nxt, why = replan(p, [{**part, "done": True, "max_rel_change": 0.2}])
    assert nxt[0]["iteration"] == 2 and "next iteration" in why
    nxt, why = replan(p, [{**part, "iteration": 2, "done": True, "max_rel_change": 0.0004}])
    assert nxt == [] and "converged" in why
    nxt, why = replan(p, [{**part, "iteration": 3, "done": True, "max_rel_change": 0.5}])
    assert nxt == [] and "3 iterations done" in why
    with pytest.raises(CampaignConfigError, match="Millepede left no result"):
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
