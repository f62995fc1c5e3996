"""One round of N units, before and after the scale work (issue 15), side by side in ONE run.

    .venv/bin/python bench/scale_bench.py [--before <commit>] [--sizes 1000,10000,50000]

"Before" is the code of ``--before`` (default: the commit the scale work started from),
unpacked with ``git archive`` into a throwaway directory under /tmp (the repository's git
state is not touched); "after" is this working tree. Each side runs in a subprocess of its
own that imports ``batchsite`` from its tree, so both measure the same things the same way:

* Slurm submit: the rendered round against Slurm's defaults (MaxArraySize 1001: task ids
  0..1000; max_script_size 4 MB): the arrays, the largest task id, unit.sh's size;
* render: ``render_round`` of the Slurm and the HTCondor backend (best of 3);
* per-unit start-up: the rendered unit.sh (and unit table) run under bash for the LAST
  unit, with the payload ``true``: wall time, CPU and peak RSS of that process tree;
* status parse: ``parse_status`` of a status output of N units as the real tools print it
  (the line formats of tests/data/{slurm,htcondor}: squeue + sacct lines per array task;
  DAGMan's node status file, one ad per node), 1% of the units failed (best of 3; 1 at
  50,000 before, which takes seconds);
* Airflow payloads: the trigger kwargs (``RoundWatch``), the trigger event
  (``RoundWatchEvent`` of the finished round), the operator's XCom (``RoundResult``) and
  the round request XCom (``round_def``: ``RoundRequest``), as JSON bytes.

Prints one table per measure, before | after per N, and ``--json`` writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: the commit the scale work (issue 15) started from
DEFAULT_BEFORE = "b607a1f94edcecdf23644ae5ac83ed8414078a3e"
FAILED_EVERY = 100  # 1% of the units fail, scattered


def unpack(commit: str) -> Path:
    """The tree of ``commit`` under /tmp (git archive: no worktree, no checkout)."""
    dest = Path(tempfile.gettempdir()) / f"batchsite-scale-before-{commit[:12]}"
    if not (dest / "providers" / "batchsite").is_dir():
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", commit],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


# ---------------------------------------------------------------------------- the measuring side
# Runs in a subprocess whose sys.path starts with a directory where ``batchsite`` is the
# tree under test (the editable install's finder comes after the path finder).

MEASURE = r'''
import json, os, re, subprocess, sys, tempfile, time
from pathlib import Path

sizes = [int(n) for n in sys.argv[1].split(",")]
FAILED_EVERY = int(sys.argv[2])

from batchsite import model
from batchsite.backends import common, htcondor, htcondor_parse, slurm, slurm_parse
from batchsite.model import JobState, RoundSpec, RoundStatus, Submission, TaskStatus, WorkUnit
from batchsite import rounds

MAX_ARRAY_SIZE, MAX_SCRIPT_SIZE = 1001, 4 * 1024 * 1024


def argv(i):
    return ["python3", "-m", "source.data_generation", "40000", f"/home/user/job_outputs/v1/FP/batches/RG3/batch_{i:05d}",
            "--seed", str(1000 + i), "--input", "/home/user/job_outputs/v1/FP/hist/z/z_hist_RG2.npz"]


def spec(n, payload=None):
    units = [WorkUnit(index=i, argv=payload or argv(i)) for i in range(n)]
    return RoundSpec(key="bs-scale-0123456789ab", label="scale", workdir="/home/user/rounds/bs-scale-0123456789ab",
                     units=units, fanin=["python3", "-m", "source.aggregate"], throttle=64)


def best(f, times=3):
    out = None
    t_best = 1e9
    for _ in range(times):
        t0 = time.perf_counter()
        out = f()
        t_best = min(t_best, time.perf_counter() - t0)
    return t_best, out


def slurm_arrays(files):
    """(task-id ranges per array) of a rendered Slurm round: arrays.txt, or the one #SBATCH --array."""
    if "arrays.txt" in files:
        return [line.split()[1] for line in files["arrays.txt"].splitlines() if line.strip()]
    m = re.search(r"^#SBATCH --array=(\S+)$", files["unit.sh"], re.M)
    return [m.group(1)]


