"""HTCondor backend, the reading half: what ``condor_q -json``, ``condor_history -json``,
DAGMan's node status file, its ``.metrics`` and ``.dagman.out`` say, turned into
``RoundStatus``; and submit.sh's and the find script's output turned into ``SubmitIds``.
Pure functions; ``htcondor.py`` renders the commands whose output this reads.

Witnesses, freshest first, for one DAG node:

1. the node's job in ``condor_q`` (idle / running / held, with HoldReason);
2. the node status file (DAGMan's own view, rewritten every few seconds; final when
   ``NextUpdate = 0``): READY, SUBMITTED, DONE, ERROR (retries exhausted), FUTILE;
3. the node's job in ``condor_history`` (RemoveReason of a job killed at its time limit);
4. the exit file the unit script wrote.

A failing ``condor_q`` (schedd down, no Kerberos ticket) never turns into FAILED or
VANISHED: what only the queue could tell becomes UNKNOWN, ``scheduler_ok`` is False and the
note says why (with a Kerberos/AFS hint when the error text is a known one).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from batchsite.backends import common
from batchsite.backends.base import SubmitIds
from batchsite.measure import OUT_OF_MEMORY, RoundUsage, UnitMeasure
from batchsite.model import JobState, RoundStatus, Submission, TaskStatus

FANIN_NODE = "fanin"

#: NodeStatus codes of the node status file (src/condor_dagman/node.h)
NODE_STATUS = {0: "STATUS_NOT_READY", 1: "STATUS_READY", 2: "STATUS_PRERUN", 3: "STATUS_SUBMITTED",
               4: "STATUS_POSTRUN", 5: "STATUS_DONE", 6: "STATUS_ERROR", 7: "STATUS_FUTILE"}
#: JobStatus of a job ad
JOB_STATUS = {1: "Idle", 2: "Running", 3: "Removed", 4: "Completed", 5: "Held",
              6: "TransferringOutput", 7: "Suspended"}
#: DAG_Status (job ad) / DagStatus (metrics)
DAG_STATUS = {0: "ok", 1: "error", 2: "node failed", 3: "aborted", 4: "removed", 5: "cycle", 6: "halted"}
#: HoldReasonCode: JobDurationExceeded (allowed_job_duration), JobExecuteExceeded
TIME_LIMIT_HOLD_CODES = {46, 47}
#: RemoveReason / HoldReason texts of a job stopped at its run-time limit:
#: lxplus "Job removed by SYSTEM_PERIODIC_REMOVE due to wall time exceeded allowed max.",
#: the test pool "Job exceeded its MaxRuntime of 60 seconds"
TIME_LIMIT = re.compile(
    r"wall ?time|MaxRuntime|JobDurationExceeded|JobExecuteExceeded|allowed_(job|execute)_duration"
    r"|run ?time (limit|exceeded)|exceeded (its |the )?(maximum |max )?(run ?time|duration|wall)",
    re.I,
)
_NODE_FAILED = re.compile(r"failed with (status|signal) (-?\d+)")


def schedd_section(schedd: str | None, default: str | None = None) -> str:
    """The schedd a round is asked on: its record's, else ``default`` (the connection's
    ``schedd``), else "-" (the login node's default schedd)."""
    return schedd or default or "-"


# ---------------------------------------------------------------------------- sections

_SUBMIT_LINE = re.compile(r"^dagman=(\d+) schedd=(\S*)(?: fanin=(\S+))?\s*$", re.M)
_CLUSTER = re.compile(r"submitted to cluster (\d+)\.")


def parse_submit(stdout: str) -> SubmitIds:
    """submit.sh's ``dagman=<cluster> schedd=<name>[ fanin=fanin]``, else condor_submit's own line."""
    found = _SUBMIT_LINE.findall(stdout or "")
    if found:
        cluster, schedd, fanin = found[-1]
        return SubmitIds(fanout_id=cluster, fanin_id=fanin or None, schedd=schedd or None)
    m = _CLUSTER.findall(stdout or "")
    if m:
        return SubmitIds(fanout_id=m[-1])
    raise ValueError(f"no DAGMan cluster id in the output of submit.sh: {stdout!r}")


def parse_json_ads(text: str) -> list[dict] | None:
    """``condor_q -json`` (empty when nothing matches) / ``condor_history -json``
    (``[\\n]`` when nothing matches). None when the text is not a JSON list (truncated)."""
    text = text.strip()
    if not text:
        return []
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, list) or not all(isinstance(a, dict) for a in data):
        return None
    return data


# ---------------------------------------------------------------------------- node status file

