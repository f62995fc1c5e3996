"""``batchsite`` CLI in-process: ``faser-align`` (dry run renders iteration 1 locally; the
``--submit`` Params JSON) and the existing ``rg-summary`` parser. No Airflow is run."""

from __future__ import annotations

import ast
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import htcondor2
import pytest

from batchsite import cli
from batchsite.keys import job_key

REPO = Path(__file__).resolve().parents[2]
KEY = job_key("faser_alignment", "dry-run", "iter01.submit", 0, 0)
BASE = ["faser-align", "-y", "2023", "-r", "11705", "-i", "10"]


def _round_dir(out: Path, tag: str = "Y2023_R011705_F400-450_ST3") -> Path:
    return out / tag / "iter01" / "1reco" / KEY


def _all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _dag_params_keys() -> list[str]:
    """The Params of dags/faser_alignment.py (one per key of its FORM), read without importing Airflow."""
    tree = ast.parse((REPO / "dags" / "faser_alignment.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "FORM" for t in node.targets):
            return [k.value for k in node.value.keys]
    raise AssertionError("no FORM in dags/faser_alignment.py")


@pytest.mark.parametrize("files", ["400-450", "400:450"])
def test_dry_run_writes_the_first_round_as_the_dag_would(tmp_path, capsys, files):
    rc = cli.main([*BASE, "-f", files, "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    d = _round_dir(tmp_path)
    assert d.is_dir(), _all_files(tmp_path)
    # the DAG: a reco node per raw file 400..449 (END EXCLUSIVE) and the Millepede fan-in
    dag = (d / f"{KEY}.dag").read_text()
    jobs = [ln.split()[1] for ln in dag.splitlines() if ln.startswith("JOB ")]
    assert jobs == [f"reco_{f:05d}" for f in range(400, 450)] + ["fanin"]
    assert "PARENT " in dag and "CHILD fanin" in dag
    subs = sorted(d.glob("*.sub"))
    assert [s.name for s in subs] == ["fanin.sub", "unit.sub"]
    for s in subs:
        text = s.read_text()
        parsed = htcondor2.Submit(text)
        assert parsed["executable"] in ("unit.sh", "fanin.sh")
        assert parsed["MY.BatchsiteKey"] == f'"{KEY}"'
        assert sum(ln.strip().lower().startswith("queue") for ln in text.splitlines()) == 1
    for sh in ("unit.sh", "fanin.sh", "submit.sh"):
        assert (d / sh).stat().st_mode & stat.S_IXUSR, sh
    assert "condor_submit_dag" in (d / "submit.sh").read_text()
    # every path in the scripts points inside --out, in the seed's layout (the units' commands
    # are in the unit table beside unit.sh)
    unit = (d / "units.tab").read_text()
    assert f"{tmp_path}/Y2023_R011705_F400-450_ST3/iter01/2kfalignment" in unit
    assert "--raw-file 449 " in unit and "--raw-file 450 " not in unit
    # nothing but the round was written, and no temp files are left behind
    assert {p.parent for p in _all_files(tmp_path)} == {d}
    assert not [p for p in _all_files(tmp_path) if p.name.startswith(".")]
    # what was said
    assert f"files {files} -> 50 raw files 400..449 (end exclusive)" in out
    assert "run 011705" in out
    assert f"written to {d}/" in out
    assert "dags trigger faser_alignment -c" in out and '"run":"011705"' in out
    assert "nothing was submitted" in out


def test_dry_run_twice_overwrites_in_place(tmp_path, capsys):
    assert cli.main([*BASE, "-f", "400-402", "--out", str(tmp_path)]) == 0
    first = {p: p.read_text() for p in _all_files(tmp_path)}
    assert cli.main([*BASE, "-f", "400-402", "--out", str(tmp_path)]) == 0
    assert {p: p.read_text() for p in _all_files(tmp_path)} == first


def test_single_file_and_relative_out(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["faser-align", "-y", "2023", "-r", "011705", "-f", "400"]) == 0  # --out defaults to cwd
    out = capsys.readouterr().out
    assert "files 400 -> 1 raw file 400" in out
    dag = (_round_dir(tmp_path, "Y2023_R011705_F400_ST3") / f"{KEY}.dag").read_text()
    assert [ln.split()[1] for ln in dag.splitlines() if ln.startswith("JOB ")] == ["reco_00400", "fanin"]


def test_slurm_renders_an_sbatch_array(tmp_path, capsys):
    assert cli.main([*BASE, "-f", "400-450", "--scheduler", "slurm", "--out", str(tmp_path)]) == 0
    d = _round_dir(tmp_path)
    unit = (d / "unit.sh").read_text()
    assert (d / "arrays.txt").read_text() == "0 400-449\n"  # one array: every index < MaxArraySize
    assert f"#SBATCH --job-name={KEY}\n" in unit
    assert "#SBATCH --job-name" in (d / "fanin.sh").read_text()
    assert "sbatch" in (d / "submit.sh").read_text()
    assert not list(d.glob("*.dag"))
    assert "50 raw files" in capsys.readouterr().out


def test_local_scheduler_renders_the_runner(tmp_path, capsys):
    assert cli.main([*BASE, "-f", "400-403", "--scheduler", "local", "--out", str(tmp_path)]) == 0
    d = _round_dir(tmp_path, "Y2023_R011705_F400-403_ST3")
    assert (d / "unit.sh").is_file() and (d / "submit.sh").is_file()
    assert "3 raw files 400..402 (end exclusive)" in capsys.readouterr().out


def test_config_json_work_dir_is_kept_in_the_scripts(tmp_path, capsys):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({
        "paths": {"src_dir": "/afs/u/faser-alignment-script", "calypso_asetup": "/afs/u/calypso/asetup.faser",
                  "calypso_setup": "/afs/u/calypso/install/setup.sh", "env_pede": "/afs/u/pede",
                  "env_root": "/cvmfs/root/bin/thisroot.sh", "work_dir": "/afs/u/alignment-work"},
        "htcondor": {"job_flavour": "workday", "requirements": '(OpSysAndVer =?= "AlmaLinux9")'},
        "alignment": {"default_iterations": 4},
    }))
    out_dir = tmp_path / "out"
    # no -i: config.json's alignment.default_iterations, as dag_manager.py
    rc = cli.main(["faser-align", "-y", "2023", "-r", "11705", "-f", "400-402", "--fourst",
                   "--config", str(cfg), "--out", str(out_dir)])
    out = capsys.readouterr().out
    assert rc == 0, out
    d = _round_dir(out_dir, "Y2023_R011705_F400-402_ST4")
    unit = (d / "units.tab").read_text()
    assert "/afs/u/faser-alignment-script/templates/runAlignment.sh 2023 011705 4 00400 " \
           "/afs/u/alignment-work/Y2023_R011705_F400-402_ST4/iter01/1reco " \
           "/afs/u/alignment-work/Y2023_R011705_F400-402_ST4/iter01/2kfalignment" in unit
    sub = htcondor2.Submit((d / "unit.sub").read_text())
    assert sub["MY.JobFlavour"] == '"workday"' and sub["requirements"] == '(OpSysAndVer =?= "AlmaLinux9")'
    assert "/afs/u/alignment-work/Y2023_R011705_F400-402_ST4/iter01/1reco/" in out
    assert "up to 4 iterations, 4-station" in out and '"iterations":4' in out


@pytest.mark.parametrize("argv,needle", [
    (["-f", "450-400"], "files='450-400': the range is empty or reversed"),
    (["-f", "400-400"], "files='400-400'"),
    (["-f", "4OO"], "files='4OO'"),
    (["-f", "400-450", "-r", "11a05"], "run='11a05'"),
    (["-f", "400-450", "--fourst", "--threest"], "fourst and threest are exclusive"),
    (["-f", "400-450", "-i", "11"], "iterations"),
    (["-f", "400-450", "--site", "bad conn"], "site_conn_id"),
])
def test_bad_arguments_exit_2_and_write_nothing(tmp_path, capsys, argv, needle):
    out_dir = tmp_path / "out"
    args = ["faser-align", "-y", "2023", "-r", "11705", *argv, "--out", str(out_dir)]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert needle in err
    assert err.startswith("batchsite faser-align: ")
    assert "FASER alignment params: FASER alignment params" not in err
    assert not out_dir.exists()


@pytest.mark.parametrize("content,needle", [
    ({"paths": {"env_scrpt": "/x"}}, "paths.env_scrpt: unknown key"),
    ({"htcondr": {}}, "htcondr: unknown key"),
    ({"htcondor": {"job_flavour": "lunch"}}, "htcondor.job_flavour"),
    ({"paths": {"env_script": "reco_condor_env.sh"}}, "absolute path"),
    ([1, 2], "must be a JSON object"),
    ("{not json", "not valid JSON"),
])
def test_bad_config_json_exit_2_naming_the_key(tmp_path, capsys, content, needle):
    cfg = tmp_path / "config.json"
    cfg.write_text(content if isinstance(content, str) else json.dumps(content))
    out_dir = tmp_path / "out"
    assert cli.main([*BASE, "-f", "400-450", "--config", str(cfg), "--out", str(out_dir)]) == 2
    assert needle in capsys.readouterr().err
    assert not out_dir.exists()


def test_missing_config_json_exit_2(tmp_path, capsys):
    out_dir = tmp_path / "out"
    assert cli.main([*BASE, "-f", "400-450", "--config", str(tmp_path / "nope.json"), "--out", str(out_dir)]) == 2
    assert "nope.json: cannot read it" in capsys.readouterr().err
    assert not out_dir.exists()


def test_argparse_still_refuses_missing_flags_and_unknown_schedulers(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["faser-align", "-y", "2023", "-r", "11705"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        cli.main([*BASE, "-f", "400-450", "--scheduler", "pbs"])
    assert e.value.code == 2


# ---------------------------------------------------------------------------- --submit

def _args(*argv: str):
    return cli.build_parser().parse_args(["faser-align", *argv])


def test_submit_conf_has_exactly_the_dag_params():
    conf = cli.faser_conf_from_args(_args("-y", "2023", "-r", "11705", "-f", "400:450", "-i", "5", "--fourst",
                                          "--site", "lxplus", "--tolerance", "0.002", "--max-rescues", "1"))
    assert list(conf) == _dag_params_keys()
    assert conf == {"year": 2023, "run": "011705", "files": "400:450", "iterations": 5, "fourst": True,
                    "threest": False, "tolerance": 0.002, "site_conn_id": "lxplus", "config": {},
                    "max_rescues": 1, "start_iteration": None}
    assert json.loads(json.dumps(conf)) == conf


def test_submit_conf_defaults_and_config_file(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"alignment": {"default_iterations": 3}, "htcondor": {"max_retries": 1}}))
    conf = cli.faser_conf_from_args(_args("-y", "2024", "-r", "7", "-f", "10", "--config", str(cfg)))
    assert conf["run"] == "000007" and conf["iterations"] == 3 and conf["site_conn_id"] == "local"
    assert conf["tolerance"] == 0.001 and conf["max_rescues"] == 2
    assert conf["config"] == {"alignment": {"default_iterations": 3}, "htcondor": {"max_retries": 1}}


def test_submit_conf_refuses_what_the_dag_refuses():
    from batchsite.campaign.common import CampaignConfigError

    with pytest.raises(CampaignConfigError, match="fourst and threest"):
        cli.faser_conf_from_args(_args("-y", "2023", "-r", "1", "-f", "1", "--fourst", "--threest"))


def test_default_airflow_cli_is_next_to_this_python():
    assert cli._airflow_cli() == Path(sys.executable).parent / "airflow"


# ---------------------------------------------------------------------------- rg-summary

def test_rg_summary_parser_still_parses():
    args = cli.build_parser().parse_args(["rg-summary", "--conf", '{"site_conn_id": "local"}'])
    assert args.cmd == "rg-summary" and args.func is cli._rg_summary
    assert json.loads(args.conf) == {"site_conn_id": "local"}


def test_rg_summary_bad_conf_exits_2(capsys):
    assert cli.main(["rg-summary", "--conf", "{not json"]) == 2
    assert "batchsite rg-summary:" in capsys.readouterr().err