def startup(n, tmp):
    """unit.sh of an n-unit round (payload `true`) run for its last unit: wall s, CPU s, peak RSS MiB."""
    wd = Path(tmp) / f"r{n}"
    wd.mkdir()
    s = spec(n, ["true"]).model_copy(update={"workdir": str(wd), "throttle": None})
    files = slurm.render_round(s).files
    for name, text in files.items():
        (wd / name).write_text(text)
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": str(n - 1)}
    args = []
    if "arrays.txt" in files:  # the last unit is task (n-1-offset) of the last array
        offset = int(files["arrays.txt"].splitlines()[-1].split()[0])
        env["SLURM_ARRAY_TASK_ID"] = str(n - 1 - offset)
        args = [str(offset)]
    walls, cpus, rss = [], [], []
    # peak RSS from /usr/bin/time: a child forked from this (large) Python process would
    # report the parent's pages it held before exec as its own
    report = wd / "rss"
    for _ in range(5):
        t0 = time.perf_counter()
        p = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", str(report), "bash", str(wd / "unit.sh"), *args],
                             env=env, cwd=wd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, ru = os.wait4(p.pid, 0)
        walls.append(time.perf_counter() - t0)
        if os.waitstatus_to_exitcode(status) != 0 or (wd / "status" / f"{n - 1}.exit").read_text() != "0\n":
            raise SystemExit(f"unit {n - 1} of {n} did not run: {p.stderr.read()}")
        cpus.append(ru.ru_utime + ru.ru_stime)
        rss.append(int(report.read_text().split()[-1]) / 1024)
    walls.sort(); cpus.sort(); rss.sort()
    return {"wall": walls[2], "cpu": cpus[2], "rss_mib": rss[2]}


def failed(i):
    return i % FAILED_EVERY == 7


def slurm_status_text(n, arrays):
    """What the status script prints for a finished round: squeue -t all and sacct, one line
    per array task (the formats of tests/data/slurm/status_ok8_done.txt), and the exit files."""
    q, a, e = ["@@BATCHSITE squeue -"], ["@@BATCHSITE sacct -"], ["@@BATCHSITE exit bs-scale-0123456789ab"]
    for array_id, offset, tasks in arrays:
        for t in tasks:
            i = offset + t
            st = "FAILED" if failed(i) else "COMPLETED"
            q.append(f"{array_id}_{t}|{st}|None|bs-scale-0123456789ab")
            a.append(f"{array_id}_{t}|{st}|{'3:0' if failed(i) else '0:0'}|None|bs-scale-0123456789ab")
            e.append(f"{i} {3 if failed(i) else 0}")
    q += ["9999|PENDING|DependencyNeverSatisfied|bs-scale-0123456789ab", "!rc 0"]
    a += ["9999|PENDING|0:0|DependencyNeverSatisfied|bs-scale-0123456789ab", "!rc 0"]
    return "\n".join(q + a + e) + "\n"


NODE_AD = """[
  Type = "NodeStatus";
  Node = "unit{i}";
  NodeStatus = {code}; /* "{word}" */
  StatusDetails = "{details}";
  RetryCount = 0;
  JobProcsQueued = 0;
  JobProcsHeld = 0;
]"""


def condor_status_text(n):
    """A finished DAG (DAGMan gone; the formats of tests/data/htcondor/status_failed.txt):
    the node status file with one ad per node, the exit files, the metrics."""
    ads = ['[\n  Type = "DagStatus";\n  DagFiles = {\n    "bs-scale-0123456789ab.dag"\n  };\n  DagStatus = 6;\n'
           f'  NodesTotal = {n + 1};\n]']
    for i in range(n):
        if failed(i):
            ads.append(NODE_AD.format(i=i, code=6, word="STATUS_ERROR",
                                      details=f"Job proc ({100 + i}.0.0) failed with status 3"))
        else:
            ads.append(NODE_AD.format(i=i, code=5, word="STATUS_DONE", details=""))
    ads.append(NODE_AD.format(i="", code=7, word="STATUS_FUTILE", details="").replace('"unit"', '"fanin"'))
    ads.append('[\n  Type = "StatusEnd";\n  EndTime = 1795437703;\n  NextUpdate = 0; /* "none" */\n]')
    hist = [{"ClusterId": 77, "ProcId": 0, "JobStatus": 4, "JobUniverse": 7, "ExitCode": 1, "DAG_Status": 2}]
    hist += [{"ClusterId": 100 + i, "ProcId": 0, "JobStatus": 4, "DAGManJobId": 77, "DAGNodeName": f"unit{i}",
              "ExitCode": 3, "ExitBySignal": False} for i in range(n) if failed(i)]
    return "\n".join([
        "@@BATCHSITE condor_q -", "!rc 0",
        "@@BATCHSITE condor_history -", json.dumps(hist, indent=0), "!rc 0",
        "@@BATCHSITE nodes bs-scale-0123456789ab", *ads, "!rc 0",
        "@@BATCHSITE map bs-scale-0123456789ab",
        "@@BATCHSITE metrics bs-scale-0123456789ab", json.dumps({"dagman_id": "77", "exitcode": 1, "DagStatus": 2}),
        "@@BATCHSITE exit bs-scale-0123456789ab",
        *(f"{i} {3 if failed(i) else 0}" for i in range(n)),
    ]) + "\n"