@dataclass
class NodeStatusFile:
    dag: dict
    nodes: dict[str, dict]
    end: dict

    @property
    def final(self) -> bool:
        """DAGMan's last dump (exit, removal, hold): ``NextUpdate = 0; /* "none" */``."""
        return self.end.get("NextUpdate") == 0


#: the tokens of a node status file, one regex pass (in C) over the whole text: an ad's
#: ``[`` and ``]``, ``Name = "string";``, ``Name = {`` (a list, its strings on the next
#: lines up to ``}``), a list item, ``Name = value;`` (number, boolean, expression)
_TOKENS = re.compile(
    r'(?:^|(?<=;))[ \t]*(?:(\[)|(\])|([A-Za-z_]\w*) = (?:"((?:[^"\\\n]|\\.)*)";|(\{)[ \t]*$|([^;"{\n]+);)'
    r'|"((?:[^"\\\n]|\\.)*)",?[ \t]*$|(\});?)',
    re.M,
)
_ESCAPE = re.compile(r"\\(.)")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'", "b": "\b", "f": "\f"}


def _unescape(text: str) -> str:
    return _ESCAPE.sub(lambda e: _ESCAPES.get(e.group(1), e.group(1)), text) if "\\" in text else text


def _plain_value(text: str) -> object | None:
    """A number or a boolean; None for an expression (never used here)."""
    value = text.strip()
    if value.isdigit():
        return int(value)
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return None


def parse_node_status_ads(text: str) -> list[dict] | None:
    """The ads of a node status file, in one pass: strings, numbers, booleans and string
    lists (classad2.parseAds on the whole file costs O(N^2): 12-14 s for 50,000 nodes).
    DAGMan writes each ad as a ``[`` ... ``]`` block with one ``Name = value;`` per line
    (src/condor_dagman/dag.cpp, ``Dag::DumpNodeStatus``); several attributes on one line
    (``A = 1; B = "x";``) are read too. None when the text is not
    complete (DAGMan rewrites it in place): a block or a list never closed."""
    ads: list[dict] = []
    current: dict | None = None
    open_list: list | None = None
    for opening, closing, name, string, brace, plain, item, list_end in _TOKENS.findall(text):
        if open_list is not None:
            if list_end:
                open_list = None
            elif opening or closing or name:
                return None  # a list never closed
            else:
                open_list.append(_unescape(item))
            continue
        if opening:
            if current is not None:
                return None
            current = {}
        elif closing:
            if current is None:
                return None
            ads.append(current)
            current = None
        elif current is None or not name:
            continue
        elif brace:
            current[name] = open_list = []
        elif plain:
            value = int(plain) if plain.isdigit() else _plain_value(plain)
            if value is not None:
                current[name] = value
        else:
            current[name] = _unescape(string)
    return None if current is not None or open_list is not None else ads


def parse_node_status(text: str | None) -> NodeStatusFile | None:
    """The NODE_STATUS_FILE (New ClassAd syntax, with comments). None when absent, empty,
    or not complete: DAGMan rewrites it in place, so the last ad must be the
    ``StatusEnd`` one."""
    if not text or not text.strip():
        return None
    ads = parse_node_status_ads(text)
    if not ads or ads[-1].get("Type") != "StatusEnd":
        return None
    dag = next((a for a in ads if a.get("Type") == "DagStatus"), {})
    nodes = {a["Node"]: a for a in ads if a.get("Type") == "NodeStatus" and isinstance(a.get("Node"), str)}
    return NodeStatusFile(dag=dag, nodes=nodes, end=ads[-1])


def parse_metrics(text: str | None, cluster: str) -> dict | None:
    """``<dag>.metrics`` (JSON, written once at DAGMan exit), if it is this DAGMan's."""
    if not text or not text.strip():
        return None
    try:
        m = json.loads(text)
    except ValueError:
        return None
    if not isinstance(m, dict) or str(m.get("dagman_id", "")) != str(cluster):
        return None
    return m


@dataclass
class DagmanRun:
    """The last run recorded in ``.dagman.out`` (the lines after its last STARTING UP)."""

    started: bool = False
    exit_status: int | None = None
    rescue_written: str | None = None
    rescue_used: str | None = None
    dag_status: str | None = None
    lines: list[str] = field(default_factory=list)


_EXIT_LINE = re.compile(r"\(condor_DAGMAN\) pid (\d+) EXITING WITH STATUS (-?\d+)")


