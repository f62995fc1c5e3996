"""The campaign ledger's records: what one row of each table holds, as the stores read it back.

Both stores return the same records: SQLite gives timestamps and JSON as text, PostgreSQL as
``datetime`` and parsed JSON; the validators below take either. No I/O, no Airflow.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: who decided, when batchsite did (a human choice names the person)
BATCHSITE_ACTOR = "batchsite"
#: "sizing": the next round's requests from a round's measured usage (``batchsite.sizing``)
DecisionKind = Literal["replan", "failure-policy", "human", "sizing"]
#: what a replan decision keeps of each partition's collected results, in this order: its
#: place in the campaign and its convergence metrics (RG: L1 distance and noise; FASER: the
#: largest relative change of the constants, chi2/ndf)
REPLAN_INPUTS = ("step", "shift", "iteration", "repair", "done", "distance", "noise", "max_rel_change", "chi2_ndf",
                 "residual_to_truth", "z_mean", "z_std", "samples", "n_tracks", "missing")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _from_column(cls, value: Any, info) -> Any:
        """A JSON column read back as text (SQLite) is parsed; a naive timestamp is UTC."""
        annotation = str(cls.model_fields[info.field_name].annotation)
        if isinstance(value, str) and "dict" in annotation and value[:1] in "{[":
            return json.loads(value)
        if isinstance(value, datetime) and value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value


class CampaignRecord(Record):
    dag_id: str
    run_id: str
    site_conn_id: str | None = None
    params: dict[str, Any] | None = None
    status: str
    reason: str | None = None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None


class CampaignSummary(CampaignRecord):
    """A campaign with the totals ``campaigns list`` shows."""

    rounds: int = 0
    units: int = 0
    units_done: int = 0
    units_failed: int = 0
    decisions: int = 0


class RoundPlace(Record):
    """Where a round belongs: its campaign (DAG run), its task, and what it runs on."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    label: str
    site_conn_id: str
    scheduler: str
    n_units: int = Field(ge=0)


class RoundRecord(RoundPlace):
    round_key: str
    workdir: str
    status: str
    counts: dict[str, int] | None = None
    attempts: int
    decision: str | None = None
    fanin_state: str | None = None
    submitted_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None


class SubmissionRecord(Record):
    round_key: str
    attempt: int = Field(ge=0)
    fanout_id: str
    fanin_id: str | None = None
    schedd: str | None = None
    indices: str
    adopted: bool
    reason: str | None = None
    submitted_at: datetime


class UnitUsage(Record):
    """Measured usage of one unit; None where the scheduler reported nothing."""

    wall_seconds: float | None = None
    cpu_seconds: float | None = None
    max_rss_mb: float | None = None
    usage_source: str | None = None


class UnitRecord(UnitUsage):
    round_key: str
    unit_index: int
    state: str
    native: str | None = None
    exit_code: int | None = None
    reason: str | None = None
    timed_out: bool = False
    finished_at: datetime


class TransitionRecord(Record):
    id: int | None = None
    dag_id: str
    run_id: str
    round_key: str | None = None
    from_status: str | None = None
    to_status: str
    counts: dict[str, int] | None = None
    at: datetime


class DecisionRecord(Record):
    """A replan decision with its inputs (convergence metric, failure ratio), a failure-policy
    decision of a round (rescue, review, abort), a sizing decision (the measured usage it
    was made from) or a human choice."""

    id: int | None = None
    dag_id: str
    run_id: str
    task_id: str | None = None
    round_key: str | None = None
    kind: DecisionKind
    action: str = Field(min_length=1, max_length=200)
    reason: str = Field(max_length=10_000)
    inputs: dict[str, Any] | None = None
    actor: str = Field(default=BATCHSITE_ACTOR, min_length=1, max_length=200)
    decided_at: datetime = Field(default_factory=utcnow)


class CampaignView(Record):
    """Everything ``batchsite campaigns show`` prints about one campaign."""

    campaign: CampaignRecord
    rounds: list[RoundRecord]
    submissions: list[SubmissionRecord]
    units: list[UnitRecord]
    transitions: list[TransitionRecord]
    decisions: list[DecisionRecord]



class RoundRef(RoundPlace):
    """A round as the operator names it when it records a submission."""

    #: the DAG run's Params (written with the campaign row when it is created)
    params: dict[str, Any] | None = None
