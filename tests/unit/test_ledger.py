"""The campaign ledger's core without a database server: the migrations' dialects, the merge
of a round's final observation, and ``batchsite campaigns`` on a SQLite ledger with Airflow
made unimportable. (Both stores, SQLite and the real PostgreSQL: tests/integration/test_ledger_stores.py.)
"""

from __future__ import annotations

import json
import re

import pytest

from batchsite.ledger.model import RoundRef
from batchsite.ledger.store import POSTGRES, SQLITE, SqliteLedger, migrations, with_exit_codes
from batchsite.model import JobState, RoundStatus, Submission, TaskStatus

from ..without_airflow import run_without_airflow


@pytest.mark.parametrize("dialect", [SQLITE, POSTGRES], ids=lambda d: d.name)
def test_the_migrations_are_one_text_with_three_dialect_words(dialect):
    (first, *_) = migrations()
    sql = first.statements(dialect)
    assert len(sql) == 9  # 6 tables, 3 indexes
    assert not any("{" in s or "--" in s for s in sql)
    joined = "\n".join(sql)
    for word in dialect.words.values():
        assert word in joined
    foreign = {"sqlite": ("TIMESTAMPTZ", "JSONB", "IDENTITY"), "postgresql": ("AUTOINCREMENT",)}[dialect.name]
    assert not any(w in joined for w in foreign)


def test_the_final_units_take_the_exit_codes_of_one_full_observation():
    decided = RoundStatus(key="k", units={0: TaskStatus(state=JobState.DONE), 1: TaskStatus(state=JobState.FAILED),
                                          2: TaskStatus(state=JobState.DONE, exit_code=0, reason="earlier attempt")})
    seen = RoundStatus(key="k", units={0: TaskStatus(state=JobState.DONE, native="COMPLETED", exit_code=0),
                                       1: TaskStatus(state=JobState.FAILED, native="FAILED", exit_code=3,
                                                     reason="exit 3")})
    final = with_exit_codes(decided, seen)
    assert [(s.native, s.exit_code, s.reason) for _, s in sorted(final.units.items())] == [
        ("COMPLETED", 0, ""), ("FAILED", 3, "exit 3"), ("", 0, "earlier attempt")]
    # an observation that disagrees on the state (a later attempt) changes nothing
    other = RoundStatus(key="k", units={0: TaskStatus(state=JobState.RUNNING, exit_code=9)})
    assert with_exit_codes(decided, other).units[0] == decided.units[0]


def test_campaigns_show_reads_a_sqlite_ledger_without_airflow(tmp_path):
    path = tmp_path / "ledger.sqlite"
    store = SqliteLedger(path)
    ref = RoundRef(dag_id="rg_campaign", run_id="manual__1", task_id="round_01.submit", map_index=0, label="RG 1",
                   site_conn_id="local", scheduler="local", n_units=3)
    sub = Submission(key="bs-submit-abc", scheduler="local", workdir="/w", indices=[0, 1, 2], fanout_id="host:77")
    store.record_submission(ref, sub, attempt=0)
    store.finish_round("bs-submit-abc", RoundStatus(key="bs-submit-abc", units={
        0: TaskStatus(state=JobState.DONE, exit_code=0), 1: TaskStatus(state=JobState.FAILED, exit_code=3),
        2: TaskStatus(state=JobState.DONE, exit_code=0)}), decision="review")
    r = run_without_airflow(f"""
        import sys
        from batchsite.cli import main
        rc = main(["campaigns", "show", "manual__1", "--units", "--ledger", {json.dumps(str(path))}])
        print("RC", rc, "airflow" in sys.modules)
    """)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.rstrip().endswith("RC 0 False"), out
    assert f"ledger: sqlite {path}" in out
    assert "round_01.submit[0]  bs-submit-abc  host:77" in out
    assert re.search(r"\s2\s+1\s+0×2 3×1\s+n/a\s+failed\s+review\s", out), out  # counts, exit codes, decision
    assert re.search(r"^1\s+1\s+failed\s+3\s", out, re.M), out  # --units: unit 1's exit code


def test_a_ledger_that_cannot_be_written_is_a_warning_not_a_failure(tmp_path, monkeypatch, caplog):
    from batchsite.hooks.ledger import observe_round

    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.delenv("AIRFLOW_CONN_BATCHSITE_LEDGER", raising=False)
    monkeypatch.setenv("BATCHSITE_LEDGER_PATH", str(blocker / "ledger.sqlite"))
    status = RoundStatus(key="bs-k", units={0: TaskStatus(state=JobState.RUNNING)})
    with caplog.at_level("WARNING", logger="batchsite.hooks.ledger"):
        assert observe_round("bs-k", status) is None
    assert "campaign ledger: could not record progress of bs-k: FileExistsError" in caplog.text