def parse_dagman_out(text: str | None) -> DagmanRun:
    lines = (text or "").splitlines()
    start = max((i for i, ln in enumerate(lines) if "STARTING UP" in ln), default=None)
    run = DagmanRun(started=start is not None, lines=lines[start:] if start is not None else lines)
    for ln in run.lines:
        if m := _EXIT_LINE.search(ln):
            run.exit_status = int(m.group(2))
        elif m := re.search(r"Writing Rescue DAG to (\S+?)\.\.\.", ln):
            run.rescue_written = m.group(1)
        elif m := re.search(r"USING RESCUE DAG (\S+)", ln):
            run.rescue_used = m.group(1)
        elif m := re.search(r"DAG status: (\d+ \(\w+\))", ln):
            run.dag_status = m.group(1)
    return run


# ---------------------------------------------------------------------------- one node

def is_time_limit(ad: dict | None) -> bool:
    """Stopped at its run-time limit: hold code 46/47, or a Hold/RemoveReason that says so
    (but not a job removed because it stayed held too long)."""
    if not ad:
        return False
    if ad.get("HoldReasonCode") in TIME_LIMIT_HOLD_CODES or ad.get("LastHoldReasonCode") in TIME_LIMIT_HOLD_CODES:
        return True
    if ad.get("JobStatus") == 3 and ad.get("LastJobStatus") == 5:
        return False
    return any(TIME_LIMIT.search(str(ad.get(k) or "")) for k in ("HoldReason", "RemoveReason"))


def queue_job_status(ad: dict | None) -> TaskStatus | None:
    """A node job still in ``condor_q``; None when it says nothing useful (completed or
    being removed: the node status file and the history decide)."""
    if not ad:
        return None
    st = ad.get("JobStatus")
    native = f"JobStatus={st}"
    if st == 1:
        return TaskStatus(state=JobState.WAITING, native=native, reason="idle")
    if st in (2, 6):
        return TaskStatus(state=JobState.RUNNING, native=native)
    if st == 7:
        return TaskStatus(state=JobState.RUNNING, native=native, reason="suspended")
    if st == 5:
        reason = str(ad.get("HoldReason") or "held")
        code = ad.get("HoldReasonCode")
        if code is not None:
            reason += f" (HoldReasonCode {code}"
            sub = ad.get("HoldReasonSubCode")
            reason += f", SubCode {sub})" if sub else ")"
        return TaskStatus(state=JobState.HELD, native=native, reason=reason, timed_out=is_time_limit(ad))
    return None


def history_job_status(ad: dict | None) -> TaskStatus | None:
    """A node job in ``condor_history``: Completed (4, with ExitCode) or Removed (3)."""
    if not ad:
        return None
    st = ad.get("JobStatus")
    native = f"JobStatus={st}"
    if st == 4:
        if ad.get("ExitBySignal"):
            sig = ad.get("ExitSignal")
            return TaskStatus(state=JobState.FAILED, native=native,
                              exit_code=128 + sig if isinstance(sig, int) else None, reason=f"signal {sig}")
        rc = ad.get("ExitCode")
        if rc == 0:
            return TaskStatus(state=JobState.DONE, native=native, exit_code=0)
        return TaskStatus(state=JobState.FAILED, native=native, exit_code=rc if isinstance(rc, int) else None)
    if st == 3:
        return TaskStatus(state=JobState.FAILED, native=OUT_OF_MEMORY if is_out_of_memory(ad) else native,
                          reason=str(ad.get("RemoveReason") or "removed"), timed_out=is_time_limit(ad))
    return None


_NODE_DONE = TaskStatus(state=JobState.DONE, native=NODE_STATUS[5], exit_code=0)


