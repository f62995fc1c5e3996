"""The review of a round, end to end: ``airflow dags test`` of a one-round campaign on the
shared round loop (tests/review_dags/batchsite_review.py) on the ``local`` site, real jobs.

Partition "flaky" has 8 units; units 2 and 5 fail on their first run: 2/8 = 25 %, between
the DEFAULT thresholds (5 % / 30 %), so ``submit`` reports ``decision="review"`` (no
exception) and ``review`` (the standard provider's HITLOperator) asks. Partition "clean"
never fails: its review skips itself. The answer comes from outside the ``dags test``
process, as a person's would: the REST API's PATCH of the request (Airflow's own API app,
in ``tests/integration/hitl_respond.py``), or, for the timeout default, the scheduler's own
AWAITING_INPUT sweep (``dags test`` runs neither an api-server nor a scheduler).
Reruns are counted from the units' own run logs.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from batchsite.rounds import REVIEW_ABORT, REVIEW_ACCEPT, REVIEW_RESCUE

from ..conftest import REPO, VENV_BIN, airflow_env

DAGS = REPO / "tests" / "review_dags"


def run_reviewed(home: Path, tmp: Path, mode: str, option: str = "") -> tuple[subprocess.CompletedProcess, dict]:
    """``dags test`` of batchsite_review and, at the same time, the responder."""
    env = airflow_env(home)
    env.update({"AIRFLOW__CORE__DAGS_FOLDER": str(DAGS), "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
                "BATCHSITE_LOCAL_ROOT": str(tmp / "site"), "BATCHSITE_LOCAL_POLL": "0.5"})
    conf = {"dir": str(tmp / "data"), "units": 8, "fail": [2, 5]}
    dag = subprocess.Popen(["timeout", "-s", "KILL", "300", str(VENV_BIN / "airflow"), "dags", "test",
                            "batchsite_review", "-c", json.dumps(conf)], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    responder = subprocess.run([sys.executable, "-m", "tests.integration.hitl_respond", mode, "batchsite_review",
                                option, "240"], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    out, _ = dag.communicate(timeout=300)
    assert responder.returncode == 0, responder.stderr[-3000:] + out[-3000:]
    request = json.loads(responder.stdout.strip().splitlines()[-1])
    return subprocess.CompletedProcess(dag.args, dag.returncode, out, ""), request


def collected(out: str) -> dict[str, dict]:
    return {c["partition"]: c for c in (json.loads(x) for x in re.findall(r"^COLLECTED (.*)$", out, re.M))}


def runs(tmp: Path, partition: str) -> list[int]:
    d = tmp / "data" / partition
    return [len((d / f"runs_{i}.log").read_text().split()) for i in range(8 if partition == "flaky" else 3)]


def review_states(home: Path) -> dict[tuple[str, int], str]:
    """The task states of the last run (the metadata DB), for the review tasks."""
    with sqlite3.connect(home / "airflow.db") as db:
        run = db.execute("select run_id from dag_run where dag_id='batchsite_review' order by id desc limit 1").fetchone()
        rows = db.execute("select task_id, map_index, state from task_instance where dag_id='batchsite_review' "
                          "and run_id=? and task_id like '%review%'", run).fetchall()
    return {(t, m): s for t, m, s in rows}


@pytest.fixture
def home(airflow_home):
    return airflow_home


def check_request(request: dict) -> None:
    """The request lists the failed units, what they exited with, and their stderr tails."""
    assert request["options"] == [REVIEW_RESCUE, REVIEW_ACCEPT, REVIEW_ABORT]
    assert request["defaults"] == [REVIEW_ACCEPT]
    assert request["subject"] == "round_01[0]: 2 of 8 units failed - rescue, accept or abort?", request
    body = request["body"]
    for i in (2, 5):
        assert f"**unit {i}**: failed exit 3" in body and f"unit {i}: boom on first run" in body, body
    assert "25%" in body and (request["task_id"], request["map_index"]) == ("round_01.review", 0)


def test_rescue_chosen_reruns_only_the_failed_units_under_a_new_key(home, tmp_path):
    r, request = run_reviewed(home, tmp_path, "respond", REVIEW_RESCUE)
    assert r.returncode == 0, r.stdout[-5000:]
    check_request(request)
    got = collected(r.stdout)
    assert got["flaky"]["succeeded"] and got["flaky"]["decision"] == "success", got
    # a rescue of its own: never the finished submission of `submit` adopted again
    assert got["flaky"]["key"].startswith("bs-afterreview-") and got["flaky"]["key"] != got["clean"]["key"]
    assert "rescue chosen in review by" in r.stdout
    assert runs(tmp_path, "flaky") == [1, 1, 2, 1, 1, 2, 1, 1]  # only 2 and 5 ran again
    # the fan-in never ran in the reviewed round (a parent failed), once in the rescue: it saw 10 runs
    assert (tmp_path / "data/flaky/fanin_runs.txt").read_text().split() == ["10"]
    # the clean round cost nothing extra: its review skipped itself, no request was written
    states = review_states(home)
    assert states[("round_01.review", 1)] == "skipped" and states[("round_01.after_review", 1)] == "skipped"
    assert runs(tmp_path, "clean") == [1, 1, 1]


def test_accept_by_timeout_default_goes_on_with_what_was_done(home, tmp_path):
    r, request = run_reviewed(home, tmp_path, "timeout")
    assert r.returncode == 0, r.stdout[-5000:]
    check_request(request)
    flaky = collected(r.stdout)["flaky"]
    assert flaky["decision"] == "accepted" and not flaky["succeeded"], flaky
    assert flaky["key"].startswith("bs-submit-") and "nobody (the timeout's default)" in flaky["message"]
    assert runs(tmp_path, "flaky") == [1] * 8  # nothing rerun
    assert not (tmp_path / "data/flaky/fanin_runs.txt").exists()


def test_abort_chosen_fails_the_campaign(home, tmp_path):
    r, request = run_reviewed(home, tmp_path, "respond", REVIEW_ABORT)
    check_request(request)
    assert r.returncode != 0, r.stdout[-5000:]
    assert re.search(r"round_01\[0\]: campaign aborted in review by \w+: flaky: 2/8 units failed", r.stdout)
    assert "flaky" not in collected(r.stdout)  # collect did not run for the aborted round
    assert runs(tmp_path, "flaky") == [1] * 8
    assert review_states(home)[("round_01.after_review", 0)] == "failed"
