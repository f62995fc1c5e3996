"""50 mapped watchers in one real Airflow deployment: batchsite versus the SSH provider's
``SSHRemoteJobOperator``, side by side in one run, counted on the site.

Run: ``.venv/bin/python bench/watchers_bench.py`` (root, the test site up: ``bash
tests/site/site.sh start``). It starts the deployment of tests/deployment (api-server,
scheduler, dag-processor, triggerer on PostgreSQL, LocalExecutor) and a second sshd for the
site user whose ``ForceCommand`` (bench/count_ssh_commands.sh) logs every command any client
runs, with its exit code. Both DAGs of tests/dags/bench_watchers.py connect to that sshd: N
mapped tasks, each starting one remote process that waits for a release file, watched
deferred with the same poll interval. Once all N are deferred, a window of several poll
cycles is sampled; then the release file is written and the run must succeed.

Counted, per system: SSH connections accepted by sshd (whole run, and during the window),
remote commands per poll cycle in the window, failed remote commands (non-zero exit; the
watchers' own processes all exit 0), sshd refusals (MaxStartups drops), and the CPU seconds
the triggerer's process tree used in the window.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.conftest import STATE, condor_pool, on_site, site_conn, site_info  # noqa: E402,F401 (fixtures)
from tests.dags.bench_watchers import POLL_SECONDS, WATCHERS  # noqa: E402
from tests.deployment.conftest import deployment  # noqa: E402,F401 (fixture)

COUNTER = Path(__file__).with_name("count_ssh_commands.sh")
SYSTEMS = {"batchsite": "bench_batchsite_watchers", "SSHRemoteJobOperator": "bench_ssh_remote_job_watchers"}
WINDOW_CYCLES = 6
DEFER_TIMEOUT = 900.0


@dataclass
class CountingSshd:
    port: int
    known_hosts: Path
    sshd_log: Path
    command_log: Path

    def accepted(self) -> int:
        return len(re.findall(r"^Accepted publickey for ", self._text(self.sshd_log), re.M))

    def refused(self) -> int:
        """Connections sshd dropped before authentication (MaxStartups throttling, banner errors)."""
        text = self._text(self.sshd_log)
        return len(re.findall(r"drop connection|Connection closed by .* \[preauth\]|banner exchange", text))

    def commands(self) -> list[tuple[float, int, int]]:
        """(start time, client port, exit code) of every command run so far."""
        out = []
        for line in self._text(self.command_log).splitlines():
            start, port, rc, _ = line.split("|", 3)
            out.append((float(start), int(port), int(rc)))
        return out

    @staticmethod
    def _text(path: Path) -> str:
        return path.read_text(errors="replace") if path.exists() else ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def counting_sshd(info: dict, workdir: Path) -> Iterator[CountingSshd]:
    """A second sshd for the site user: the site's own config, another port, every command
    through the counter. The site's sshd (and what the tests count there) is left alone."""
    user = pwd.getpwnam(info["user"])
    workdir.mkdir(parents=True, exist_ok=True)
    logs = workdir / "logs"
    logs.mkdir()
    os.chown(logs, user.pw_uid, user.pw_gid)  # the counter runs as the site user
    os.chmod(workdir, 0o755)
    counter = workdir / COUNTER.name
    shutil.copy(COUNTER, counter)
    counter.chmod(0o755)
    port = _free_port()
    sshd = CountingSshd(port=port, known_hosts=workdir / "known_hosts", sshd_log=workdir / "sshd.log",
                        command_log=logs / "commands.log")
    site_config = (STATE / "ssh" / "sshd_config").read_text()
    config = re.sub(r"^Port .*$", f"Port {port}", site_config, flags=re.M)
    config = re.sub(r"^PidFile .*$", f"PidFile {workdir / 'sshd.pid'}", config, flags=re.M)
    config += f"ForceCommand {counter} {sshd.command_log}\nLogLevel VERBOSE\n"
    (workdir / "sshd_config").write_text(config)
    sshd.known_hosts.write_text(f"[127.0.0.1]:{port} {info['host_key']}\n")
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-f", str(workdir / "sshd_config"), "-E", str(sshd.sshd_log)])
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the counting sshd exited with {proc.returncode}: "
                                   f"{sshd._text(sshd.sshd_log)[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the counting sshd does not listen on {port}") from None
                time.sleep(0.1)
        yield sshd
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _add_connections(client, info: dict, sshd: CountingSshd) -> None:
    batchsite = site_conn(info, "local", poll_interval=POLL_SECONDS, known_hosts=str(sshd.known_hosts))
    batchsite["port"] = sshd.port
    ssh_extra = {"key_file": info["key_file"], "host_key": info["host_key"], "known_hosts": str(sshd.known_hosts),
                 "no_host_key_check": False}
    for conn_id, body in (("bench_batchsite", {**batchsite, "extra": json.dumps(batchsite["extra"])}),
                          ("bench_ssh", {"conn_type": "ssh", "host": info["host"], "port": sshd.port,
                                         "login": info["user"], "extra": json.dumps(ssh_extra)})):
        client.request("POST", "/connections", json={"connection_id": conn_id, **body})