def node_file_status(node: dict, job: dict | None = None) -> TaskStatus:
    """One ``NodeStatus`` ad of the node status file (``job``: the node's latest job ad,
    from the queue or the history, for hold and removal reasons)."""
    code = node.get("NodeStatus")
    native = NODE_STATUS.get(code, f"NodeStatus={code}")
    details = str(node.get("StatusDetails") or "")
    retries = node.get("RetryCount") or 0
    if code in (0, 1, 2):
        reason = {0: "waiting for its parents", 1: "ready (throttled or waiting to be submitted)",
                  2: "PRE script running"}[code]
        if retries:
            reason += f"; retry {retries}"
        return TaskStatus(state=JobState.WAITING, native=native, reason=reason)
    if code == 3:
        if (node.get("JobProcsHeld") or 0) > 0:
            reason = str((job or {}).get("HoldReason") or "held")
            return TaskStatus(state=JobState.HELD, native=native, reason=reason,
                              timed_out=is_time_limit(job if (job or {}).get("JobStatus") == 5 else None))
        if details == "idle":
            return TaskStatus(state=JobState.WAITING, native=native, reason="idle")
        return TaskStatus(state=JobState.RUNNING, native=native)
    if code == 4:
        return TaskStatus(state=JobState.RUNNING, native=native, reason="POST script running")
    if code == 5:
        return _NODE_DONE  # one shared (immutable) object: most nodes of a big DAG end here
    if code == 6:
        exit_code = None
        if m := _NODE_FAILED.search(details):
            n = int(m.group(2))
            exit_code = n if m.group(1) == "status" else 128 + n
        reason = details
        timed_out = False
        if job is not None and job.get("JobStatus") == 3:
            # removed (time limit, condor_rm, the DAG removed): the job's RemoveReason says which
            reason = f"{details}: {job.get('RemoveReason')}" if details else str(job.get("RemoveReason"))
            timed_out = is_time_limit(job)
            # removed for its memory use: the rescue asks for more (rounds.out_of_memory)
            native = OUT_OF_MEMORY if is_out_of_memory(job) else native
        return TaskStatus(state=JobState.FAILED, native=native, exit_code=exit_code, reason=reason,
                          timed_out=timed_out)
    if code == 7:
        return TaskStatus(state=JobState.FAILED, native=native, reason="ancestor failed")
    return TaskStatus(state=JobState.UNKNOWN, native=native, reason=f"unknown NodeStatus {code!r}")


# ---------------------------------------------------------------------------- one round

@dataclass
class _Schedd:
    q_ok: bool
    q_ads: list[dict]
    h_ads: list[dict]
    error: str = ""
    error_full: str = ""


def _schedd_views(sections: dict[tuple[str, str], str], names: Iterable[str]) -> dict[str, _Schedd]:
    out: dict[str, _Schedd] = {}
    for name in names:
        qc = common.parse_run_section(sections.get(("condor_q", name)))
        q_ads = parse_json_ads(qc.stdout) if qc.ok else None
        error = ""
        if not qc.ok:
            error = f"condor_q failed: {qc.error_text()}"
        elif q_ads is None:
            error = "condor_q printed something that is not JSON (truncated output?)"
        hc = common.parse_run_section(sections.get(("condor_history", name)))
        h_ads = parse_json_ads(hc.stdout) if hc.ok else None
        out[name] = _Schedd(q_ok=q_ads is not None, q_ads=q_ads or [], h_ads=h_ads or [], error=error,
                            error_full="\n".join(qc.err_lines))
    return out


def _latest_by_node(ads: Iterable[dict], cluster: int) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for a in ads:
        if a.get("DAGManJobId") != cluster or not isinstance(a.get("DAGNodeName"), str):
            continue
        name = a["DAGNodeName"]
        if name not in out or (a.get("ClusterId") or 0) > (out[name].get("ClusterId") or 0):
            out[name] = a
    return out


def _dag_ad(ads: Iterable[dict], cluster: int) -> dict | None:
    return next((a for a in ads if a.get("ClusterId") == cluster and a.get("DAGManJobId") is None), None)


def parse_node_map(text: str | None) -> dict[int, str]:
    out: dict[int, str] = {}
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit():
            out[int(parts[0])] = parts[1]
    return out