def payloads(n, status, sub):
    """JSON bytes of the trigger kwargs, the trigger event, the operator XCom and round_def."""
    watch = rounds.RoundWatch.of(sub, site_conn_id="taskfarm", label="RG step 3")
    out = {"kwargs": len(watch.model_dump_json())}
    event_fields = rounds.RoundWatchEvent.model_fields
    digest_type = getattr(model, "RoundDigest", None)
    round_value = digest_type.of(status) if digest_type else status
    event = rounds.RoundWatchEvent(status="finished", watch=watch, round=round_value)
    out["event"] = len(event.model_dump_json())
    fields = rounds.RoundResult.model_fields
    failed_idx = status.failed_indices
    values = dict(key=sub.key, job_id=sub.fanout_id, fanin_id=sub.fanin_id, site="taskfarm", workdir=sub.workdir,
                  adopted=False, rescues=0, counts=status.counts(), fanin_state="failed", succeeded=False,
                  decision="review", message="RG step 3: review",
                  failures={str(i): "FAILED exit 3" for i in failed_idx[:50]}, fanin_failure=None)
    if "states" in fields:  # before: per-unit states and index lists
        values.update(states={str(i): s.state.value for i, s in status.units.items()}, timed_out=[],
                      failed_indices=failed_idx)
    else:
        values.update(timed_out="", failed=model.index_ranges(failed_idx))
    result = rounds.RoundResult(**{k: v for k, v in values.items() if k in fields})
    out["xcom"] = len(result.model_dump_json())
    if "unit_template" in rounds.RoundRequest.model_fields:
        request = rounds.RoundRequest(unit_template={"argv": argv(0)[:4] + ["/home/user/job_outputs/v1/FP/batches/RG3/batch_{index:05d}"] + argv(0)[5:6] + ["{index}"] + argv(0)[7:], "indices": f"0-{n - 1}"})
    else:
        request = rounds.RoundRequest(units=[argv(i) for i in range(n)])
    out["round_def"] = len(request.model_dump_json())
    return out


results = {}
with tempfile.TemporaryDirectory() as tmp:
    for n in sizes:
        r = {}
        s = spec(n)
        t, files = best(lambda: slurm.render_round(s).files)
        r["render_slurm"] = t
        arrays = slurm_arrays(files)
        tasks = [slurm_parse.expand_indices(a) for a in arrays]
        r["slurm_arrays"] = len(arrays)
        r["slurm_max_task_id"] = max(max(t) for t in tasks)
        r["unit_sh_bytes"] = len(files["unit.sh"].encode())
        r["slurm_submit_ok"] = r["slurm_max_task_id"] < MAX_ARRAY_SIZE and r["unit_sh_bytes"] <= MAX_SCRIPT_SIZE
        t, _ = best(lambda: htcondor.render_round(s).files, 1 if n > 10000 else 3)
        r["render_htcondor"] = t
        r["startup"] = startup(n, tmp)
        # status parse, Slurm: array ids 5000.. with the offsets of what was rendered
        offsets = [int(line.split()[0]) for line in files.get("arrays.txt", "0 x").splitlines()]
        ids = [(str(5000 + k), off, tk) for k, (off, tk) in enumerate(zip(offsets, tasks))]
        fanout = ",".join(a if off == 0 else f"{a}@{off}" for a, off, _ in ids)
        sub = Submission(key=s.key, scheduler="slurm", workdir=s.workdir, indices=list(range(n)),
                         fanout_id=fanout, fanin_id="9999")
        text = slurm_status_text(n, ids)
        t, st = best(lambda: slurm_parse.parse_status(text, [sub])[sub.key])
        assert st.failed_indices == [i for i in range(n) if failed(i)], "slurm parse lost units"
        r["parse_slurm"] = t
        csub = Submission(key=s.key, scheduler="htcondor", workdir=s.workdir, indices=list(range(n)),
                          fanout_id="77", fanin_id="fanin", schedd=None, submitted_at=1795437000.0)
        ctext = condor_status_text(n)
        t, cst = best(lambda: htcondor_parse.parse_status(ctext, [csub])[csub.key], 1 if n > 10000 else 3)
        assert cst.failed_indices == [i for i in range(n) if failed(i)], "htcondor parse lost units"
        r["parse_htcondor"] = t
        r.update(payloads(n, st, sub))
        results[n] = r
