"""The headline claim, counted ON THE SITE in the real deployment: with K rounds of N campaigns
watched on one site by one triggerer, exactly ONE status command per poll cycle reaches the
site, over ONE SSH connection.

The connection's ``env_script`` is tests/deployment/count_commands.sh: the site's login shell
sources it before every command any batchsite process runs there, and it logs the time, the
SSH client port (one port = one connection) and the command itself. sshd's own log says how
many times that client port was accepted. N runs of tests/dags/batchsite_headline.py (K
rounds each, one unit waiting for a release file) are triggered through the REST API; once
all K x N rounds are deferred, the log is sampled over several poll cycles.
"""

from __future__ import annotations

import base64
import json
import os
import pwd
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from batchsite import shellscripts
from batchsite.backends.common import SECTION

from ..airflow_runs import slurm_jobs_named
from ..conftest import STATE, site_conn

DAG = "batchsite_headline"
CAMPAIGNS = 3
ROUNDS = 2  # tests/dags/batchsite_headline.py ROUNDS
POLL_INTERVAL = 1.0
WINDOW = 8.0  # seconds sampled while every round is deferred
COUNTER = Path(__file__).with_name("count_commands.sh")
#: the header of the squeue section every Slurm status script prints first
#: (batchsite.backends.slurm.render_status_script; quoted inside the command line)
STATUS_MARK = f"{SECTION} squeue"


@dataclass(frozen=True)
class SiteCommand:
    at: float
    client_port: int
    text: str


def _read_commands(log: Path) -> list[SiteCommand]:
    out = []
    for line in log.read_text().splitlines():
        at, client, b64 = line.split("|", 2)
        # "none": a job sourcing the env script (HTCondor's jobs have no SSH_CLIENT); port 0
        port = int(client.split()[1]) if client != "none" else 0
        out.append(SiteCommand(float(at), port, base64.b64decode(b64).decode(errors="replace")))
    return out


def _over_ssh(log: Path, script: Path) -> list[SiteCommand]:
    """The commands a batchsite connection ran (its line starts by sourcing the env script);
    jobs that source it too (unit.sh) have no command line and are left out."""
    return [c for c in _read_commands(log) if c.text.startswith(f". {script} ")]


def _names_all(command: SiteCommand, jobs: list[str]) -> bool:
    return all(re.search(rf"\b{j}\b", command.text) for j in jobs)


def _accepted(port: int, since: int = 0) -> int:
    """sshd's log lines accepting a connection from client ``port`` (from byte ``since`` of
    the log on: a client port is reused by other connections over a day of tests)."""
    text = (STATE / "log" / "sshd.log").read_bytes()[since:].decode(errors="replace")
    return len(re.findall(rf"Accepted publickey for \S+ from 127\.0\.0\.1 port {port} ", text))


def _install_counter(site: dict, where: Path) -> tuple[Path, Path]:
    """The counting env script and its (empty) log, on the site, owned by the site user."""
    user = pwd.getpwnam(site["user"])
    where.mkdir(parents=True)
    script, log = where / "count_commands.sh", where / "commands.log"
    script.write_text(shellscripts.with_values(COUNTER.read_text(), site_env=site["env_script"],
                                               command_log=str(log)))
    log.touch()
    for p in (where, script, log):
        os.chown(p, user.pw_uid, user.pw_gid)
    return script, log


def _deferred(client, run_ids: list[str]) -> int:
    return sum(1 for run_id in run_ids for t in client.task_instances(DAG, run_id) if t["state"] == "deferred")


