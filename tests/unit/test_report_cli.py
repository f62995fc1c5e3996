"""``batchsite report``: a report written on a real ``local`` site, found through the campaign
ledger (SQLite) or the Params, printed, fetched; and the errors that name the fix."""

from __future__ import annotations

import json

from batchsite.cli import main
from batchsite.ledger.model import RoundRef
from batchsite.ledger.store import SqliteLedger
from batchsite.model import Submission
from batchsite.report.model import RunRef
from batchsite.report.publish import write_report
from batchsite.report.rg import build_rg_report, rg_outputs_dir

from .local_rounds import local_root, local_site  # noqa: F401 - fixtures
from .test_report import NOW, steps_of

CONF = {"site_conn_id": "local", "version": "cli", "steps": 2, "samples": 8000, "batches": 4, "throttle": 2,
        "tolerance": 1e-9}


def record_campaign(path, run_id: str, dag_id: str = "rg_campaign", params: dict | None = CONF) -> None:
    ref = RoundRef(dag_id=dag_id, run_id=run_id, task_id="round_01.submit", map_index=0, label="RG step 1",
                   site_conn_id="local", scheduler="local", n_units=4, params=params)
    sub = Submission(key=f"bs-{run_id[-6:]}", scheduler="local", workdir="/w", indices=[0, 1, 2, 3],
                     fanout_id="host:1")
    SqliteLedger(path).record_submission(ref, sub, attempt=0)


def write_campaign_report(site, root, run_id: str):
    from batchsite.campaign.rg import parse_params

    params = parse_params(CONF)
    out = rg_outputs_dir(params, str(root))
    report, figures = build_rg_report(params, RunRef(dag_id="rg_campaign", run_id=run_id, site_conn_id="local"),
                                      out, {out: steps_of({1: 2.0, 2: 2.1})}, now=NOW)
    write_report(site.transport, report, figures)
    return report


def test_report_of_a_run_from_the_ledger_printed_and_fetched(local_site, local_root, tmp_path, capsys):
    report = write_campaign_report(local_site, local_root, "manual__new")
    ledger = tmp_path / "ledger.sqlite"
    record_campaign(ledger, "manual__new")
    rc = main(["report", "manual__new", "--ledger", str(ledger), "--fetch", str(tmp_path / "got")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert out.startswith("report of rg_campaign / manual__new, written 2026-12-06 10:00:00 UTC on site local")
    assert report.text in out
    for path in report.files:
        assert f"\n  {path}\n" in out
    assert f"Asset: batchsite://local{local_root}/job_outputs/cli/FP\n" in out
    assert f"fetched into {tmp_path / 'got'}: 4 file(s) received, 0 unchanged" in out
    for name in ["report.json", *report.plots]:
        assert (tmp_path / "got" / name).read_bytes() == (local_root / "job_outputs/cli/FP/report" / name).read_bytes()


def test_report_by_params_without_a_ledger(local_site, local_root, capsys):
    write_campaign_report(local_site, local_root, "manual__p")
    rc = main(["report", "--campaign", "rg", "--conf", json.dumps(CONF)])
    out = capsys.readouterr().out
    assert rc == 0 and "report of rg_campaign / manual__p" in out and "RG step 2: z mean" in out


def test_a_report_overwritten_by_a_later_run_is_named_not_shown(local_site, local_root, tmp_path, capsys):
    write_campaign_report(local_site, local_root, "manual__later")
    ledger = tmp_path / "ledger.sqlite"
    record_campaign(ledger, "manual__earlier")
    rc = main(["report", "manual__earlier", "--ledger", str(ledger)])
    err = capsys.readouterr()
    assert rc == 1 and err.out == ""
    assert "is of run 'manual__later' (rg_campaign), which wrote the same outputs after 'manual__earlier'" in err.err
    assert "`batchsite report manual__later` shows it" in err.err


def test_report_errors_name_the_fix(local_root, tmp_path, capsys):
    ledger = tmp_path / "ledger.sqlite"
    record_campaign(ledger, "manual__none")
    record_campaign(ledger, "other__1", dag_id="batchsite_test_jobs")
    cases = [
        (["report", "manual__none", "--ledger", str(ledger)], 1,
         f"no report at {local_root}/job_outputs/cli/FP/report/report.json on the site"),
        (["report", "nope", "--ledger", str(ledger)], 1, "no campaign with run id 'nope'"),
        (["report", "other__1", "--ledger", str(ledger)], 2,
         "run 'other__1' is of DAG 'batchsite_test_jobs', which writes no campaign report"),
        (["report"], 2, "name a DAG run (batchsite report RUN_ID), or give --campaign rg|faser and --conf JSON"),
        (["report", "--campaign", "rg", "--conf", "{oops"], 2, "--conf is not valid JSON"),
        (["report", "--campaign", "rg", "--conf", json.dumps({**CONF, "steps": 0})], 2, "steps"),
        (["report", "--campaign", "rg", "--conf", json.dumps({**CONF, "site_conn_id": "nowhere"})], 2,
         "site connection 'nowhere' does not exist"),
        (["report", "manual__none", "--campaign", "rg", "--conf", "{}", "--ledger", str(ledger)], 2,
         "give either a run id"),
    ]
    for argv, code, message in cases:
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == code and message in err, (argv, rc, err)