class _DagObservation:
    """Everything observed about one DAG; ``status(node, exit_rc)`` decides one node."""

    def __init__(self, sub: Submission, view: _Schedd, sections: dict[tuple[str, str], str]):
        self.sub = sub
        self.view = view
        cluster = int(sub.fanout_id)
        self.dag_q = _dag_ad(view.q_ads, cluster) if view.q_ok else None
        self.dag_h = _dag_ad(view.h_ads, cluster)
        self.node_q = _latest_by_node(view.q_ads, cluster)
        self.node_h = _latest_by_node(view.h_ads, cluster)
        self.nsf = parse_node_status(common.parse_run_section(sections.get(("nodes", sub.key))).stdout
                                     if ("nodes", sub.key) in sections else None)
        self.metrics = parse_metrics(sections.get(("metrics", sub.key)), sub.fanout_id)
        self.run = parse_dagman_out(sections.get(("dagman", sub.key)))
        dq_status = (self.dag_q or {}).get("JobStatus")
        self.alive = view.q_ok and dq_status in (1, 2, 5, 7)
        self.held = view.q_ok and dq_status == 5
        self.gone = view.q_ok and not self.alive
        self.end_reason = self._end_reason()

    def _end_reason(self) -> str:
        """Why the DAG is over (for nodes it never finished), '' while it runs."""
        if not self.gone:
            return ""
        h = self.dag_h or {}
        if h.get("JobStatus") == 3 or (self.metrics or {}).get("DagStatus") == 4:
            return f"DAG removed: {h.get('RemoveReason') or 'condor_rm'}"
        code = (self.metrics or {}).get("exitcode", h.get("ExitCode"))
        if code is not None:
            return f"DAGMan exited {code}"
        return "DAGMan left the queue"

    def note(self) -> str:
        c = self.sub.fanout_id
        if not self.view.q_ok:
            msg = f"schedd not answering ({self.view.error})"
            hint = diagnose_credentials(self.view.error_full or self.view.error)
            return f"{msg}; {hint}" if hint else msg
        parts = []
        if self.alive:
            dq = self.dag_q or {}
            st = dq.get("JobStatus")
            txt = f"DAGMan {c} {JOB_STATUS.get(st, st).lower()}"
            if st == 5:
                txt += f" ({dq.get('HoldReason') or 'no HoldReason'}): its running nodes go on, nothing new starts"
            elif st == 1 and dq.get("LastJobStatus") == 5:
                txt += " (released; restarts in recovery mode)"
            if dq.get("DAG_InRecovery"):
                txt += ", in recovery"
            parts.append(txt)
            if self.nsf is None:
                parts.append("no node status file yet")
        else:
            m, h = self.metrics or {}, self.dag_h or {}
            code = m.get("exitcode", h.get("ExitCode"))
            ds = m.get("DagStatus", h.get("DAG_Status"))
            if h.get("JobStatus") == 3 or ds == 4:
                parts.append(f"DAGMan {c} removed ({h.get('RemoveReason') or 'condor_rm'})")
            elif code is not None:
                txt = f"DAGMan {c} exited {code}"
                if ds is not None:
                    txt += f" (DAG status {ds}: {DAG_STATUS.get(ds, '?')})"
                parts.append(txt)
            else:
                parts.append(f"DAGMan {c} is not in the queue (no metrics, no history record yet)")
            if self.run.rescue_written:
                parts.append(f"rescue DAG {self.run.rescue_written}")
        return "; ".join(parts)

    def status(self, node: str, exit_rc: int | None) -> TaskStatus:
        qa = self.node_q.get(node)
        qs = queue_job_status(qa)
        if qs is not None:
            return qs
        job = qa or self.node_h.get(node)
        ns = self.nsf.nodes.get(node) if self.nsf else None
        if not self.view.q_ok:
            return self._without_queue(ns, job, exit_rc)
        queue: TaskStatus | None = None
        acct: TaskStatus | None = None
        if ns is not None:
            st = node_file_status(ns, job)
            if st.state.terminal:
                acct = st
                if st.state is JobState.FAILED and st.exit_code is None and exit_rc == 0 \
                        and st.reason.startswith("Was STATUS_"):
                    # the payload finished; the DAG ended before DAGMan saw it
                    return common.status_from_exit(0)
            elif self.gone:
                if exit_rc is not None:
                    return common.status_from_exit(exit_rc)
                return TaskStatus(state=JobState.FAILED, native=st.native, reason=self.end_reason)
            elif qa is None and exit_rc is not None and ns.get("NodeStatus") in (3, 4):
                # the file says submitted but the job left the queue and wrote its exit
                # code: the file is stale (DAGMan held, restarting, or between updates)
                if exit_rc == 0:
                    return common.status_from_exit(0)
                queue = TaskStatus(state=JobState.WAITING, native=st.native,
                                   reason=f"attempt exited {exit_rc}; DAGMan decides about a retry")
            else:
                queue = st
        elif self.alive:
            queue = TaskStatus(state=JobState.WAITING, native="DAGMan",
                               reason="not in the node status file yet")
        elif self.gone:
            acct = history_job_status(self.node_h.get(node))
        if queue is not None and self.held and queue.state is JobState.WAITING:
            reason = (self.dag_q or {}).get("HoldReason") or "held"
            queue = TaskStatus(state=JobState.HELD, native=queue.native, reason=f"DAGMan job held: {reason}")
        if queue is not None and exit_rc is not None and exit_rc != 0 and queue.state is JobState.WAITING \
                and not queue.reason:
            queue = queue.model_copy(update={"reason": f"last attempt exited {exit_rc}"})
        return common.merge_observation(queue, acct, exit_rc)

    def _without_queue(self, ns: dict | None, job: dict | None, exit_rc: int | None) -> TaskStatus:
        """condor_q failed: only DAGMan's final decisions and exit code 0 are facts."""
        if ns is not None:
            st = node_file_status(ns, job)
            if st.state.terminal:
                return common.merge_observation(None, st, exit_rc)
        if exit_rc == 0:
            return common.status_from_exit(0)
        return TaskStatus(state=JobState.UNKNOWN, native="unobserved", reason="schedd not answering")