def _tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and all its live descendants."""
    total = 0.0
    root = psutil.Process(pid)
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


@dataclass
class Measured:
    system: str
    connections_total: int
    connections_window: int
    commands_per_cycle: float
    failed_commands: int
    refused: int
    triggerer_cpu_window: float
    all_deferred_s: float
    done_after_release_s: float


def _measure(dep, client, info: dict, sshd: CountingSshd, system: str, dag_id: str) -> Measured:
    tag = uuid.uuid4().hex[:8]
    release = f"{info['remote_root']}/bench/release-{tag}"
    accepted0, refused0, commands0 = sshd.accepted(), sshd.refused(), len(sshd.commands())
    client.unpause(dag_id)
    t0 = time.monotonic()
    run_id = client.trigger(dag_id, {"tag": tag, "release": release})
    deadline = t0 + DEFER_TIMEOUT
    while True:
        dep.fail_if_dead()
        tis = client.task_instances(dag_id, run_id)
        states = [t["state"] for t in tis if t["map_index"] >= 0]
        if len(states) == WATCHERS and all(s == "deferred" for s in states):
            break
        bad = [t for t in tis if t["state"] in ("failed", "upstream_failed")]
        assert not bad, client.failure_report(dag_id, run_id)
        assert time.monotonic() < deadline, f"{system}: not all deferred: {client.describe_tasks(dag_id, run_id)}"
        time.sleep(1)
    all_deferred = time.monotonic() - t0
    triggerer = dep.processes["triggerer"].pid
    window = WINDOW_CYCLES * POLL_SECONDS
    accepted_w0, cpu0, wall0 = sshd.accepted(), _tree_cpu_seconds(triggerer), time.time()
    time.sleep(window)
    accepted_w1, cpu1, wall1 = sshd.accepted(), _tree_cpu_seconds(triggerer), time.time()
    in_window = [c for c in sshd.commands()[commands0:] if wall0 <= c[0] < wall1]
    on_site(info, f"mkdir -p {info['remote_root']}/bench && touch {release}")
    t_release = time.monotonic()
    run = client.wait_for_run(dag_id, run_id, timeout=600, on_poll=lambda _: dep.fail_if_dead(), interval=1)
    assert run["state"] == "success", client.failure_report(dag_id, run_id)
    done = time.monotonic() - t_release
    commands = sshd.commands()[commands0:]
    return Measured(
        system=system, connections_total=sshd.accepted() - accepted0, connections_window=accepted_w1 - accepted_w0,
        commands_per_cycle=len(in_window) / WINDOW_CYCLES, failed_commands=sum(1 for c in commands if c[2] != 0),
        refused=sshd.refused() - refused0, triggerer_cpu_window=cpu1 - cpu0, all_deferred_s=all_deferred,
        done_after_release_s=done)


def test_watchers_side_by_side(deployment, site_info, condor_pool):  # noqa: F811 (fixtures)
    client = deployment.client()
    deployment.wait_for_dags(client, tuple(SYSTEMS.values()))
    with tempfile.TemporaryDirectory(prefix="bench-sshd-") as tmp, counting_sshd(condor_pool, Path(tmp)) as sshd:
        _add_connections(client, condor_pool, sshd)
        rows = [_measure(deployment, client, condor_pool, sshd, system, dag_id) for system, dag_id in SYSTEMS.items()]
    cycles = f"{WINDOW_CYCLES} cycles of {POLL_SECONDS} s"
    print(f"\n{WATCHERS} mapped watchers, one triggerer, poll every {POLL_SECONDS} s, window {cycles}; "
          "counted by the site's sshd and a ForceCommand counter\n")
    header = ("| system | SSH connections (whole run) | connections in the window | remote commands per poll "
              "cycle | failed remote commands | sshd refusals | triggerer CPU in the window (s) | "
              "all deferred after (s) | done after release (s) |")
    print(header)
    print("|" + "---|" * header.count(" | ") + "---|")
    for m in rows:
        print(f"| {m.system} | {m.connections_total} | {m.connections_window} | {m.commands_per_cycle:.1f} | "
              f"{m.failed_commands} | {m.refused} | {m.triggerer_cpu_window:.2f} | {m.all_deferred_s:.0f} | "
              f"{m.done_after_release_s:.0f} |")
    ours, theirs = rows
    if ours.commands_per_cycle:
        print(f"\nratio SSHRemoteJobOperator / batchsite: commands per cycle "
              f"{theirs.commands_per_cycle / ours.commands_per_cycle:.1f}x, connections "
              f"{theirs.connections_total / max(ours.connections_total, 1):.1f}x, triggerer CPU "
              f"{theirs.triggerer_cpu_window / max(ours.triggerer_cpu_window, 1e-9):.1f}x")
    assert ours.failed_commands == 0 and ours.refused == 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.parse_args()
    sys.exit(pytest.main([__file__, "-s", "-q", "-p", "no:cacheprovider", "--rootdir", str(REPO)]))
