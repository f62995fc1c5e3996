"""The campaign ledger from Airflow: the PostgreSQL store and what tasks write to it.

**Which store.** The Airflow connection ``batchsite_ledger`` (type ``postgres``) when it
exists: ``PostgresLedger`` through ``PostgresHook``. Its ``schema`` extra names a PostgreSQL
schema of the ledger's own (created on first use), so a deployment can point the ledger at
its metadata DB's server, even its database, without mixing tables. Without that connection:
``SqliteLedger`` at ``$BATCHSITE_LEDGER_PATH``, else ``$AIRFLOW_HOME/batchsite_ledger.sqlite``
(``batchsite.ledger.store.default_sqlite_path``).

**Never fails a round.** Every write from a task or the triggerer goes through ``_write``:
an error (database down, bad connection) is logged as a warning and the round goes on.

**What the operators call** (``batchsite.operators.round``, ``round_loop``, the trigger):
``ledger_for_task(context)`` -> ``RoundLedger`` (``submitted``, ``observed``, ``finished``,
``decided``); ``observe_round`` (the trigger, per counts change); ``record_replan`` (the
campaign's replan task). **A human choice** (the HITL review): ``record_decision(action,
reason, actor=..., inputs=...)`` inside a task, or with ``dag_id``/``run_id`` from anywhere.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from typing import Any, TypeVar

from airflow.providers.postgres.hooks.postgres import PostgresHook
from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException

from batchsite.ledger.model import BATCHSITE_ACTOR, REPLAN_INPUTS, DecisionRecord, RoundRef, UnitUsage
from batchsite.ledger.store import (
    POSTGRES, LedgerError, LedgerStore, SqliteLedger, default_sqlite_path, with_exit_codes,
)
from batchsite.model import RoundSpec, RoundStatus, Submission
from batchsite.site import Site

log = logging.getLogger(__name__)

LEDGER_CONN_ID = "batchsite_ledger"
#: a PostgreSQL schema name we put into ``search_path`` and ``CREATE SCHEMA``
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

T = TypeVar("T")


class LedgerPostgresHook(PostgresHook):
    """``PostgresHook`` whose ``schema`` extra is the ledger's schema (``search_path``),
    not a libpq option (PostgresHook passes unknown extras to ``connect``)."""

    ignored_extra_options = PostgresHook.ignored_extra_options | {"schema"}

    def __init__(self, conn_id: str, ledger_schema: str | None):
        super().__init__(postgres_conn_id=conn_id,
                         options=f"-c search_path={ledger_schema}" if ledger_schema else None)


class PostgresLedger(LedgerStore):
    """The ledger in PostgreSQL, through the ``batchsite_ledger`` connection."""

    dialect = POSTGRES

    def __init__(self, conn_id: str = LEDGER_CONN_ID):
        super().__init__()
        conn = BaseHook.get_connection(conn_id)
        if conn.conn_type not in ("postgres", "postgresql"):
            raise LedgerError(f"connection {conn_id!r} has type {conn.conn_type!r}; the ledger needs a 'postgres' "
                              "connection (or none: then SQLite at $BATCHSITE_LEDGER_PATH)")
        schema = conn.extra_dejson.get("schema")
        if schema is not None and (not isinstance(schema, str) or not _SCHEMA_NAME.match(schema)):
            raise LedgerError(f"connection {conn_id!r}: extra schema={schema!r} is not a plain PostgreSQL schema "
                              "name (lower-case letters, digits, '_'; at most 63)")
        self.conn_id, self.schema = conn_id, schema
        self._where = f"postgresql {conn.host}:{conn.port or 5432}/{conn.schema}" + (f" schema {schema}"
                                                                                     if schema else "")
        self._hook = LedgerPostgresHook(conn_id, schema)

    def describe(self) -> str:
        return f"{self._where} (connection {self.conn_id})"

    def _connect(self) -> Any:
        return self._hook.get_conn()

    def _prelude(self) -> list[str]:
        return [f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"'] if self.schema else []


def open_ledger(conn_id: str = LEDGER_CONN_ID) -> LedgerStore:
    """PostgreSQL when the connection exists, else SQLite at ``default_sqlite_path()``."""
    try:
        return PostgresLedger(conn_id)
    except AirflowNotFoundException:
        return SqliteLedger(default_sqlite_path())


def _write(what: str, action: Callable[[LedgerStore], T]) -> T | None:
    """Run one ledger write; a failure is a warning, never the round's failure."""
    try:
        return action(open_ledger())
    except Exception as e:  # noqa: BLE001 - the ledger is a record, not part of the round
        log.warning("campaign ledger: could not record %s: %s: %s", what, type(e).__name__, e)
        return None


def _ti_ids(context: Any) -> tuple[str, str, str, int]:
    ti = context["ti"]
    return ti.dag_id, ti.run_id, ti.task_id, getattr(ti, "map_index", -1)


