"""What ``batchsite campaigns list`` and ``batchsite campaigns show`` print: plain-text tables
for a terminal (no dependency: the CLI runs where Airflow is not installed).

Every figure comes from the ledger's rows; "n/a" where the ledger has no value.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from batchsite.ledger.model import REPLAN_INPUTS, CampaignSummary, CampaignView, DecisionRecord, RoundRecord, UnitRecord

NA = "n/a"
#: longest reason / inputs text shown in one table cell
CELL = 90


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[int] = ()) -> str:
    """Columns aligned under ``headers`` (``right``: the column numbers aligned right)."""
    cells = [[NA if v is None else str(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if i in right else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths)))

    out = [line(headers), "  ".join("─" * w for w in widths), *(line(r) for r in cells)]
    return "\n".join(x.rstrip() for x in out)


def when(t: datetime | None) -> str | None:
    return None if t is None else t.strftime("%Y-%m-%d %H:%M:%S")


def clock(t: datetime | None) -> str | None:
    return None if t is None else t.strftime("%H:%M:%S")


def took(start: datetime | None, end: datetime | None) -> str | None:
    if start is None or end is None:
        return None
    s = max(0.0, (end - start).total_seconds())
    return f"{s:.1f} s" if s < 60 else f"{int(s // 60)}m{int(s % 60):02d}s"


def _short(text: str | None, n: int = CELL) -> str | None:
    if text is None:
        return None
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _num(v: float | None, unit: str, digits: int = 1) -> str | None:
    return None if v is None else f"{v:.{digits}f} {unit}"


def campaigns_table(rows: Sequence[CampaignSummary]) -> str:
    if not rows:
        return "no campaigns in the ledger yet"
    return table(
        ["DAG", "run", "site", "status", "rounds", "units", "done", "failed", "decisions", "started (UTC)", "took"],
        [[c.dag_id, c.run_id, c.site_conn_id, c.status, c.rounds, c.units, c.units_done, c.units_failed,
          c.decisions, when(c.created_at), took(c.created_at, c.finished_at)] for c in rows],
        right=(4, 5, 6, 7, 8))


def exit_codes(units: Sequence[UnitRecord]) -> str | None:
    """``0×31 3×1``: how many units ended with each exit code."""
    if not units:
        return None
    counts = Counter(NA if u.exit_code is None else u.exit_code for u in units)
    return " ".join(f"{code}×{n}" for code, n in sorted(counts.items(), key=lambda kv: str(kv[0])))


def _jobs(view: CampaignView, r: RoundRecord) -> str:
    ids = [s.fanout_id + (f"+{s.fanin_id}" if s.fanin_id else "") for s in view.submissions if s.round_key == r.round_key]
    return ", ".join(ids)


def _round_name(r: RoundRecord) -> str:
    return r.task_id if r.map_index < 0 else f"{r.task_id}[{r.map_index}]"


def _inputs(d: DecisionRecord) -> str | None:
    """A decision's inputs in a line: the failure ratio, then each partition's metrics."""
    if not d.inputs:
        return None
    parts = []
    ratio = d.inputs.get("failure_ratio")
    if "failure_ratio" in d.inputs:
        parts.append(f"failure ratio {NA if ratio is None else f'{ratio:.2f}'}")
    for p in d.inputs.get("partitions", []):
        shown = [k for k in REPLAN_INPUTS if p.get(k) is not None and k not in ("done", "missing")]
        parts.append(", ".join(f"{k} {f'{p[k]:.4g}' if isinstance(p[k], float) else p[k]}" for k in shown))
    rest = {k: v for k, v in d.inputs.items() if k not in ("failure_ratio", "partitions", "failed_units", "units",
                                                            "round")}
    parts += [f"{k} {v}" for k, v in rest.items()]
    return "; ".join(parts)


def campaign_text(view: CampaignView, *, units: bool = False, transitions: bool = False) -> str:
    c = view.campaign
    units_of: dict[str, list[UnitRecord]] = {}
    for u in view.units:
        units_of.setdefault(u.round_key, []).append(u)
    params = ", ".join(f"{k}={v}" for k, v in sorted((c.params or {}).items()) if v not in (None, [], {}))
    out = [
        f"Campaign {c.dag_id} / {c.run_id}",
        f"  status    {c.status}" + (f": {_short(c.reason, 200)}" if c.reason else ""),
        f"  site      {c.site_conn_id or NA}",
        f"  started   {when(c.created_at)} UTC; finished {when(c.finished_at) or NA}; took "
        f"{took(c.created_at, c.finished_at) or NA}",
        f"  params    {_short(params, 200) or NA}",
        "",
        f"Rounds ({len(view.rounds)})",
        table(["#", "round", "key", "jobs", "tries", "units", "done", "failed", "exit codes", "fan-in", "status",
               "decision", "submitted", "took"],
              [[i, _round_name(r), r.round_key, _jobs(view, r), r.attempts, r.n_units,
                (r.counts or {}).get("done", 0), (r.counts or {}).get("failed", 0), exit_codes(units_of.get(r.round_key, [])),
                r.fanin_state, r.status, r.decision, clock(r.submitted_at), took(r.submitted_at, r.finished_at)]
               for i, r in enumerate(view.rounds, 1)], right=(0, 4, 5, 6, 7)),
        "",
        f"Decisions ({len(view.decisions)})",
        table(["at", "kind", "action", "by", "reason", "inputs"],
              [[clock(d.decided_at), d.kind, d.action, d.actor, _short(d.reason), _short(_inputs(d))]
               for d in view.decisions]) if view.decisions else "  none",
    ]
    if units:
        index = {r.round_key: i for i, r in enumerate(view.rounds, 1)}
        out += ["", f"Units ({len(view.units)})",
                table(["#", "unit", "state", "exit", "native", "wall", "cpu", "max RSS", "usage from", "reason"],
                      [[index.get(u.round_key), u.unit_index, u.state, u.exit_code, u.native,
                        _num(u.wall_seconds, "s"), _num(u.cpu_seconds, "s"), _num(u.max_rss_mb, "MB"),
                        u.usage_source, _short(u.reason, 60)] for u in view.units], right=(0, 1, 3))]
    if transitions:
        index = {r.round_key: i for i, r in enumerate(view.rounds, 1)}
        out += ["", f"Transitions ({len(view.transitions)})",
                table(["at", "#", "from", "to", "counts"],
                      [[clock(t.at), index.get(t.round_key, "campaign"), t.from_status, t.to_status,
                        " ".join(f"{k} {v}" for k, v in (t.counts or {}).items()) or None]
                       for t in view.transitions], right=(1,))]
    return "\n".join(out)
