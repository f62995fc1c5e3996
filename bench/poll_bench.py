"""Benchmark (prints, does not assert): remote commands per poll cycle and SSH connections
per task, batchsite's shared site poller side by side with per-round polling.

    .venv/bin/python bench/poll_bench.py [--site slurm|htcondor|local] [--cycles 3]

Needs the real test site for slurm/htcondor (``bash tests/site/site.sh start``,
``start-condor``). For each K in 1, 10, 50 it submits K small rounds (1 unit, sleeping),
then watches them for a few cycles

* shared: K watchers on ONE ``SitePoller`` (what the triggerer does) and
* per-round: K pollers, each with its own connection (what per-task polling does),

counting the status commands actually sent and the connections opened, and cancels all.
It also counts connections opened by one task (submit + status + cancel) through
``BatchSiteHook``'s transport versus one connection per command.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from batchsite.backends.base import get_backend  # noqa: E402
from batchsite.config import local_site_config, site_config_from_connection  # noqa: E402
from batchsite.hooks.connection import async_transport_for_conn, site_for_conn  # noqa: E402
from batchsite.model import RoundSpec, WorkUnit  # noqa: E402
from batchsite.polling import SitePoller  # noqa: E402


def site_config(kind: str):
    if kind == "local":
        return local_site_config(str(REPO / ".state" / "bench-local"))
    info = json.loads((REPO / ".state" / "site" / "site.json").read_text())
    conn = {"conn_type": "batchsite", "host": info["host"], "port": info["port"], "login": info["user"],
            "extra": {"scheduler": kind, "remote_root": info["remote_root"], "env_script": info["env_script"],
                      "key_file": info["key_file"], "known_hosts": info["known_hosts"], "poll_interval": 0.2}}
    os.environ["AIRFLOW_CONN_BENCH_SITE"] = json.dumps(conn)
    return site_config_from_connection("bench_site", conn["host"], conn["port"], conn["login"], conn["extra"])


def submit_rounds(cfg, k: int, tag: str):
    site = site_for_conn(cfg)
    subs = []
    for i in range(k):
        key = f"bench-{tag}-{i}"
        spec = RoundSpec(key=key, label=key, workdir=f"{cfg.remote_root}/.batchsite/bench/{key}",
                         units=[WorkUnit(index=0, argv=["sleep", "120"])], env_script=cfg.env_script)
        subs.append(site.submit(spec))
    return site, subs


async def watch(pollers: list[SitePoller], subs, cycles: int) -> None:
    async def one(p, s):
        n = 0
        async for _ in p.watch(s):
            n += 1
            if n >= cycles:
                return

    await asyncio.gather(*(one(p, s) for p, s in zip(pollers, subs)))


def measure(cfg, subs, cycles: int, shared: bool) -> tuple[float, int, float]:
    def poller():
        return SitePoller(cfg.conn_id, async_transport_for_conn(cfg), get_backend(cfg.scheduler), interval=0.2)

    if shared:
        p = poller()
        pollers = [p] * len(subs)
        distinct = [p]
    else:
        pollers = [poller() for _ in subs]
        distinct = pollers
    t0 = time.monotonic()
    asyncio.run(watch(pollers, subs, cycles))
    wall = time.monotonic() - t0
    # probe commands are once per connection; count status commands per cycle
    status_cmds = sum(p.cycles for p in distinct)
    conns = sum(p.transport.counters.connections_opened for p in distinct)
    return status_cmds / cycles, conns, wall


def connections_per_task(cfg) -> tuple[int, int]:
    tag = uuid.uuid4().hex[:6]
    site, subs = submit_rounds(cfg, 1, f"task-{tag}")
    site.status(subs)
    site.status(subs)
    site.cancel(subs)
    ours = site.transport.counters.connections_opened
    cmds = site.transport.counters.commands_run
    site.close()
    return ours, cmds  # per-command connections would open `cmds` connections


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--site", default="slurm", choices=["slurm", "htcondor", "local"])
    ap.add_argument("--cycles", type=int, default=3)
    ap.add_argument("--ks", default="1,10,50")
    a = ap.parse_args()
    cfg = site_config(a.site)
    print(f"site: {a.site} ({cfg.transport}); {a.cycles} poll cycles per measurement")
    print(f"{'K':>4} | {'shared: cmds/cycle':>18} {'conns':>5} | {'per-round: cmds/cycle':>21} {'conns':>5} | ratio")
    for k in [int(x) for x in a.ks.split(",")]:
        tag = uuid.uuid4().hex[:6]
        site, subs = submit_rounds(cfg, k, tag)
        try:
            s_cmds, s_conns, _ = measure(cfg, subs, a.cycles, shared=True)
            n_cmds, n_conns, _ = measure(cfg, subs, a.cycles, shared=False)
        finally:
            site.cancel(subs)
            site.close()
        print(f"{k:>4} | {s_cmds:>18.1f} {s_conns:>5} | {n_cmds:>21.1f} {n_conns:>5} | {n_cmds / s_cmds:.0f}x fewer")
    ours, cmds = connections_per_task(cfg)
    print(f"one task (submit + 2 status + cancel = {cmds} remote commands): {ours} SSH connection(s) opened; "
          f"one connection per command would open {cmds} ({cmds / max(ours, 1):.0f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