def parse_status(text: str, subs: Sequence[Submission], default_schedd: str | None = None) -> dict[str, RoundStatus]:
    sections = common.split_sections(text or "")
    views = _schedd_views(sections, {schedd_section(s.schedd, default_schedd) for s in subs})
    out: dict[str, RoundStatus] = {}
    for s in subs:
        view = views[schedd_section(s.schedd, default_schedd)]
        r = _DagObservation(s, view, sections)
        exits = common.parse_exit_files(sections.get(("exit", s.key), ""))
        names = parse_node_map(sections.get(("map", s.key)))
        units = {i: r.status(names.get(i, f"unit{i}"), exits.get(str(i))) for i in s.indices}
        fanin = None
        if s.fanin_id or (r.nsf is not None and FANIN_NODE in r.nsf.nodes):
            fanin = r.status(FANIN_NODE, exits.get(common.FANIN))
        out[s.key] = RoundStatus(key=s.key, units=units, fanin=fanin, scheduler_ok=view.q_ok, note=r.note())
    return out


# ---------------------------------------------------------------------------- find / probe

def _job_lines(section: common.RunSection) -> list[tuple[str, str | None]]:
    """``ClusterId GlobalJobId`` lines -> (cluster, schedd name from the GlobalJobId)."""
    out = []
    for line in section.lines:
        parts = line.split()
        if parts and parts[0].isdigit():
            schedd = parts[1].split("#", 1)[0] if len(parts) > 1 and "#" in parts[1] else None
            out.append((parts[0], schedd))
    return out


def parse_find_by_batch_name(text: str, key: str, has_fanin: bool = False) -> SubmitIds | None:
    """``SubmitIds`` of the DAGMan job named ``key`` (``htcondor_find.sh``'s output), queued
    or already in the history; None when it was definitely not submitted. DAGMan jobs of
    earlier records (``record`` sections: the attempts a rescue set aside) do not count.

    Raises ValueError, so that the caller never submits on a guess, when condor_q or
    condor_history failed ("none" is never "could not look"), when more than one DAGMan job
    carries the name, and when none is found but DAGMan's log in the round's directory
    records a run that no record names (``Workflow batch-id``: it went to another schedd,
    or the history no longer has it)."""
    sections = common.split_sections(text or "")
    earlier: list[SubmitIds] = common.earlier_submissions(text, parse_submit)
    old_clusters = {ids.fanout_id for ids in earlier}
    found: dict[str, str | None] = {}
    for name, tool in (("find", "condor_q"), ("findhist", "condor_history")):
        cmd = common.parse_run_section(sections.get((name, key)))
        if not cmd.ok:
            msg = f"could not look up DAGMan jobs named {key} ({tool}): {cmd.error_text()}"
            hint = diagnose_credentials("\n".join(cmd.err_lines))
            raise ValueError(f"{msg}; {hint}" if hint else msg)
        for cluster, schedd in _job_lines(cmd):
            # an earlier attempt's DAG: the same cluster on the same schedd (or a side that does not say)
            if not any(ids.schedd in (schedd, None) or schedd is None for ids in earlier if ids.fanout_id == cluster):
                found.setdefault(cluster, schedd)
    if len(found) > 1:
        raise ValueError(f"more than one DAGMan job carries the batch name {key}: {sorted(found, key=int)}")
    if found:
        ((cluster, schedd),) = found.items()
        return SubmitIds(fanout_id=cluster, fanin_id=FANIN_NODE if has_fanin else None, schedd=schedd)
    files = sections.get(("files", key), "").split()
    if "dagman-out" in files:
        runs = [files[i + 1] for i, word in enumerate(files[:-1]) if word == "batch-id"]
        unrecorded = sorted(set(runs) - old_clusters, key=int) if runs else []
        # without batch-id lines (older DAGMan): more starts than records is a run no record names
        if unrecorded or (not runs and files.count("start") > len(earlier)):
            which = f"DAGMan job {', '.join(unrecorded)}" if unrecorded else "a DAGMan job"
            raise ValueError(
                f"{which} ran in the round's directory ({key}.dag.dagman.out), no submission record names it, "
                f"and no DAGMan job named {key} is in the queue or the history of the schedd asked: it went to "
                f"another schedd (set the site connection's `schedd` extra to the schedd the round's DAGs go to) "
                f"or the history no longer has it. Find it with condor_history -name <schedd> -constraint "
                f"'JobBatchName == \"{key}\"'; nothing is submitted again")
    return None


