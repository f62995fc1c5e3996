"""Five campaigns at once on two sites, watched by ONE triggerer, counted ON THE SITES.

3 runs of ``rg_campaign`` on the Slurm site and 2 on the HTCondor pool (one RG step of two
batches each), triggered together through the REST API of the real deployment. Both sites
are busy at first, as shared clusters are: a job of the test's own holds every CPU, so the
campaigns' units wait in the queue while their rounds are deferred; the test removes it
once one status command has named every round of that site (Airflow starts the five runs'
tasks some seconds apart; without it, each round of a few seconds would be watched alone).
Each site is reached through a connection of its own whose ``env_script`` is the headline
test's command counter (count_commands.sh): every command a batchsite process runs there is
logged with its SSH client port (one port = one SSH connection), and sshd's log says how
often each port was accepted.

A *watching* connection is one that ran status commands and nothing else (apart from the
scheduler probe a poller sends first): a poller of the triggerer. While the runs go, the
triggerer's processes are sampled (psutil) for their SSH client ports: every watching
connection must be one of them. Counted per site, over the whole run:

* status commands per poll cycle: the most one connection sent within 0.9 poll interval,
  the fewest seconds between two, and the most rounds one command named (rounds of several
  campaigns in ONE command);
* SSH connections of the triggerer to the site: opened over the run (a poller closes its
  connection once no round of the site is watched; here every round of a site is watched in
  one stretch) and open at the same time (the most: in the triggerer's sampled sockets, or
  by overlapping commands); each accepted once by sshd (never reconnected);
* failed polls: the poller's warnings ("unreachable", "not answering", "poller ... failed",
  each naming the connection) in the triggerer's log and in the rounds' trigger logs.

The table printed at the end holds only these measured numbers (the README shows it).
"""

from __future__ import annotations

import json
import shlex
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil

from batchsite.backends.common import SECTION

from ..conftest import STATE, on_site, site_conn
from ..reliability.counting import round_count
from .test_deployment import DAG, _alive_triggerers, _round_keys, _slurm_conf, _trigger, _trigger_log_owners, _wait
from .test_headline import SiteCommand, _accepted, _install_counter, _over_ssh

#: campaigns per site, each one RG step (one round) of BATCHES batches
CAMPAIGNS = {"slurm": 3, "htcondor": 2}
BATCHES = 2
POLL_INTERVAL = 1.0
#: the first section of every status script (batchsite.backends.slurm / htcondor render_status_script)
STATUS_MARKS = {"slurm": f"{SECTION} squeue", "htcondor": f"{SECTION} condor_q"}
#: the first section of the scheduler probe a poller sends once (both backends' probe_script)
PROBE_MARK = f"{SECTION} version"
#: what batchsite.polling.SitePoller logs when a poll fails
FAILED_POLL_TEXTS = ("unreachable (", "not answering", "poller for site")
RUN_TIMEOUT = 240.0
#: how long the blocking job may live at most (the test removes it long before)
BLOCK_SECONDS = 170


@dataclass(frozen=True)
class SiteCount:
    """What one site saw of the triggerer, counted in its command log and sshd's log."""

    scheduler: str
    campaigns: int
    rounds: int
    status_commands: int  # sent by the triggerer
    most_per_cycle: int  # by one connection within 0.9 poll interval
    min_gap: float  # seconds between two on one connection
    most_rounds_named: int  # by one status command
    connections: int  # opened by the triggerer to this site over the run
    at_once: int  # of those, open at the same time (the most)
    accepts: list[int]  # sshd's accepts of each
    ports: frozenset[int]  # their client ports
    failed_polls: int


