"""Benchmark (prints, does not assert): round overhead on a real site = the round's wall time
(submit -> fan-in finished, as the site itself timed it) minus its critical path (the
longest unit + the fan-in, as the jobs themselves timed them).

    .venv/bin/python bench/round_overhead.py [--site htcondor|slurm|local] [--units 2] [--sleep 2]

Needs the real test site for slurm/htcondor (``bash tests/site/site.sh start``, ``start-condor``).
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from poll_bench import site_config  # noqa: E402

from batchsite.hooks.connection import site_for_conn  # noqa: E402
from batchsite.model import Resources, RoundSpec, WorkUnit  # noqa: E402

STAMP = 'date +%s.%N > "t0_$0"; sleep "$1"; date +%s.%N > "t1_$0"'


def run(kind: str, units: int, sleep: float) -> dict:
    cfg = site_config(kind)
    site = site_for_conn(cfg)
    key = f"bench-ovh-{uuid.uuid4().hex[:8]}"
    spec = RoundSpec(
        key=key, label=key, workdir=f"{cfg.remote_root}/.batchsite/bench/{key}", env_script=cfg.env_script,
        units=[WorkUnit(index=i, argv=["sh", "-c", STAMP, str(i), str(sleep)]) for i in range(units)],
        fanin=["sh", "-c", STAMP, "fanin", "1"], resources=Resources(job_flavour="microcentury"),
    )
    t_submit = float(site.transport.run(["date", "+%s.%N"]).out)
    sub = site.submit(spec)
    while True:
        st = site.status([sub])[key]
        if st.finished:
            break
        time.sleep(0.5)
    t_seen = float(site.transport.run(["date", "+%s.%N"]).out)
    r = site.transport.sh('cd "$1" && for f in t0_* t1_*; do printf "%s %s\\n" "$f" "$(cat "$f")"; done',
                          spec.workdir)
    stamps = dict(line.split() for line in r.out.splitlines())
    site.close()
    runtimes = {n: float(stamps[f"t1_{n}"]) - float(stamps[f"t0_{n}"]) for n in [*map(str, range(units)), "fanin"]}
    critical = max(runtimes[str(i)] for i in range(units)) + runtimes["fanin"]
    wall_jobs = float(stamps["t1_fanin"]) - t_submit  # submit -> fan-in done, site clock
    return {"site": kind, "ok": st.succeeded, "critical_path_s": critical, "wall_s": wall_jobs,
            "overhead_s": wall_jobs - critical, "seen_after_s": t_seen - float(stamps["t1_fanin"])}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--site", action="append", choices=["htcondor", "slurm", "local"])
    ap.add_argument("--units", type=int, default=2)  # <= cores here: no throttling in the number
    ap.add_argument("--sleep", type=float, default=2.0)
    a = ap.parse_args()
    print(f"{'site':<9} {'critical path':>13} {'wall (submit->fan-in done)':>27} {'overhead':>9} "
          f"{'noticed after':>13}")
    for kind in a.site or ["htcondor", "slurm", "local"]:
        r = run(kind, a.units, a.sleep)
        print(f"{r['site']:<9} {r['critical_path_s']:>12.1f}s {r['wall_s']:>26.1f}s {r['overhead_s']:>8.1f}s "
              f"{r['seen_after_s']:>12.1f}s{'' if r['ok'] else '  (round FAILED)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