def test_k_rounds_of_n_campaigns_cost_one_status_command_per_cycle_over_one_connection(deployment):
    site = deployment.site
    client = deployment.client()
    tag = f"hl{uuid.uuid4().hex[:8]}"
    root = Path(site["remote_root"]) / "test" / tag
    script, log = _install_counter(site, root / "counter")
    release = root / "release"
    conn_id = f"headline_{tag}"
    conn = site_conn(site, "slurm", env_script=str(script), poll_interval=POLL_INTERVAL)
    client.request("POST", "/connections", json={
        "connection_id": conn_id, "conn_type": conn["conn_type"], "host": conn["host"], "port": conn["port"],
        "login": conn["login"], "extra": json.dumps(conn["extra"])})
    client.unpause(DAG)
    t0 = time.monotonic()
    run_ids = [client.trigger(DAG, {"tag": f"{tag}c{n}", "site": conn_id, "release": str(release)},
                              run_id=f"{tag}-c{n}") for n in range(CAMPAIGNS)]
    try:
        deadline = time.monotonic() + 150
        while _deferred(client, run_ids) < CAMPAIGNS * ROUNDS:
            deployment.fail_if_dead()
            assert time.monotonic() < deadline, "not all rounds deferred: " + "; ".join(
                client.describe_tasks(DAG, r) for r in run_ids)
            time.sleep(0.5)
        all_deferred = time.monotonic() - t0
        jobs = sorted({job for n in range(CAMPAIGNS) for r in range(ROUNDS) for job in _round_jobs(site, f"{tag}c{n}", r)})
        assert len(jobs) == CAMPAIGNS * ROUNDS * 2, jobs  # array + fan-in per round
        # "deferred" is set before the triggerer picks a trigger up: the window starts at the
        # first status command naming every round's jobs
        while not (covering := [c for c in _over_ssh(log, script) if _names_all(c, jobs)]):
            assert time.monotonic() < deadline, "no status command ever named every round's jobs"
            time.sleep(0.5)
        start = covering[0].at
        time.sleep(max(0.0, start + WINDOW - time.time()))
        end = time.time()
        # still all deferred: nothing but watching happened in the window
        assert _deferred(client, run_ids) == CAMPAIGNS * ROUNDS, [client.describe_tasks(DAG, r) for r in run_ids]
    finally:
        release.touch()
        os.chown(release, pwd.getpwnam(site["user"]).pw_uid, -1)

    commands = _over_ssh(log, script)
    window = [c for c in commands if start <= c.at <= end]
    # every command that reached the site while the rounds were deferred was ONE status
    # command for all K x N rounds
    assert all(STATUS_MARK in c.text and _names_all(c, jobs) for c in window), [c.text[:300] for c in window]
    # one per poll cycle: never two in one cycle, about one per interval (+ the command's time)
    gaps = [b.at - a.at for a, b in zip(window, window[1:])]
    assert len(window) >= 0.4 * WINDOW / POLL_INTERVAL, (len(window), gaps)
    assert min(gaps) >= 0.5 * POLL_INTERVAL, gaps
    # over ONE connection: one client port, accepted once by sshd, whose first command was the
    # poller's scheduler probe (one poller, never reconnected)
    ports = {c.client_port for c in window}
    assert len(ports) == 1, ports
    port = next(iter(ports))
    assert _accepted(port) == 1
    on_port = [c for c in commands if c.client_port == port]
    assert STATUS_MARK not in on_port[0].text and sum(STATUS_MARK not in c.text for c in on_port) == 1, \
        [c.text[:200] for c in on_port if STATUS_MARK not in c.text]
    alive = client.request("GET", "/jobs", params={"job_type": "TriggererJob", "is_alive": "true"})["jobs"]
    assert len(alive) == 1, alive
    print(f"\nheadline: {CAMPAIGNS} campaigns x {ROUNDS} rounds deferred {all_deferred:.0f} s after the trigger; "
          f"{len(window)} status commands in {end - start:.1f} s (interval {POLL_INTERVAL:g} s, gaps "
          f"{min(gaps):.2f}-{max(gaps):.2f} s), each naming all {len(jobs)} jobs, over 1 connection (client port "
          f"{port}, {len(on_port)} commands on it in all); {len(commands)} commands reached the site over SSH")

    for run_id in run_ids:
        run = client.wait_for_run(DAG, run_id, timeout=180, interval=1)
        assert run["state"] == "success", client.failure_report(DAG, run_id)
    client.close()


def _round_jobs(site: dict, tag: str, r: int) -> list[str]:
    """Slurm job ids (array + fan-in) of round ``r`` of the run tagged ``tag``."""
    d = Path(site["remote_root"]) / "test" / tag / f"r{r}"
    keys = [p.name for p in d.iterdir() if (p / ".batchsite" / "submitted").exists()]
    assert len(keys) == 1, keys
    return slurm_jobs_named(site, keys[0])
