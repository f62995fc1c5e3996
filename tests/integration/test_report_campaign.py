"""A real ``rg_campaign`` on the embedded ``local`` site (``airflow dags test``): its report task
writes the PNGs and report.json next to the outputs and lists them in the task log, emits the
outputs' Asset event with the final statistics (read back from the Airflow DB the run used),
``batchsite report <run>`` prints it from the ledger's record, and the downstream
``campaign_outputs`` DAG reads the event's metadata. The site right-sizes (``right_size``
``memory``): round 2 asks the memory round 1's units measured (the runner's rusage) x 1.2."""

from __future__ import annotations

import json
import sqlite3

from batchsite.ledger.store import SqliteLedger

from ..conftest import clone_airflow_home, dags_test
from .test_ledger_campaign import batchsite_cli

CONF = {"site_conn_id": "local", "version": "report_it", "steps": 2, "samples": 8000, "batches": 4, "throttle": 2,
        "tolerance": 0.5}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def asset_events(home) -> list[dict]:
    with sqlite3.connect(home / "airflow.db") as db:
        db.row_factory = sqlite3.Row
        rows = db.execute(
            "SELECT a.uri, e.extra, e.source_dag_id, e.source_task_id, e.source_run_id, al.name AS alias "
            "FROM asset_event e JOIN asset a ON a.id = e.asset_id "
            "LEFT JOIN asset_alias_asset_event ae ON ae.event_id = e.id "
            "LEFT JOIN asset_alias al ON al.id = ae.alias_id ORDER BY e.id").fetchall()
    return [{**dict(r), "extra": json.loads(r["extra"])} for r in rows]


def test_rg_campaign_report_plots_asset_event_cli_and_downstream_dag(airflow_home, tmp_path, monkeypatch):
    root = tmp_path / "site"
    monkeypatch.setenv("BATCHSITE_LOCAL_ROOT", str(root))
    monkeypatch.setenv("BATCHSITE_LEDGER_PATH", str(tmp_path / "ledger.sqlite"))
    monkeypatch.delenv("AIRFLOW_CONN_BATCHSITE_LEDGER", raising=False)
    monkeypatch.setenv("BATCHSITE_LOCAL_RIGHT_SIZE", "memory")
    home = clone_airflow_home(airflow_home, tmp_path / "airflow")  # this test's own asset events

    r = dags_test(home, "rg_campaign", CONF, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "state=success" in out, out[-5000:]
    ledger = SqliteLedger(tmp_path / "ledger.sqlite")
    (campaign,) = ledger.list_campaigns()

    # right-sizing: round 1's decision from its units' measured peak RSS is round 2's request
    first_sizing = next(d for d in ledger.campaign(campaign.run_id).decisions if d.kind == "sizing")
    measured_mb = first_sizing.inputs["mem_mb"]
    assert measured_mb >= 128 and first_sizing.inputs["inputs"]["measured_units"] == 4, first_sizing
    assert f"right-sizing (memory) from the previous round's measured usage: memory default -> {measured_mb} MB" \
        in out, out[-5000:]
    assert f"'mem_mb': {measured_mb}," in out

    # on the site, next to the outputs: report.json and the plots it lists, each a PNG
    outputs = root / "job_outputs" / "report_it" / "FP"
    report = json.loads((outputs / "report" / "report.json").read_text())
    assert report["run_id"] == campaign.run_id and report["outputs_dir"] == str(outputs)
    assert report["plots"] == ["convergence.png", "z_histograms.png", "z_std.png"]
    assert [s["step"] for s in report["rg_steps"]] == [1, 2]
    assert report["converged"] is True and report["converged_at"] == 2
    assert 0 < report["rg_steps"][1]["distance"] < 0.5
    for name in report["plots"]:
        assert (outputs / "report" / name).read_bytes().startswith(PNG_MAGIC)
    # ... and listed in the task log
    for name in ["report.json", *report["plots"]]:
        assert f"  {outputs}/report/{name}\n" in out, out[-3000:]

    # the Asset event, through the alias, with the final statistics as metadata
    uri = f"batchsite://local{outputs}"
    # (the AIRFLOW_HOME is a copy of the session's: earlier tests' campaigns emitted events too)
    (event,) = [e for e in asset_events(home) if e["source_run_id"] == campaign.run_id]
    assert (event["uri"], event["alias"], event["source_dag_id"], event["source_task_id"], event["source_run_id"]) \
        == (uri, "batchsite-rg-outputs", "rg_campaign", "report", campaign.run_id)
    extra = event["extra"]
    assert (extra["converged"], extra["converged_at"], extra["run_id"]) == (True, 2, campaign.run_id)
    last = report["rg_steps"][-1]
    assert extra["final"]["FP"]["z_std"] == last["z_std"] and extra["final"]["FP"]["samples"] == 8000
    assert extra["report"] == f"{outputs}/report/report.json"

    # batchsite report <run>: found through the ledger's record of the run (site + Params)
    shown = batchsite_cli(home, "report", campaign.run_id, "--fetch", str(tmp_path / "fetched"))
    assert shown.returncode == 0, shown.stderr
    assert report["text"] in shown.stdout and f"Asset: {uri}" in shown.stdout
    assert (tmp_path / "fetched" / "z_std.png").read_bytes() == (outputs / "report" / "z_std.png").read_bytes()

    # the downstream DAG reads the event's metadata (by hand: the latest event of the alias)
    down = dags_test(home, "campaign_outputs", {}, timeout=300)
    dout = down.stdout + down.stderr
    assert down.returncode == 0 and "state=success" in dout, dout[-5000:]
    assert f"RG FP report_it (rg_campaign / {campaign.run_id}): converged at 2" in dout
    assert f"FP: distance {last['distance']:.6g}" in dout and f"z_std {last['z_std']:.6g}" in dout
