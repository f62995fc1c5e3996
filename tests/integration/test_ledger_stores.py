"""The campaign ledger's two stores, the same tests on each: SQLite (a file) and the REAL
PostgreSQL of the test site (its ``batchsite_ledger`` database, through ``PostgresHook`` and an
Airflow connection; each test gets a throwaway schema, dropped at the end).

Schema creation is versioned and idempotent, concurrent first uses migrate once, a newer
schema is refused; a round's submissions, observed changes, final units (ONE insert) and
decisions read back as written.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import psycopg2
import pytest

from batchsite.ledger import store as ledger_store
from batchsite.ledger.model import DecisionRecord, RoundRef, UnitUsage
from batchsite.ledger.store import LedgerError, LedgerSchemaError, LedgerStore, SqliteLedger, migrations
from batchsite.model import JobState, RoundStatus, Submission, TaskStatus

#: every schema this session creates starts with it (the session's finalizer drops them all)
SESSION_PREFIX = f"ledger_test_{uuid.uuid4().hex[:8]}"


def ledger_conn(site: dict, schema: str) -> dict:
    """The ``batchsite_ledger`` Airflow connection (AIRFLOW_CONN_* JSON) to the test site's
    ledger database, with the ledger in ``schema``."""
    pg = site.get("postgres")
    if not pg:
        pytest.fail("the test site runs no PostgreSQL (site.json has no 'postgres'): tests/site/site.sh start "
                    "starts it", pytrace=False)
    u = urlsplit(pg["ledger_uri"])
    return {"conn_type": "postgres", "host": u.hostname, "port": u.port, "login": u.username,
            "password": u.password, "schema": u.path.lstrip("/"), "extra": {"schema": schema}}


def drop_schema(site: dict, schema: str) -> None:
    conn = psycopg2.connect(site["postgres"]["ledger_uri"])
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        conn.close()


@pytest.fixture
def pg_schema(site_info) -> Iterator[str]:
    """A fresh schema name in the ledger database (created by the first migration), dropped after."""
    schema = f"{SESSION_PREFIX}_{uuid.uuid4().hex[:6]}"
    yield schema
    drop_schema(site_info, schema)


def postgres_store(site: dict, schema: str, monkeypatch) -> LedgerStore:
    from batchsite.hooks.ledger import LEDGER_CONN_ID, PostgresLedger

    monkeypatch.setenv(f"AIRFLOW_CONN_{LEDGER_CONN_ID.upper()}", json.dumps(ledger_conn(site, schema)))
    return PostgresLedger()


@pytest.fixture(params=["sqlite", "postgres"])
def make_store(request, tmp_path, monkeypatch):
    """A factory of NEW store objects on ONE database (as separate processes would open it)."""
    if request.param == "sqlite":
        return lambda: SqliteLedger(tmp_path / "ledger.sqlite")
    site = request.getfixturevalue("site_info")
    schema = request.getfixturevalue("pg_schema")
    return lambda: postgres_store(site, schema, monkeypatch)


def ref(run_id: str = "run1", dag_id: str = "rg_campaign", n_units: int = 4) -> RoundRef:
    return RoundRef(dag_id=dag_id, run_id=run_id, task_id="round_01.submit", map_index=0, label="RG step 1",
                    site_conn_id="slurm_site", scheduler="slurm", n_units=n_units, params={"steps": 2, "seed": 1})


def observed(key: str, *states: tuple[JobState, int | None]) -> RoundStatus:
    return RoundStatus(key=key, units={i: TaskStatus(state=s, exit_code=rc, native=s.value.upper())
                                       for i, (s, rc) in enumerate(states)})


# ---------------------------------------------------------------------------- schema

def test_schema_is_versioned_and_idempotent(make_store):
    first = make_store()
    assert first.migrate() == len(migrations()) >= 1
    first.record_submission(ref(), Submission(key="bs-k1", scheduler="slurm", workdir="/w", indices=[0, 1, 2, 3],
                                              fanout_id="101"), attempt=0)
    again = make_store()  # another process, the same database
    assert again.migrate() == first.migrate() == len(migrations())
    assert again.applied_migrations() == [(m.version, m.name) for m in migrations()]
    view = again.campaign("run1")
    assert [r.round_key for r in view.rounds] == ["bs-k1"] and view.campaign.params == {"steps": 2, "seed": 1}


def test_concurrent_first_uses_migrate_once(make_store):
    stores = [make_store() for _ in range(4)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(stores))

    def first_use(s: LedgerStore) -> None:
        barrier.wait()
        try:
            s.migrate()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=first_use, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert make_store().applied_migrations() == [(m.version, m.name) for m in migrations()]


def test_a_newer_schema_is_refused(make_store):
    s = make_store()
    s.migrate()
    with s._transaction() as cur:  # a later batchsite migrated this database further
        cur.execute("INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)",
                    (len(migrations()) + 1, "from_the_future", ledger_store.utcnow()))
    with pytest.raises(LedgerSchemaError, match=f"schema version {len(migrations()) + 1}, newer than"):
        make_store().migrate()


# ---------------------------------------------------------------------------- what is written

def test_a_round_is_recorded_with_transitions_units_and_decisions(make_store, monkeypatch):
    s = make_store()
    key = "bs-submit-0123456789ab"
    first = Submission(key=key, scheduler="slurm", workdir="/w/r1", indices=[0, 1, 2, 3], fanout_id="4242",
                       fanin_id="4243", submitted_at=1_700_000_000.0)
    s.record_submission(ref(), first, attempt=0)
    s.record_submission(ref(), first.model_copy(update={"adopted": True}), attempt=0)  # a retried task re-attached

    waiting = observed(key, *[(JobState.WAITING, None)] * 4)
    running = observed(key, (JobState.DONE, 0), (JobState.RUNNING, None), (JobState.RUNNING, None),
                       (JobState.WAITING, None))
    assert s.observe(key, waiting) is True
    assert s.observe(key, waiting) is False  # the same counts: no row
    assert s.observe(key, running) is True
    assert s.observe(key, running) is False
    assert s.observe("bs-never-submitted", running) is False

    ended = observed(key, (JobState.DONE, 0), (JobState.FAILED, 3), (JobState.DONE, 0), (JobState.DONE, 0))
    s.observe(key, ended)
    s.record_decision(DecisionRecord(dag_id="rg_campaign", run_id="run1", task_id="round_01.submit", round_key=key,
                                     kind="failure-policy", action="rescue", reason="1/4 units failed",
                                     inputs={"failure_ratio": 0.25}))
    rescue = Submission(key=key, scheduler="slurm", workdir="/w/r1", indices=[1], fanout_id="4250", fanin_id="4251")
    s.record_submission(ref(), rescue, attempt=1, reason="rescue 1: only unit 1")

    statements: list[str] = []
    execute = ledger_store._Cursor.execute

    def counting(self, sql, params=()):
        statements.append(sql)
        return execute(self, sql, params)

    monkeypatch.setattr(ledger_store._Cursor, "execute", counting)
    whole = observed(key, *[(JobState.DONE, 0)] * 4)
    usage = {1: UnitUsage(wall_seconds=12.5, cpu_seconds=11.0, max_rss_mb=151.2, usage_source="sacct")}
    assert s.finish_round(key, whole, decision="success", usage=usage) is True
    assert sum(q.startswith("INSERT INTO units") for q in statements) == 1  # ONE batch insert for the round
    monkeypatch.undo()
    s.record_decision(DecisionRecord(dag_id="rg_campaign", run_id="run1", kind="human", action="accept",
                                     reason="looked at the histograms", actor="alice", inputs={"step": 1}))
    s.set_campaign_status("rg_campaign", "run1", "finished", "converged at step 1", finished=True)

    view = make_store().campaign("run1")
    (r,) = view.rounds
    assert (r.status, r.attempts, r.decision, r.counts, r.n_units) == ("succeeded", 2, "success", {"done": 4}, 4)
    assert r.submitted_at.timestamp() == 1_700_000_000.0 and r.finished_at is not None
    assert [(x.attempt, x.fanout_id, x.fanin_id, x.indices, x.adopted, x.reason) for x in view.submissions] == [
        (0, "4242", "4243", "0-3", False, None), (1, "4250", "4251", "1", False, "rescue 1: only unit 1")]
    assert [(u.unit_index, u.state, u.exit_code) for u in view.units] == [(i, "done", 0) for i in range(4)]
    assert (view.units[1].wall_seconds, view.units[1].cpu_seconds, view.units[1].max_rss_mb,
            view.units[1].usage_source) == (12.5, 11.0, 151.2, "sacct")
    assert view.units[0].wall_seconds is None and view.units[0].usage_source is None
    round_changes = [(t.from_status, t.to_status, t.counts) for t in view.transitions if t.round_key]
    assert round_changes == [
        ("waiting", "waiting", {"waiting": 4}),
        ("waiting", "running", {"done": 1, "running": 2, "waiting": 1}),
        ("running", "failed", {"done": 3, "failed": 1}),
        ("failed", "succeeded", {"done": 4}),
    ]
    assert [(t.from_status, t.to_status) for t in view.transitions if not t.round_key] == [
        (None, "running"), ("running", "finished")]
    assert [(d.kind, d.action, d.actor, d.inputs) for d in view.decisions] == [
        ("failure-policy", "rescue", "batchsite", {"failure_ratio": 0.25}),
        ("human", "accept", "alice", {"step": 1})]
    assert view.campaign.status == "finished" and view.campaign.reason == "converged at step 1"
    (summary,) = s.list_campaigns()
    assert (summary.rounds, summary.units, summary.units_done, summary.units_failed, summary.decisions) == (
        1, 4, 4, 0, 2)
    assert make_store().failed_units("rg_campaign", "run1", "round_01.submit") == (0, 4)


def test_a_run_id_is_found_or_refused_clearly(make_store):
    s = make_store()
    s.record_submission(ref("same", "rg_campaign"), Submission(key="bs-a", scheduler="slurm", workdir="/a",
                                                                indices=[0], fanout_id="1"), attempt=0)
    s.record_submission(ref("same", "faser_alignment"), Submission(key="bs-b", scheduler="slurm", workdir="/b",
                                                                    indices=[0], fanout_id="2"), attempt=0)
    with pytest.raises(LedgerError, match=r"belongs to the DAGs \['faser_alignment', 'rg_campaign'\]: name one with"):
        s.campaign("same")
    assert s.campaign("same", dag_id="faser_alignment").rounds[0].round_key == "bs-b"
    with pytest.raises(LedgerError, match="no campaign with run id 'nope'.*batchsite campaigns list"):
        s.campaign("nope")


# ---------------------------------------------------------------------------- PostgreSQL only

def test_the_schema_extra_is_checked(site_info, monkeypatch):
    with pytest.raises(LedgerError, match=r"extra schema='x; drop table campaigns' is not a plain PostgreSQL"):
        postgres_store(site_info, "x; drop table campaigns", monkeypatch)


def test_the_postgres_ledger_lives_in_its_own_schema(site_info, pg_schema, monkeypatch):
    postgres_store(site_info, pg_schema, monkeypatch).migrate()
    conn = psycopg2.connect(site_info["postgres"]["ledger_uri"])
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (pg_schema,))
            tables = sorted(r[0] for r in cur.fetchall())
            cur.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public' "
                        "AND table_name = 'campaigns'")
            in_public = cur.fetchone()[0]
    finally:
        conn.close()
    assert tables == ["campaigns", "decisions", "rounds", "schema_version", "submissions", "transitions", "units"]
    assert in_public == 0