def parse_probe(text: str) -> tuple[str | None, bool | None]:
    """(condor version, Kerberos ticket valid: True/False/None when klist is absent)."""
    sections = common.split_sections(text or "")
    v = common.parse_run_section(sections.get(("version", "-")))
    m = re.search(r"\$CondorVersion: (\S+)", v.stdout)
    k = common.parse_run_section(sections.get(("klist", "-")))
    krb = None if (not k.present or k.skipped) else k.rc == 0
    return (m.group(1) if m else None), krb


# ---------------------------------------------------------------------------- credentials

#: what the tools print when the schedd asked for cannot be located (captured:
#: condor_q_no_such_schedd.txt, condor_q_unknown_schedd_host.txt, condor_history_no_such_schedd.txt)
SCHEDD_NOT_LOCATED = re.compile(
    r"Can't find address (of|for) (local )?schedd|Extra Info: You probably saw this error because "
    r"the condor_schedd is not|Collector has no record of schedd|Unable to locate remote schedd|"
    r"Could not find the local condor_schedd", re.I)

_KERBEROS_HINT = (
    "no valid Kerberos ticket: lxplus tickets last 25 h; renew with `kinit -kt <keytab> <user>@CERN.CH` "
    "in the site's env_script (and `aklog` for the AFS token)"
)
#: (pattern, message) in the order they are tried; texts the HTCondor tools and the
#: Kerberos/AFS clients print (sources in tests/data/htcondor/README.md)
CREDENTIAL_ERRORS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"AUTHENTICATE:1004:Failed to authenticate using KERBEROS|KERBEROS:\d+:", re.I), _KERBEROS_HINT),
    (re.compile(r"No Kerberos credentials available|No credentials cache found|"
                r"Credentials cache file '[^']*' not found|krb5_cc_get_principal|Ticket expired|"
                r"ticket has expired|kinit: .*(expired|Preauthentication failed)", re.I), _KERBEROS_HINT),
    (re.compile(r"store_cred of Kerberos credential failed|credmon did not process credentials", re.I),
     "the schedd could not store the Kerberos credential (credmon timeout): this happens to the first "
     "submissions of a session on lxplus; submit again. If it persists, renew the ticket with "
     "`kinit -kt <keytab> <user>@CERN.CH` in the site's env_script"),
    (re.compile(r"aklog: .*(Couldn't get|unable to obtain|while getting AFS tickets)|"
                r"/afs/\S+: Permission denied|Permission denied.*?/afs/|no tokens|AFS token", re.I),
     "no AFS token (or it expired): run `kinit -kt <keytab> <user>@CERN.CH && aklog` in the site's "
     "env_script; lxplus tickets last 25 h"),
    (re.compile(r"AUTHENTICATE:1003:Failed to authenticate with any method", re.I),
     "authentication with the schedd failed: on lxplus this means no valid Kerberos ticket "
     "(tickets last 25 h; renew with `kinit -kt <keytab> <user>@CERN.CH` in the site's env_script)"),
    (SCHEDD_NOT_LOCATED,
     "the schedd could not be located: on lxplus this usually means an expired Kerberos ticket "
     "(tickets last 25 h; renew with `kinit -kt <keytab> <user>@CERN.CH` in the site's env_script), "
     "otherwise the schedd recorded for the round is down"),
    (re.compile(r"Couldn't contact the condor_collector", re.I),
     "the pool's collector (central manager) is not answering: usually transient; if it persists "
     "check the Kerberos ticket (`klist`; lxplus tickets last 25 h, renew with `kinit -kt` in the "
     "site's env_script)"),
    (re.compile(r"SECMAN:2007", re.I),
     "the schedd is overloaded or restarting (SECMAN:2007): transient, no action needed; the next "
     "poll asks again"),
]


def diagnose_configured_schedd(text: str, schedd: str) -> str | None:
    """The hint for a schedd that cannot be located while the site connection names one
    (its ``schedd`` extra), or None when ``text`` is not that error."""
    if not SCHEDD_NOT_LOCATED.search(text or ""):
        return None
    return (f"the schedd {schedd!r} named by the site connection's `schedd` extra could not be located: check the "
            "name (`condor_status -schedd -af Name` lists the pool's schedds) or remove the extra to use the login "
            "node's default schedd; on lxplus an expired Kerberos ticket gives the same error (tickets last 25 h; "
            "renew with `kinit -kt <keytab> <user>@CERN.CH` in the site's env_script)")


