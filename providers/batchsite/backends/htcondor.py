"""HTCondor backend: a round is one DAG run by DAGMan (``condor_submit_dag``).

Every work unit is a DAG node (``unit<index>`` or ``WorkUnit.name``) sharing ONE submit
description (``unit.sub``, the shared unit script with ``arguments = $(idx)`` from VARS);
the fan-in is the node ``fanin``, a CHILD of every unit. DAGMan does the retries
(``RETRY <node> n UNLESS-EXIT 2``), the throttle (``CATEGORY`` + ``MAXJOBS``), the
dependency and the rescue DAG. Everything here is text in, text out; the parsers of what
the real tools print are in ``htcondor_parse.py`` and the fixtures they are tested against
in ``tests/data/htcondor/`` (the README there says how each was captured).

Choices, each checked against a real HTCondor 25.13.2 pool (see the fixtures):

* the DAG is written with ``htcondor2.dags`` (in memory, no files): its two bugs are
  patched in the text: ``max_jobs_by_category`` writes ``CATEGORY <cat> <n>`` instead of
  ``MAXJOBS <cat> <n>``, and the layer submit files get a second ``queue`` line
  (``str(Submit)`` already ends with one); every submit description is parsed back with
  ``htcondor2.Submit`` and compared key by key before anything is returned;
* ``condor_submit_dag -batch-name <key>`` without ``-f`` (``htcondor_submit.sh``):
  submitting the same DAG again after a failure picks up its rescue DAG, so only failed
  nodes run again; the previous run's node status and metrics files are moved aside first,
  so a poll never reads the last run's outcome as this run's;
* the schedd: the site connection's ``schedd`` extra (``HTCondorBackend(schedd=...)``),
  else the login node's default. ``condor_submit_dag`` has no ``-name`` and ``-remote``
  implies ``-spool`` (DAGMan's files would stay in the schedd's spool, away from the
  workdir this backend reads): it submits through ``_CONDOR_SCHEDD_HOST``. ``submit.sh``
  prints ``dagman=<cluster> schedd=<name>``, the name from the DAGMan job's ``GlobalJobId``
  (lxplus maps each user to one of many schedds and a later SSH login may land on a node
  that defaults to another): every later query, removal and release of the round uses
  ``-name`` with the schedd its record names (the configured one for a record without);
* status: ONE script; per schedd one ``condor_q -json`` (DAGMan jobs + node jobs, by
  cluster id) and, only when a DAG left the queue or a node failed, one bounded
  ``condor_history -json``; then per round the node status file, the metrics file, the
  completion lines of ``.dagman.out`` and the exit files. A failing command is recorded
  in its section (``!err`` / ``!rc``), never fatal;
* re-attach without a record (``htcondor_find.sh``): the DAGMan job by batch name in the
  queue AND in the history (bounded by ``-completedsince``), and DAGMan's own log of the
  runs it made in the workdir (``Workflow batch-id``), so a DAG that finished already, or
  that went where it cannot be seen, is never submitted a second time.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import classad2
import htcondor2
from htcondor2 import dags
from htcondor2.dags import formatter as dag_formatter

from batchsite import shellscripts
from batchsite.backends import common
from batchsite.backends import htcondor_parse
from batchsite.backends.base import Backend, RenderedRound, SubmitIds, register
from batchsite.measure import RoundUsage
from batchsite.model import SAFE_NAME, Resources, RoundSpec, RoundStatus, Submission

q = common.q

UNIT_SCRIPT = "unit.sh"
FANIN_SCRIPT = "fanin.sh"
UNIT_LAYER = "unit"  # -> unit.sub
FANIN_LAYER = htcondor_parse.FANIN_NODE  # -> fanin.sub, node "fanin"
CONFIG_FILE = "dagman.config"  # the name htcondor2.dags gives it
LOG_DIR = "logs"
CATEGORY = "units"
#: a unit exiting with this code is not retried by DAGMan (a usage error will not heal)
RETRY_UNLESS_EXIT = 2
#: DAGMan rejects node names with whitespace, '.', '+'; keep them shell- and file-safe
NODE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$")
_RESERVED_NODE_NAMES = {"parent", "child", "all_nodes", FANIN_LAYER}
SUBMIT_SCRIPT = shellscripts.load("batchsite.backends", "htcondor_submit.sh")
FIND_SCRIPT = shellscripts.load("batchsite.backends", "htcondor_find.sh")
#: ``bs_history_constraint CLUSTER NODE_STATUS_FILE``: the history a finished DAG needs
HISTORY_HELPER = shellscripts.load("batchsite.backends", "htcondor_history.sh")
#: the status script's history constraint, made on the site (history_constraint_script)
HISTORY_WORD = '"$bs_hist"'


@dataclass(frozen=True)
class Options:
    """Knobs of the rendered DAG; the defaults suit lxplus."""

    #: NODE_STATUS_FILE minimum update interval (s); DAGMan's default is 60
    status_update_seconds: int = 30
    #: DAGMAN_MAX_JOBS_IDLE (None: DAGMan's default, 1000)
    max_idle: int | None = None
    #: DAGMAN_QUEUE_UPDATE_INTERVAL: how often DAGMan refreshes DAG_* in its job ad
    queue_update_seconds: int = 60
    #: ABORT-DAG-ON <unit> <value>: a unit exiting with it stops the whole DAG
    abort_dag_on_exit: int | None = None
    should_transfer_files: str = "IF_NEEDED"


#: a job whose measured memory passes its request is removed (its node fails, the rescue asks
#: for more: ``htcondor_parse.is_out_of_memory`` knows the RemoveReason), as Slurm kills it; a pool
#: without cgroup limits would let it run on. The shadow sees the starter's RSS (every
#: STARTER_UPDATE_INTERVAL, from a process snapshot every PID_SNAPSHOT_INTERVAL)
MEMORY_REMOVE = "MemoryUsage =!= undefined && MemoryUsage > RequestMemory"


def dag_file(key: str) -> str:
    return f"{key}.dag"


def node_status_file(key: str) -> str:
    return f"{key}.status"


def metrics_file(key: str) -> str:
    return f"{key}.dag.metrics"


def dagman_out_file(key: str) -> str:
    return f"{key}.dag.dagman.out"


def node_map_file(key: str) -> str:
    return f"{key}.nodes"


def node_names(spec: RoundSpec) -> dict[int, str]:
    """index -> DAG node name; raises ValueError for a name DAGMan (or we) cannot use."""
    names: dict[int, str] = {}
    for u in sorted(spec.units, key=lambda u: u.index):
        name = u.name or f"unit{u.index}"
        if not NODE_NAME.match(name) or name.lower() in _RESERVED_NODE_NAMES:
            raise ValueError(
                f"work unit {u.index}: node name {name!r} is not usable in a DAG "
                "(letters, digits, '_' or '-', at most 64, not PARENT/CHILD/ALL_NODES/fanin)"
            )
        names[u.index] = name
    if len(set(names.values())) != len(names):
        raise ValueError("work units: node names must be unique")
    return names


# ---------------------------------------------------------------------------- submit files

def _classad_string(v: str) -> str:
    return classad2.quote(v)


def submit_description(spec: RoundSpec, *, fanin: bool, opts: Options = Options()) -> dict[str, str]:
    """The submit commands of unit.sub / fanin.sub, in order."""
    r: Resources = (spec.fanin_resources or spec.resources) if fanin else spec.resources
    stem = "fanin" if fanin else "$(idx)"
    d: dict[str, str] = {
        "universe": "vanilla",
        "executable": FANIN_SCRIPT if fanin else UNIT_SCRIPT,
    }
    if not fanin:
        d["arguments"] = "$(idx)"
    d["output"] = f"{LOG_DIR}/{spec.key}_{stem}_$(ClusterId).out"
    d["error"] = f"{LOG_DIR}/{spec.key}_{stem}_$(ClusterId).err"
    d["log"] = f"{LOG_DIR}/{spec.key}.log"
    d["request_cpus"] = str(r.cpus)
    if r.mem_mb:
        d["request_memory"] = f"{r.mem_mb}MB"
        d["periodic_remove"] = MEMORY_REMOVE
    if r.disk_mb:
        d["request_disk"] = f"{r.disk_mb}MB"
    if r.time_minutes:
        # lxplus: +MaxRuntime (s) overrides the flavour's limit; SYSTEM_PERIODIC_REMOVE
        # removes the job when it runs longer
        d["MY.MaxRuntime"] = str(r.time_minutes * 60)
    if r.job_flavour:
        d["MY.JobFlavour"] = _classad_string(r.job_flavour)
    requirements = [f"({r.requirements})"] if r.requirements else []
    requirements += [f"(Machine =!= {_classad_string(h)})" for h in r.exclude_hosts]
    if requirements:
        d["requirements"] = requirements[0][1:-1] if len(requirements) == 1 and r.requirements else \
            " && ".join(requirements)
    if r.account:
        d["accounting_group"] = r.account
    d["should_transfer_files"] = opts.should_transfer_files
    d["when_to_transfer_output"] = "ON_EXIT"
    d["notification"] = "never"
    d["MY.BatchsiteKey"] = _classad_string(spec.key)
    d["MY.BatchsiteIndex"] = "-1" if fanin else "$(idx)"
    return d


def _check_value(key: str, value: str) -> None:
    if "\n" in value or "\r" in value or "\x00" in value:
        raise ValueError(f"submit description: {key} contains a line break")
    if key == "requirements":
        try:
            classad2.ExprTree(value)
        except Exception as e:  # classad2 raises ValueError / ClassAdException
            raise ValueError(f"submit description: requirements {value!r} is not a ClassAd expression: {e}") from e


def validate_submit(text: str, expected: dict[str, str]) -> None:
    """Parse ``text`` with ``htcondor2.Submit`` and check that it means ``expected``:
    every key present with the same value and nothing else, and exactly one ``queue``.
    Raises ValueError naming the offending key."""
    for k, v in expected.items():
        _check_value(k, v)
    try:
        parsed = htcondor2.Submit(text)
    except Exception as e:
        bad = _first_bad_line(text)
        raise ValueError(f"submit description does not parse ({e}){bad}") from e
    got = {k: parsed[k] for k in parsed.keys()}
    for k, v in expected.items():
        if k not in got:
            raise ValueError(f"submit description: {k} is missing after parsing")
        if got[k] != v:
            raise ValueError(f"submit description: {k} = {v!r} parses as {got[k]!r}")
    extra = sorted(set(got) - set(expected))
    if extra:
        raise ValueError(f"submit description: unexpected keys {extra}")
    queues = [ln for ln in text.splitlines() if ln.strip().lower().startswith("queue")]
    if len(queues) != 1:
        raise ValueError(f"submit description: {len(queues)} queue statements, expected 1")


def _first_bad_line(text: str) -> str:
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith("#") or s.lower().startswith("queue"):
            continue
        try:
            htcondor2.Submit(s + "\n")
        except Exception:
            key = re.match(r"[^\s=]+", s).group(0)
            return f": offending key {key!r} in line {s!r}"
    return ""


def render_submit_file(spec: RoundSpec, *, fanin: bool, opts: Options = Options()) -> str:
    desc = submit_description(spec, fanin=fanin, opts=opts)
    for k, v in desc.items():
        _check_value(k, v)
    # str(Submit) ends with its own "queue" line (htcondor2 25.13); the dags writer adds
    # a second one ("\nqueue"), which would run every node twice: we write it once
    text = str(htcondor2.Submit(desc))
    if not re.search(r"^queue\s*$", text, re.M):
        text = text.rstrip("\n") + "\nqueue\n"
    validate_submit(text, desc)
    return text


# ---------------------------------------------------------------------------- DAG

class _Names(dag_formatter.NodeNameFormatter):
    def __init__(self, names: dict[str, list[str]]):
        self.names = names

    def generate(self, layer_name: str, node_index: int) -> str:
        return self.names[layer_name][node_index]

    def parse(self, node_name: str) -> tuple[str, int]:  # pragma: no cover - unused by the writer
        for layer, names in self.names.items():
            if node_name in names:
                return layer, names.index(node_name)
        raise ValueError(node_name)


def _dagman_config(opts: Options) -> dict[str, object]:
    cfg: dict[str, object] = {"DAGMAN_QUEUE_UPDATE_INTERVAL": opts.queue_update_seconds}
    if opts.max_idle:
        cfg["DAGMAN_MAX_JOBS_IDLE"] = opts.max_idle
    return cfg


def render_dag(spec: RoundSpec, unit_sub: str, fanin_sub: str | None, opts: Options = Options()) -> str:
    names = node_names(spec)
    order = sorted(names)
    throttle = {CATEGORY: spec.throttle} if spec.throttle else None
    dag = dags.DAG(
        dagman_config=_dagman_config(opts),
        dagman_job_attributes={"BatchsiteKey": _classad_string(spec.key)},
        max_jobs_by_category=throttle,
        node_status_file=dags.NodeStatusFile(node_status_file(spec.key), update_time=opts.status_update_seconds),
    )
    retry = {"retries": spec.retries, "retry_unless_exit": RETRY_UNLESS_EXIT} if spec.retries else {}
    abort = dags.DAGAbortCondition(opts.abort_dag_on_exit) if opts.abort_dag_on_exit is not None else None
    units = dag.layer(
        name=UNIT_LAYER,
        submit_description=htcondor2.Submit(unit_sub),
        vars=[{"idx": str(i)} for i in order],
        category=CATEGORY if spec.throttle else None,
        abort=abort,
        **retry,
    )
    layer_names = {UNIT_LAYER: [names[i] for i in order]}
    if fanin_sub is not None:
        n = spec.retries if spec.fanin_retries is None else spec.fanin_retries
        fanin_retry = {"retries": n, "retry_unless_exit": RETRY_UNLESS_EXIT} if n else {}
        units.child_layer(name=FANIN_LAYER, submit_description=htcondor2.Submit(fanin_sub), **fanin_retry)
        layer_names[FANIN_LAYER] = [FANIN_LAYER]
    writer = dags.writer.DAGWriter(dag, node_name_formatter=_Names(layer_names))
    lines = list(writer.yield_dag_file_lines())
    return "\n".join(fix_maxjobs(lines, throttle or {})) + "\n"


def fix_maxjobs(lines: list[str], max_jobs: dict[str, int]) -> list[str]:
    """htcondor2.dags writes the category throttle as ``CATEGORY <cat> <n>`` in the META
    block; DAGMan wants ``MAXJOBS <cat> <n>``. Node lines (``CATEGORY <node> <cat>``) are
    outside that block and stay. A fixed library makes this a no-op."""
    out: list[str] = []
    in_meta = False
    for line in lines:
        if line == "# BEGIN META":
            in_meta = True
        elif line == "# END META":
            in_meta = False
        else:
            parts = line.split()
            if in_meta and len(parts) == 3 and parts[0] == "CATEGORY" and parts[1] in max_jobs \
                    and parts[2] == str(max_jobs[parts[1]]):
                line = f"MAXJOBS {parts[1]} {parts[2]}"
        out.append(line)
    return out


def render_submit_script(spec: RoundSpec, schedd: str | None = None) -> str:
    """``htcondor_submit.sh`` for this round (run with cwd = workdir): prints
    condor_submit_dag's stdout, then ``dagman=<cluster> schedd=<schedd name>``.
    ``schedd``: where to submit (the connection's ``schedd`` extra), None for the default."""
    key = spec.key
    options = " ".join(f"-{k} {int(v)}" for k, v in sorted(spec.submit_options.items()) if v)
    return shellscripts.with_values(
        SUBMIT_SCRIPT, key=key, dag=dag_file(key), node_status=node_status_file(key), metrics=metrics_file(key),
        dirs=f"{LOG_DIR} {common.STATUS_DIR}", options=options, schedd=schedd or "",
        fanin_node=FANIN_LAYER if spec.fanin else "")


def render_round(spec: RoundSpec, opts: Options = Options(), schedd: str | None = None) -> RenderedRound:
    names = node_names(spec)
    unit_sub = render_submit_file(spec, fanin=False, opts=opts)
    fanin_sub = render_submit_file(spec, fanin=True, opts=opts) if spec.fanin else None
    files = {
        UNIT_SCRIPT: common.render_unit_script(spec, '"$1"', retries=0),
        common.UNIT_TABLE: common.render_unit_table(spec),
        f"{UNIT_LAYER}.sub": unit_sub,
        dag_file(spec.key): render_dag(spec, unit_sub, fanin_sub, opts),
        CONFIG_FILE: "\n".join(f"{k} = {v}" for k, v in _dagman_config(opts).items()) + "\n",
    }
    if fanin_sub is not None:
        files[FANIN_SCRIPT] = common.render_fanin_script(spec, retries=0)
        files[f"{FANIN_LAYER}.sub"] = fanin_sub
    if any(n != f"unit{i}" for i, n in names.items()):
        files[node_map_file(spec.key)] = "".join(f"{i} {n}\n" for i, n in names.items())
    executable = frozenset({UNIT_SCRIPT, FANIN_SCRIPT} & set(files))
    return RenderedRound(files=files, submit_script=render_submit_script(spec, schedd), executable=executable)


parse_submit = htcondor_parse.parse_submit


def format_submit(ids: SubmitIds) -> str:
    """What submit.sh prints for these ids (``parse_submit`` reads it back)."""
    return f"dagman={ids.fanout_id} schedd={ids.schedd or ''}" + (f" fanin={FANIN_LAYER}" if ids.fanin_id else "")


# ---------------------------------------------------------------------------- status script

#: passes the output of ``bs_run condor_q -json`` through unchanged and prints (to its
#: stderr) 1 when the query worked but some DAGMan cluster of ``want`` is not in it, else 0
_MISSING_AWK = r"""BEGIN { n = split(want, w, " ") }
{ print }
/^!rc / { rc = $2; next }
{ for (i = 1; i <= n; i++) if ($0 ~ ("^ *\"ClusterId\": " w[i] "(,|$)")) seen[w[i]] = 1 }
END { m = 0; if (rc == "0") for (i = 1; i <= n; i++) if (!(w[i] in seen)) m = 1; print m | "cat 1>&2" }"""

#: what we read of a DAGMan job or a node job (everything else stays on the schedd)
ATTRIBUTES = (
    "ClusterId", "ProcId", "JobStatus", "LastJobStatus", "JobUniverse", "DAGManJobId", "DAGNodeName",
    "JobBatchName", "BatchsiteIndex", "HoldReason", "HoldReasonCode", "HoldReasonSubCode",
    "LastHoldReason", "LastHoldReasonCode", "RemoveReason", "ExitCode", "ExitBySignal", "ExitSignal",
    "EnteredCurrentStatus", "CompletionDate", "NumJobStarts",
    "DAG_Status", "DAG_InRecovery", "DAG_NodesTotal", "DAG_NodesDone", "DAG_NodesFailed",
    "DAG_NodesFutile", "DAG_NodesQueued", "DAG_NodesReady", "DAG_NodesUnready",
)

#: .dagman.out lines that say how a run ended (and which run it was)
DAGMAN_OUT_PATTERN = (
    r"STARTING UP|EXITING WITH STATUS|Writing Rescue DAG|USING RESCUE DAG|Running rescue|"
    r"DAG status:|Aborting DAG|Received SIGUSR1|All jobs Completed|following (job|Node)"
)


def _cluster_ids(subs: Sequence[Submission]) -> list[str]:
    out = []
    for s in subs:
        if not re.fullmatch(r"\d+", s.fanout_id):
            raise ValueError(f"{s.key}: {s.fanout_id!r} is not a DAGMan cluster id")
        out.append(s.fanout_id)
    return out


def _check_schedd(schedd: str | None, where: str) -> None:
    """A schedd name goes into shell lines: letters, digits and ``@._:-`` only."""
    if schedd is not None and not re.fullmatch(r"[A-Za-z0-9@._:-]+", schedd):
        raise ValueError(f"{where}: schedd {schedd!r} is not a schedd name")


def _schedd_groups(subs: Sequence[Submission], default: str | None) -> dict[str, list[Submission]]:
    """The rounds by the schedd to ask (one command per schedd): the one each record names,
    ``default`` (the connection's ``schedd``) for a record without, "-" for the default one."""
    groups: dict[str, list[Submission]] = {}
    for s in subs:
        _check_schedd(s.schedd, s.key)
        groups.setdefault(htcondor_parse.schedd_section(s.schedd, default), []).append(s)
    return groups


def _name_opt(section: str) -> str:
    return "" if section == "-" else f" -name {q(section)}"


def constraint(clusters: Sequence[str]) -> str:
    return " || ".join(f"ClusterId == {c} || DAGManJobId == {c}" for c in clusters)


def condor_q_command(section: str, clusters: Sequence[str]) -> str:
    return (f"condor_q{_name_opt(section)} -json -constraint {q(constraint(clusters))} "
            f"-attributes {','.join(ATTRIBUTES)}")


def condor_history_command(section: str, constraint_word: str, since: int, limit: int) -> str:
    """``constraint_word``: one shell word that gives the constraint (the status script's
    ``"$bs_hist"``, made on the site from the node status files)."""
    # -completedsince stops the (backwards) scan at the first older record: on a busy
    # schedd an unbounded history query reads the whole file
    return (f"condor_history{_name_opt(section)} -json -constraint {constraint_word} "
            f"-attributes {','.join(ATTRIBUTES)} -completedsince {since} -limit {limit}")


def history_constraint_script(group: Sequence[Submission]) -> str:
    """Sets ``bs_hist``: the history constraint of these DAGs, for each the DAGMan job and the
    node jobs not STATUS_DONE in its node status file (htcondor_history.sh)."""
    parts = [f"$(bs_history_constraint {q(s.fanout_id)} {q(s.workdir + '/' + node_status_file(s.key))})"
             for s in group]
    return 'bs_hist="' + " || ".join(parts) + '"'


def render_status_script(subs: Sequence[Submission], default_schedd: str | None = None) -> str:
    if not subs:
        return "true\n"
    _cluster_ids(subs)
    lines = [common.RUN_HELPER, HISTORY_HELPER]
    for section, group in _schedd_groups(subs, default_schedd).items():
        clusters = [s.fanout_id for s in group]
        since = int(min(s.submitted_at for s in group)) - 3600
        since = max(since, 0)
        limit = sum(10 * (len(s.indices) + 2) for s in group)
        nsfs = " ".join(q(f"{s.workdir}/{node_status_file(s.key)}") for s in group)
        lines += [
            common.section_header("condor_q", section),
            "# history only when it can tell something: a DAG left the queue or a node failed",
            f"need=$(bs_run {condor_q_command(section, clusters)} 3>&1 | "
            f"awk -v want={q(' '.join(clusters))} {q(_MISSING_AWK)} 2>&1 1>&3)",
            f"grep -qs 'STATUS_ERROR' {nsfs} && need=1",
            common.section_header("condor_history", section),
            'if [ "$need" = 1 ]; then',
            f"  {history_constraint_script(group)}",
            "  bs_run " + condor_history_command(section, HISTORY_WORD, since, limit),
            "else echo '!skipped'; fi",
        ]
    for s in subs:
        wd = s.workdir
        lines += [
            common.section_header("nodes", s.key),
            f"[ -f {q(wd + '/' + node_status_file(s.key))} ] && bs_run cat {q(wd + '/' + node_status_file(s.key))}",
            common.section_header("map", s.key),
            f"[ -f {q(wd + '/' + node_map_file(s.key))} ] && cat {q(wd + '/' + node_map_file(s.key))}",
            common.section_header("metrics", s.key),
            f"[ -f {q(wd + '/' + metrics_file(s.key))} ] && cat {q(wd + '/' + metrics_file(s.key))}",
            common.section_header("dagman", s.key),
            f"[ -f {q(wd + '/' + dagman_out_file(s.key))} ] && tail -c 1000000 {q(wd + '/' + dagman_out_file(s.key))}"
            f" | grep -E {q(DAGMAN_OUT_PATTERN)} | tail -n 40",
        ]
    lines.append(common.render_exit_files_section(subs))
    lines.append("exit 0")
    return "\n".join(lines) + "\n"


#: how far back the usage command reads the history: every attempt of a round (a rescue is
#: submitted when the attempt before ends, or after a review of at most a day) ended since
USAGE_HISTORY_SECONDS = 3 * 86400


def usage_command(sub: Submission, default_schedd: str | None = None) -> list[str]:
    """ONE ``condor_history`` of the node jobs of every attempt of the round (``-batch-name``
    is the round key, inherited by the nodes; a rescue DAG is a new DAGMan job) with what they
    used (``htcondor_parse.parse_usage`` reads it), bounded by ``-completedsince``."""
    if not SAFE_NAME.match(sub.key):
        raise ValueError(f"key={sub.key!r} is not a safe job name")
    section = htcondor_parse.schedd_section(sub.schedd, default_schedd)
    _check_schedd(None if section == "-" else section, sub.key)
    where = [] if section == "-" else ["-name", section]
    since = max(0, int(sub.submitted_at) - USAGE_HISTORY_SECONDS)
    return ["condor_history", *where, "-constraint", f"JobBatchName == {_classad_string(sub.key)} && "
            "BatchsiteIndex =!= undefined", "-completedsince", str(since), "-af:t", *htcondor_parse.USAGE_ATTRIBUTES]


# ---------------------------------------------------------------------------- cancel / find / probe

def render_cancel_script(subs: Sequence[Submission], default_schedd: str | None = None) -> str:
    """``condor_rm`` of the DAGMan clusters (their node jobs go with them; DAGMan writes a
    rescue DAG). Exit 0 even when some DAGs had already left the queue."""
    if not subs:
        return "true\n"
    _cluster_ids(subs)
    lines = []
    for section, group in _schedd_groups(subs, default_schedd).items():
        ids = " ".join(s.fanout_id for s in group)
        lines.append(f"condor_rm{_name_opt(section)} -reason 'cancelled by batchsite' {ids} 2>&1")
        lines.append('echo "condor_rm exit $?"')
    lines.append("exit 0")
    return "\n".join(lines) + "\n"


def render_release_script(subs: Sequence[Submission], default_schedd: str | None = None) -> str:
    """``condor_release`` of the held node jobs of these DAGs (and of a held DAGMan job)."""
    if not subs:
        return "true\n"
    _cluster_ids(subs)
    lines = []
    for section, group in _schedd_groups(subs, default_schedd).items():
        ors = " || ".join(f"DAGManJobId == {s.fanout_id} || ClusterId == {s.fanout_id}" for s in group)
        lines.append(f"condor_release{_name_opt(section)} -constraint {q(f'JobStatus == 5 && ({ors})')} 2>&1")
        lines.append('echo "condor_release exit $?"')
    lines.append("exit 0")
    return "\n".join(lines) + "\n"


def render_find_by_batch_name_script(key: str, schedd: str | None = None, workdir: str | None = None) -> str:
    """The DAGMan job(s) submitted with ``-batch-name <key>`` (to re-attach a round whose
    submission record is lost), queued or already in the history, on ``schedd`` (None: the
    default one); ``htcondor_find.sh`` says how. With ``workdir``: the runs DAGMan logged
    there (its ``.dagman.out``), and the earlier records and failed attempts."""
    if not SAFE_NAME.match(key):
        raise ValueError(f"key={key!r} is not a safe job name")
    _check_schedd(schedd, key)
    meta = f"{workdir}/{common.RECORD_DIR}" if workdir is not None else None
    find = shellscripts.with_values(
        FIND_SCRIPT, mark=common.SECTION, key=key, schedd=schedd or "",
        lock=f"{meta}/lock/owner" if meta else "", dagman_out=f"{workdir}/{dagman_out_file(key)}" if workdir else "")
    lines = [common.RUN_HELPER, find]
    if workdir is not None:
        lines.append(common.render_history_sections(workdir))
    lines.append("exit 0")
    return "\n".join(lines) + "\n"


def probe_script() -> str:
    """condor_version, and whether a Kerberos ticket is there (lxplus; absent tools are fine)."""
    return "\n".join([
        common.RUN_HELPER,
        common.section_header("version"),
        "bs_run condor_version",
        common.section_header("klist"),
        "if command -v klist >/dev/null 2>&1; then bs_run klist -s; else echo '!skipped'; fi",
        "exit 0",
    ]) + "\n"


# ---------------------------------------------------------------------------- the Backend

@register
class HTCondorBackend(Backend):
    name: ClassVar[str] = "htcondor"

    def __init__(self, options: Options | None = None, *, schedd: str | None = None) -> None:
        _check_schedd(schedd, "HTCondorBackend")
        self.options = options or Options()
        #: the site connection's ``schedd`` extra: where rounds are submitted and looked for,
        #: and what a record without a schedd name is asked on (None: the default schedd)
        self.schedd = schedd
        self.version: str | None = None
        self.kerberos_ok: bool | None = None  # learnt by apply_probe (None: no klist)

    def render_round(self, spec: RoundSpec) -> RenderedRound:
        return render_round(spec, self.options, self.schedd)

    def parse_submit(self, stdout: str) -> SubmitIds:
        return parse_submit(stdout)

    def render_status_script(self, subs: Sequence[Submission]) -> str:
        return render_status_script(subs, self.schedd)

    def parse_status(self, text: str, subs: Sequence[Submission]) -> dict[str, RoundStatus]:
        return htcondor_parse.parse_status(text, subs, self.schedd)

    def render_cancel_script(self, subs: Sequence[Submission]) -> str:
        return render_cancel_script(subs, self.schedd)

    def render_release_script(self, subs: Sequence[Submission]) -> str:
        return render_release_script(subs, self.schedd)

    def probe_script(self) -> str:
        return probe_script()

    def apply_probe(self, text: str) -> None:
        self.version, self.kerberos_ok = htcondor_parse.parse_probe(text)

    def render_find_script(self, spec: RoundSpec) -> str:
        # where submit.sh sends it: the configured schedd, else this login node's default
        return render_find_by_batch_name_script(spec.key, self.schedd, spec.workdir)

    def parse_find(self, text: str, spec: RoundSpec) -> SubmitIds | None:
        return htcondor_parse.parse_find_by_batch_name(text, spec.key, bool(spec.fanin))

    def format_submit(self, ids: SubmitIds) -> str:
        return format_submit(ids)

    def usage_command(self, sub: Submission) -> list[str] | None:
        return usage_command(sub, self.schedd)

    def parse_usage(self, text: str, sub: Submission) -> RoundUsage:
        return htcondor_parse.parse_usage(text)

    def diagnose(self, text: str) -> str | None:
        """A clear message for Kerberos/AFS/schedd errors in a tool's output, or None; a
        schedd that cannot be located while the connection names one: the ``schedd`` extra."""
        if self.schedd is not None:
            hint = htcondor_parse.diagnose_configured_schedd(text, self.schedd)
            if hint is not None:
                return hint
        return htcondor_parse.diagnose_credentials(text)


__all__ = [
    "HTCondorBackend", "Options", "render_round", "render_dag", "render_submit_file", "parse_submit", "format_submit",
    "render_status_script", "render_cancel_script", "render_find_by_batch_name_script", "fix_maxjobs",
    "validate_submit", "node_names",
]