print(json.dumps(results))
'''


def measure(tree: Path, sizes: list[int]) -> dict[int, dict]:
    """Run MEASURE against the ``batchsite`` of ``tree`` (its providers/batchsite)."""
    with tempfile.TemporaryDirectory() as shim:
        os.symlink(tree / "providers" / "batchsite", Path(shim) / "batchsite")
        env = {**os.environ, "PYTHONPATH": shim}
        r = subprocess.run([sys.executable, "-c", MEASURE, ",".join(map(str, sizes)), str(FAILED_EVERY)],
                           env=env, capture_output=True, text=True, timeout=3600)
        if r.returncode != 0:
            raise SystemExit(f"measuring {tree} failed:\n{r.stderr[-4000:]}")
        check = subprocess.run([sys.executable, "-c", "import batchsite; print(batchsite.__file__)"],
                               env=env, capture_output=True, text=True)
        if not check.stdout.startswith(str(shim)):
            raise SystemExit(f"the subprocess imported {check.stdout.strip()}, not the tree under test {tree}")
        return {int(k): v for k, v in json.loads(r.stdout.splitlines()[-1]).items()}


def kb(n: float) -> str:
    return f"{n / 1024:.1f} KB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.2f} MB"


def ms(t: float) -> str:
    return f"{t * 1000:.0f} ms" if t < 1 else f"{t:.2f} s"


def submit_cell(r: dict) -> str:
    arrays = f"{r['slurm_arrays']} array{'s' if r['slurm_arrays'] > 1 else ''}"
    why = []
    if r["slurm_max_task_id"] >= 1001:
        why.append(f"task id {r['slurm_max_task_id']} > MaxArraySize-1")
    if r["unit_sh_bytes"] > 4 * 1024 * 1024:
        why.append(f"unit.sh {kb(r['unit_sh_bytes'])} > 4 MB")
    return (f"ok: {arrays}, unit.sh {kb(r['unit_sh_bytes'])}" if r["slurm_submit_ok"]
            else f"rejected: {'; '.join(why)}")


ROWS = [
    ("Slurm submit (MaxArraySize 1001, max_script_size 4 MB)", submit_cell),
    ("render Slurm", lambda r: ms(r["render_slurm"])),
    ("render HTCondor (DAG)", lambda r: ms(r["render_htcondor"])),
    ("per-unit bash start-up (last unit, payload `true`)",
     lambda r: f"{ms(r['startup']['wall'])} wall, {ms(r['startup']['cpu'])} CPU, {r['startup']['rss_mib']:.0f} MiB"),
    ("HTCondor status parse", lambda r: ms(r["parse_htcondor"])),
    ("Slurm status parse", lambda r: ms(r["parse_slurm"])),
    ("trigger kwargs / event / operator XCom / round_def XCom",
     lambda r: f"{kb(r['kwargs'])} / {kb(r['event'])} / {kb(r['xcom'])} / {kb(r['round_def'])}"),
]


def table(before: dict[int, dict], after: dict[int, dict], sizes: list[int]) -> str:
    head = "| what | " + " | ".join(f"N = {n:,}: before | after" for n in sizes) + " |"
    sep = "|---|" + "---|---|" * len(sizes)
    lines = [head, sep]
    for title, cell in ROWS:
        lines.append(f"| {title} | " + " | ".join(f"{cell(before[n])} | {cell(after[n])}" for n in sizes) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", default=DEFAULT_BEFORE, help="commit of the 'before' code")
    ap.add_argument("--sizes", default="1000,10000,50000", help="comma-separated numbers of units")
    ap.add_argument("--json", help="also write the numbers to this file")
    args = ap.parse_args()
    sizes = [int(n) for n in args.sizes.split(",")]
    if not Path("/usr/bin/time").exists():
        raise SystemExit("/usr/bin/time is needed to measure the unit's peak RSS: apt-get install -y time")
    before_tree = unpack(args.before)
    print(f"before: {args.before[:12]} (unpacked in {before_tree}); after: the working tree {REPO}", flush=True)
    before = measure(before_tree, sizes)
    after = measure(REPO, sizes)
    print(textwrap.dedent(f"""
        One round of N units, {100 // FAILED_EVERY}% of them failed (status parse, payloads); best of 3
        (status parse and HTCondor render: 1 run above 10,000 units); start-up: median of 5 runs.
        """).strip())
    print(table(before, after, sizes))
    if args.json:
        Path(args.json).write_text(json.dumps({"before": before, "after": after}, indent=1))


if __name__ == "__main__":
    main()