def diagnose_credentials(text: str) -> str | None:
    """A clear message when ``text`` (a tool's stderr) is a known Kerberos / AFS / schedd
    error, else None. These texts cannot be produced on the test pool (FS authentication,
    no Kerberos, no AFS); the tests use the texts quoted in the README of the fixtures."""
    for pat, msg in CREDENTIAL_ERRORS:
        if pat.search(text or ""):
            return msg
    return None


# ---------------------------------------------------------------------------- measured usage

#: what ``htcondor.usage_command`` prints per node job (``-af:t``: tab-separated, in this order;
#: RemoveReason last, it has spaces). ResidentSetSize_RAW: the schedd rounds ResidentSetSize
#: (627432 KB measured became 750000), the raw one is the measurement
USAGE_ATTRIBUTES = ("ClusterId", "BatchsiteIndex", "JobStatus", "ExitBySignal", "ExitSignal", "ResidentSetSize_RAW",
                    "ResidentSetSize", "RemoteWallClockTime", "RemoteUserCpu", "RemoteSysCpu", "RequestMemory",
                    "MaxRuntime", "RequestCpus", "LastRemoteHost", "LastHoldReasonCode", "RemoveReason")
#: HoldReasonCode JobOutOfResources: the startd's cgroup killed the job for its memory (lxplus)
OUT_OF_RESOURCES_HOLD_CODE = 34
#: the RemoveReason of batchsite's own ``periodic_remove`` on memory (``htcondor.MEMORY_REMOVE``),
#: and the texts of memory holds: "Job has gone over cgroup memory limit of 2048 megabytes"
MEMORY_EXCEEDED = re.compile(r"MemoryUsage > RequestMemory|memory limit|memory usage exceeded", re.I)


def is_out_of_memory(ad: dict | None) -> bool:
    """Removed or held for its memory use: hold code 34, or a Hold/RemoveReason that says so."""
    if not ad:
        return False
    if OUT_OF_RESOURCES_HOLD_CODE in (ad.get("HoldReasonCode"), ad.get("LastHoldReasonCode")):
        return True
    return any(MEMORY_EXCEEDED.search(str(ad.get(k) or "")) for k in ("HoldReason", "RemoveReason"))


def _value(text: str) -> float | None:
    return float(text) if re.fullmatch(r"-?\d+(?:\.\d+)?", text) else None


def parse_usage(text: str) -> RoundUsage:
    """``condor_history -constraint 'DAGManJobId == <dag>' -af:t USAGE_ATTRIBUTES`` -> the
    measured usage per unit (``BatchsiteIndex``; -1 is the fan-in). A node run more than once
    (DAGMan retries) is measured by its newest job (highest ClusterId)."""
    newest: dict[int, tuple[int, UnitMeasure]] = {}
    for line in (text or "").splitlines():
        parts = line.split("\t")
        if len(parts) < len(USAGE_ATTRIBUTES) or not parts[0].isdigit() or _value(parts[1]) is None:
            continue
        ad = dict(zip(USAGE_ATTRIBUTES, parts))
        cluster, index = int(parts[0]), int(parts[1])
        rss_kb = _value(ad["ResidentSetSize_RAW"]) or _value(ad["ResidentSetSize"])
        user, system = _value(ad["RemoteUserCpu"]), _value(ad["RemoteSysCpu"])
        req, limit, cpus = _value(ad["RequestMemory"]), _value(ad["MaxRuntime"]), _value(ad["RequestCpus"])
        host = ad["LastRemoteHost"].rpartition("@")[2] if ad["LastRemoteHost"] != "undefined" else None
        code = _value(ad["LastHoldReasonCode"])
        oom = is_out_of_memory({"LastHoldReasonCode": int(code) if code is not None else None,
                                "RemoveReason": ad["RemoveReason"]})
        status = _value(ad["JobStatus"])
        measure = UnitMeasure(
            state=OUT_OF_MEMORY if oom else JOB_STATUS.get(int(status) if status is not None else -1, "unknown"),
            wall_seconds=_value(ad["RemoteWallClockTime"]),
            cpu_seconds=(user or 0.0) + (system or 0.0) if user is not None or system is not None else None,
            max_rss_mb=rss_kb / 1024 if rss_kb else None, req_mem_mb=int(req) if req else None,
            time_limit_seconds=limit, cpus=int(cpus) if cpus else None, host=host or None, out_of_memory=oom,
            source="condor_history")
        if index not in newest or cluster > newest[index][0]:
            newest[index] = (cluster, measure)
    fanin = newest.pop(-1, None)
    return RoundUsage(units={i: m for i, (_, m) in newest.items()}, fanin=fanin[1] if fanin else None)