class RoundLedger:
    """What ``BatchRoundOperator`` records of the round it runs (all writes are ``_write``)."""

    def __init__(self, context: Any, site_conn_id: str):
        self.dag_id, self.run_id, self.task_id, self.map_index = _ti_ids(context)
        self.site_conn_id = site_conn_id
        params = context.get("params")
        self.params = {k: params[k] for k in params} if params else None

    def submitted(self, spec: RoundSpec, sub: Submission, *, attempt: int, reason: str | None = None) -> None:
        ref = RoundRef(dag_id=self.dag_id, run_id=self.run_id, task_id=self.task_id, map_index=self.map_index,
                       label=spec.label, site_conn_id=self.site_conn_id, scheduler=sub.scheduler,
                       n_units=len(spec.units), params=self.params)
        _write(f"submission {sub.key}", lambda s: s.record_submission(ref, sub, attempt=attempt, reason=reason))

    def observed(self, key: str, status: RoundStatus) -> None:
        _write(f"progress of {key}", lambda s: s.observe(key, status))

    def finished(self, site: Site, sub: Submission, whole: RoundStatus, decision: str,
                 usage: dict[int, UnitUsage] | None = None) -> None:
        """The round's end: each unit's final state, exit code and measured usage (``usage``:
        ``batchsite.usage.ledger_usage`` of the last attempt). The trigger's last event
        carries counts, not every unit (its size is O(1) in the units), so the units of this
        submission are read in ONE status command; units done in earlier attempts keep theirs."""
        def write(store: LedgerStore) -> None:
            final = with_exit_codes(whole, site.status([sub])[sub.key])
            store.finish_round(sub.key, final, decision=decision, usage=usage)

        _write(f"end of {sub.key}", write)

    def decided(self, key: str, action: str, reason: str, ratio: float) -> None:
        """A failure-policy decision of this round (rescue, review, abort, exhausted)."""
        rec = DecisionRecord(dag_id=self.dag_id, run_id=self.run_id, task_id=self.task_id, round_key=key,
                             kind="failure-policy", action=action, reason=reason, inputs={"failure_ratio": ratio})
        _write(f"decision on {key}", lambda s: s.record_decision(rec))


    def sized(self, key: str, reason: str, inputs: dict[str, Any]) -> None:
        """The next round's requests from this round's measured usage (``sizing.SizingDecision``)."""
        rec = DecisionRecord(dag_id=self.dag_id, run_id=self.run_id, task_id=self.task_id, round_key=key,
                             kind="sizing", action="right-size", reason=reason, inputs=inputs)
        _write(f"right-sizing of {key}", lambda s: s.record_decision(rec))


def ledger_for_task(context: Any, site_conn_id: str) -> RoundLedger:
    return RoundLedger(context, site_conn_id)


def observe_round(key: str, status: RoundStatus) -> None:
    """A poll's observation of round ``key`` (the trigger calls this when the counts change;
    from a thread: it is blocking I/O)."""
    _write(f"progress of {key}", lambda s: s.observe(key, status))


def _finite(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def replan_inputs(results: list[dict[str, Any]], failed: int, total: int) -> dict[str, Any]:
    """A replan decision's inputs: each partition's convergence metrics, and the failure
    ratio of the round's units (from the ledger's own unit rows)."""
    parts = [{k: _finite(r[k]) for k in REPLAN_INPUTS if k in r} for r in results]
    return {"failure_ratio": (failed / total) if total else None, "failed_units": failed, "units": total,
            "partitions": parts}


def record_replan(*, round_no: int, submit_task_id: str, results: list[dict[str, Any]],
                  next_partitions: list[dict[str, Any]], reason: str) -> None:
    """The campaign's replan after round ``round_no``: a ``replan`` decision with its inputs;
    when it stops the campaign, the campaign's status becomes ``finished``."""
    from airflow.sdk import get_current_context

    dag_id, run_id, task_id, _ = _ti_ids(get_current_context())
    action = "stop" if not next_partitions else f"continue ({len(next_partitions)} partition(s))"

    def write(store: LedgerStore) -> None:
        failed, total = store.failed_units(dag_id, run_id, submit_task_id)
        store.record_decision(DecisionRecord(
            dag_id=dag_id, run_id=run_id, task_id=task_id, kind="replan", action=action,
            reason=reason or f"after round {round_no}", inputs={"round": round_no,
                                                                 **replan_inputs(results, failed, total)}))
        if not next_partitions:
            store.set_campaign_status(dag_id, run_id, "finished", reason, finished=True)

    _write(f"replan after round {round_no}", write)


def record_campaign_failed(reason: str) -> None:
    """The campaign cannot go on (its replan refused): status ``failed`` with the reason."""
    from airflow.sdk import get_current_context

    dag_id, run_id, _, _ = _ti_ids(get_current_context())
    _write("campaign failure", lambda s: s.set_campaign_status(dag_id, run_id, "failed", reason, finished=True))


def record_decision(action: str, reason: str, *, actor: str, inputs: dict[str, Any] | None = None,
                    round_key: str | None = None, dag_id: str | None = None, run_id: str | None = None,
                    task_id: str | None = None) -> None:
    """Record a human choice (e.g. the HITL review's "rescue", "abort", "accept").

    Inside a task, the DAG run and task come from the current context; elsewhere pass
    ``dag_id`` and ``run_id``. ``actor`` is the person who chose (never ``batchsite``).
    ``inputs``: what they saw (failure ratio, the units they chose to rerun, ...). Like every
    ledger write, a failure is logged as a warning and does not raise."""
    if not actor or actor == BATCHSITE_ACTOR:
        raise ValueError(f"actor={actor!r}: name the person who chose (batchsite's own decisions are recorded "
                         "by the operator and the replan)")
    if dag_id is None or run_id is None:
        from airflow.sdk import get_current_context

        dag_id, run_id, task_id, _ = _ti_ids(get_current_context())
    rec = DecisionRecord(dag_id=dag_id, run_id=run_id, task_id=task_id, round_key=round_key, kind="human",
                         action=action, reason=reason, inputs=inputs, actor=actor)
    _write(f"human decision {action!r}", lambda s: s.record_decision(rec))