class PortSampler:
    """The SSH client ports of the triggerer's processes (leader and children), sampled:
    one set per sample."""

    def __init__(self, pid: int, ssh_port: int, every: float = 0.3):
        self.pid, self.ssh_port, self.every = pid, ssh_port, every
        self.samples: list[frozenset[int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="triggerer-port-sampler", daemon=True)

    def __enter__(self) -> PortSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    @property
    def ports(self) -> set[int]:
        return set().union(*self.samples)

    def _run(self) -> None:
        while not self._stop.is_set():
            ports = set()
            try:
                leader = psutil.Process(self.pid)
                for p in [leader, *leader.children(recursive=True)]:
                    ports |= {c.laddr.port for c in p.net_connections(kind="tcp")
                              if c.raddr and c.raddr.port == self.ssh_port}
            except psutil.Error:
                pass  # a child that just ended; the next sample sees the rest
            self.samples.append(frozenset(ports))
            self._stop.wait(self.every)


class SiteBlocker:
    """A job of the test's own holding every CPU of the Slurm node / the HTCondor pool's
    partitionable slot (a busy cluster), until ``remove``; ``wait_running`` before the
    campaigns submit, so that their units queue behind it."""

    def __init__(self, info: dict, scheduler: str, name: str):
        self.info, self.scheduler, self.name = info, scheduler, name
        if scheduler == "slurm":
            cpus = int(self._on_site("sinfo -h -o %c").split()[0])
            self.job = self._on_site(f"sbatch --parsable -J {name} -c {cpus} -t {BLOCK_SECONDS // 60 + 1} "
                                     f"-o /dev/null --wrap 'sleep {BLOCK_SECONDS}'").strip().split(";")[0]
        else:
            cpus = max(int(x) for x in self._on_site("condor_status -af TotalSlotCpus").split())
            # an explicit +MaxRuntime: the pool gives jobs without one espresso's (scaled) limit, seconds
            description = ["executable=/bin/sleep", f"arguments={BLOCK_SECONDS}", f"request_cpus={cpus}",
                           "request_memory=16", f"+MaxRuntime={BLOCK_SECONDS + 60}", f"batch_name={name}",
                           "output=/dev/null", "error=/dev/null", "queue"]
            out = self._on_site(f"printf '%s\\n' {' '.join(shlex.quote(x) for x in description)} | condor_submit -terse")
            self.job = out.split()[0].split(".")[0]

    def _on_site(self, command: str) -> str:
        r = on_site(self.info, command)
        assert r.returncode == 0, f"{command}: {r.stdout}{r.stderr}"
        return r.stdout

    def running(self) -> bool:
        if self.scheduler == "slurm":
            return self._on_site(f"squeue -h -j {self.job} -o %T").strip() == "RUNNING"
        return self._on_site(f"condor_q {self.job} -af JobStatus").strip() == "2"

    def wait_running(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not self.running():
            assert time.monotonic() < deadline, f"{self.scheduler} blocking job {self.job} not running after {timeout:g} s"
            time.sleep(1)

    def remove(self) -> None:
        """Remove the job (whatever the answer: it may have ended by itself meanwhile)."""
        on_site(self.info, f"scancel {self.job}" if self.scheduler == "slurm" else f"condor_rm {self.job}")


def _is_watching(commands: list[SiteCommand], scheduler: str) -> bool:
    """A poller's connection: status commands only, after at most one scheduler probe."""
    status = [c for c in commands if STATUS_MARKS[scheduler] in c.text]
    others = [c for c in commands if STATUS_MARKS[scheduler] not in c.text]
    return bool(status) and len(others) <= 1 and all(PROBE_MARK in c.text for c in others)


def _most_within(times: list[float], span: float) -> int:
    return max((sum(1 for u in times if t <= u < t + span) for t in times), default=0)


def _most_overlapping(spans: list[tuple[float, float]]) -> int:
    return max((sum(1 for a, b in spans if a <= t <= b) for t, _ in spans), default=0)


def _watching(log: Path, script: Path, scheduler: str) -> dict[int, list[SiteCommand]]:
    """client port -> the status commands of each watching connection so far, in order."""
    by_port: dict[int, list[SiteCommand]] = {}
    for c in _over_ssh(log, script):  # in the order they ran
        by_port.setdefault(c.client_port, []).append(c)
    return {port: [c for c in cmds if STATUS_MARKS[scheduler] in c.text]
            for port, cmds in by_port.items() if _is_watching(cmds, scheduler)}


def _count_site(scheduler: str, log: Path, script: Path, keys: list[str], sshd_from: int,
                sampled: list[frozenset[int]], failed_polls: int) -> SiteCount:
    watching = _watching(log, script, scheduler)
    status = [c for cmds in watching.values() for c in cmds]
    gaps = [b.at - a.at for cmds in watching.values() for a, b in zip(cmds, cmds[1:])]
    return SiteCount(
        scheduler=scheduler, campaigns=CAMPAIGNS[scheduler], rounds=len(keys), status_commands=len(status),
        most_per_cycle=max((_most_within([c.at for c in cmds], 0.9 * POLL_INTERVAL) for cmds in watching.values()),
                           default=0),
        min_gap=min(gaps, default=float("nan")),
        most_rounds_named=max((sum(1 for k in keys if k in c.text) for c in status), default=0),
        connections=len(watching),
        at_once=max(_most_overlapping([(cmds[0].at, cmds[-1].at) for cmds in watching.values()]),
                    max((len(sample & watching.keys()) for sample in sampled), default=0)),
        accepts=[_accepted(port, since=sshd_from) for port in sorted(watching)],
        ports=frozenset(watching), failed_polls=failed_polls)


def _failed_polls(deployment, triggerer_from: int, run_ids: list[str]) -> list[str]:
    """The poller's warnings (each names the site's connection id) in the triggerer's own log,
    written since the test began, and in every trigger log of the runs (a poller logs into the
    log of the trigger it was started for)."""
    texts = [deployment.log_of("triggerer").read_bytes()[triggerer_from:].decode(errors="replace")]
    for run_id in run_ids:
        runs = deployment.home / "logs" / f"dag_id={DAG}" / f"run_id={run_id}"
        texts += [f.read_text(errors="replace") for f in runs.glob("task_id=*/map_index=*/attempt=*.log.trigger.*.log")]
    return [line for text in texts for line in text.splitlines() if any(t in line for t in FAILED_POLL_TEXTS)]


def _table(counts: list[SiteCount], triggerers: int, sites_at_once: int, released: dict[str, float],
           took: float) -> str:
    rows = ["| Site | Campaigns (rounds) | Status commands by the triggerer | Most per poll cycle "
            "| Fewest s between two | Most rounds in one command | SSH connections opened by the triggerer "
            "| Open at once (most) | sshd accepts per connection | Failed polls |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for c in counts:
        rows.append(f"| {c.scheduler} | {c.campaigns} ({c.rounds}) | {c.status_commands} | {c.most_per_cycle} "
                    f"| {c.min_gap:.2f} | {c.most_rounds_named} | {c.connections} | {c.at_once} "
                    f"| {max(c.accepts, default=0)} | {c.failed_polls} |")
    busy = ", ".join(f"{s} {t:.0f} s" for s, t in released.items())
    rows.append(f"\n{sum(c.campaigns for c in counts)} campaigns on {len(counts)} sites, {triggerers} triggerer "
                f"(its connections to {sites_at_once} sites open at once), poll interval {POLL_INTERVAL:g} s; "
                f"busy site released after {busy}; every run done {took:.0f} s after the trigger requests")
    return "\n".join(rows)


def test_five_campaigns_on_slurm_and_htcondor_are_watched_by_one_triggerer(deployment):
    site = deployment.site
    client = deployment.client()
    tag = f"cc{uuid.uuid4().hex[:8]}"
    root = Path(site["remote_root"]) / "test" / tag
    counters: dict[str, tuple[Path, Path]] = {}
    conn_ids: dict[str, str] = {}
    for scheduler in CAMPAIGNS:
        counters[scheduler] = _install_counter(site, root / scheduler)
        conn_ids[scheduler] = f"concurrency_{scheduler}_{tag}"
        conn = site_conn(site, scheduler, env_script=str(counters[scheduler][0]), poll_interval=POLL_INTERVAL)
        client.request("POST", "/connections", json={
            "connection_id": conn_ids[scheduler], "conn_type": conn["conn_type"], "host": conn["host"],
            "port": conn["port"], "login": conn["login"], "extra": json.dumps(conn["extra"])})
    sshd_from = (STATE / "log" / "sshd.log").stat().st_size
    triggerer_from = deployment.log_of("triggerer").stat().st_size
    triggerer = deployment.processes["triggerer"]
    blockers: dict[str, SiteBlocker] = {}
    released: dict[str, float] = {}
    try:
        for scheduler in CAMPAIGNS:
            blockers[scheduler] = SiteBlocker(site, scheduler, f"{tag}-busy")
        for blocker in blockers.values():
            blocker.wait_running()
        t0 = time.monotonic()
        runs: dict[str, list[tuple[str, str]]] = {s: [] for s in CAMPAIGNS}  # scheduler -> [(version, run id)]
        for n in range(max(CAMPAIGNS.values())):
            for scheduler, campaigns in CAMPAIGNS.items():
                if n < campaigns:
                    version = f"{tag}{scheduler[0]}{n}"
                    conf = _slurm_conf(version, conn_id=conn_ids[scheduler], steps=1, batches=BATCHES,
                                       throttle=BATCHES)
                    runs[scheduler].append((version, _trigger(client, conf)))
        run_ids = [run_id for pairs in runs.values() for _, run_id in pairs]
        with PortSampler(triggerer.pid, int(site["port"])) as sampler:
            # a site's blocking job goes once one status command named every round of the site
            deadline = time.monotonic() + RUN_TIMEOUT
            submitted: dict[str, list[str]] = {}  # version -> its round's key, once the round is submitted
            while len(released) < len(blockers):
                deployment.fail_if_dead()
                assert time.monotonic() < deadline, f"not every round was watched at once (released: {released}); " \
                    + "; ".join(client.describe_tasks(DAG, r) for r in run_ids)
                for scheduler, pairs in runs.items():
                    for version, _ in pairs:
                        submitted[version] = submitted.get(version) or _round_keys(site, version, 1)
                    keys = [k for version, _ in pairs for k in submitted[version]]
                    script, log = counters[scheduler]
                    if scheduler not in released and len(keys) == len(pairs) and any(
                            all(k in c.text for k in keys) for cmds in _watching(log, script, scheduler).values()
                            for c in cmds):
                        blockers[scheduler].remove()
                        released[scheduler] = time.monotonic() - t0
                time.sleep(0.5)
            finished = {run_id: _wait(deployment, client, run_id, timeout=RUN_TIMEOUT) for run_id in run_ids}
        took = time.monotonic() - t0
    finally:
        for scheduler, blocker in blockers.items():
            if scheduler not in released:
                blocker.remove()
    for run_id, run in finished.items():
        assert run["state"] == "success", client.failure_report(DAG, run_id)

    alive = _alive_triggerers(client)
    assert len(alive) == 1, alive
    failed = _failed_polls(deployment, triggerer_from, run_ids)
    counts = []
    for scheduler, pairs in runs.items():
        keys = [k for version, _ in pairs for k in _round_keys(site, version, 1)]
        assert len(keys) == len(pairs), keys
        # every round ran once, every unit and the fan-in done (counted by the scheduler)
        for key in keys:
            counted = round_count(site, scheduler, key, units=BATCHES)
            assert (counted.lost, counted.double) == (0, 0), (key, counted.states)
        # every round was watched in THE triggerer
        for _, run_id in pairs:
            assert _trigger_log_owners(deployment, run_id, "round_01.submit") == {str(alive[0]["id"])}
        script, log = counters[scheduler]
        counts.append(_count_site(scheduler, log, script, keys, sshd_from, sampler.samples,
                                  sum(1 for line in failed if conn_ids[scheduler] in line)))
    # both sites' connections open in the triggerer at the same moment (sampled sockets)
    both = max((sum(1 for c in counts if sample & c.ports) for sample in sampler.samples), default=0)
    print("\n" + _table(counts, len(alive), both, released, took))

    for c in counts:
        what = f"{c.scheduler}: {c}"
        assert c.most_rounds_named == c.campaigns, what  # every campaign's round in ONE command
        assert c.most_per_cycle == 1 and c.min_gap >= 0.5 * POLL_INTERVAL, what
        assert c.connections == 1 and c.at_once == 1 and c.accepts == [1], what
        # the watching connections are the triggerer's own: its processes held these client ports
        assert c.ports <= sampler.ports, (c.ports, sampler.ports)
    assert both == len(CAMPAIGNS)
    assert failed == [], failed
    client.close()
