"""Benchmark: batchsite staging versus ``rsync -a`` and tar-over-ssh on the same site, in one run.

Cases (the same for every tool, each on its own copy of one deterministically generated tree,
2,000 files / ~52 MB in 40 directories): first push into an empty remote dir, 20 files changed
(100 bytes rewritten in each, same size), nothing changed. Each tool runs as a person runs it,
a fresh process per push:

* batchsite: ``python -m batchsite.hooks.staging_cli --action push --code SRC --site-config CFG``
  (transport ``openssh``; its ControlMaster is closed before every first push, so the first push
  pays the SSH handshake, and reused by the next pushes as ``ControlPersist`` does; a cold local
  hash cache for the first push; its bytecode compiled once before the timed runs, as pip does on
  install, also where PYTHONDONTWRITEBYTECODE is set). It sends with rsync where both ends have
  it, else with its tar push; the table says which ran (from the CLI's summary line);
* batchsite in a task: the same push by ``Staging.push_code`` in one long-lived Python process (this
  script's ``--task-worker``, a site built per push): what a StagingHook pays inside an Airflow
  task, where Python and batchsite are loaded already (its own remote dir, ControlMaster and cache);
* ``rsync -a -e "ssh ..." SRC/ site:DEST/`` (a new SSH connection per run);
* ``tar -cf - -C SRC . | ssh site 'tar -xf - -C DEST'`` (always the whole tree).

Network: the clients run inside a network namespace this bench creates, joined to this machine
by a veth pair; a second sshd of the test site (its own sshd_config and host key) listens on the
host end. Two scenarios: no added delay, and 20 ms added RTT. The added RTT is ``tc netem delay
10ms`` on both veth ends where the kernel has ``sch_netem``; else (this test machine's kernel has
no netem) a relay on the host end that holds every chunk 10 ms in each direction before passing
it on to the sshd. Bytes are the veth's rx+tx counters (/proc/net/dev) around each push. Times are
the median of ``--reps`` runs. Everything (namespace, veth, sshd, relay, remote dirs) is removed
on exit.

    sudo .venv/bin/python bench/staging_bench.py [--reps 3] [--files 2000] [--mb 52]

Exits 1 if a batchsite CLI/rsync time ratio is above 1.5 (the target of issue 15); each row says
whether it is within. Needs root
(``ip netns``, ``tc``) and the real test site (``bash tests/site/site.sh start``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import threading
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STATE = REPO / ".state" / "site"
PYTHON = REPO / ".venv" / "bin" / "python"
TARGET_RATIO = 1.5
TOOLS = ("batchsite", "batchsite task", "rsync -a", "tar+ssh")
#: remote dir (under the bench's remote base) of each tool
TOOL_DIRS = {"batchsite": "batchsite", "batchsite task": "batchsite-task", "rsync -a": "rsync", "tar+ssh": "tar"}
CASES = ("first push", "20 changed", "nothing changed")


def sh(*argv: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(list(argv), capture_output=True, text=True, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {r.returncode}: {r.stderr.strip()[-500:]}")
    return r


class Netns:
    """A namespace for the clients, a veth pair to this machine, an sshd on the host end."""

    def __init__(self, site: dict, work: Path):
        tag = str(os.getpid())
        self.name, self.host_if, self.ns_if = f"bsbench{tag}", f"bsbh{tag}"[:15], f"bsbn{tag}"[:15]
        self.host_ip, self.ns_ip = "10.231.77.1", "10.231.77.2"
        self.site, self.work = site, work
        self.sshd: subprocess.Popen | None = None
        self.relays: list[DelayRelay] = []

    def __enter__(self) -> Netns:
        try:
            sh("ip", "netns", "add", self.name)
            sh("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
            sh("ip", "link", "set", self.ns_if, "netns", self.name)
            sh("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
            sh("ip", "link", "set", self.host_if, "up")
            self.ns("ip", "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if)
            self.ns("ip", "link", "set", self.ns_if, "up")
            self.ns("ip", "link", "set", "lo", "up")
            self.sshd = subprocess.Popen(
                ["/usr/sbin/sshd", "-D", "-e", "-f", str(STATE / "ssh" / "sshd_config"),
                 "-o", f"ListenAddress={self.host_ip}", "-o", f"PidFile={self.work / 'sshd.pid'}"],
                stdout=subprocess.DEVNULL, stderr=open(self.work / "sshd.log", "wb"))
            self._wait_for_sshd()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_for_sshd(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.sshd.poll() is not None:
                raise RuntimeError(f"the bench sshd exited: {(self.work / 'sshd.log').read_text()[-500:]}")
            if self.ns("bash", "-c", f"exec 3<>/dev/tcp/{self.host_ip}/{self.site['port']}",
                       check=False).returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError("the bench sshd did not start listening within 20 s")

    def ns(self, *argv: str, **kw) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", self.name, *argv, **kw)

    def set_rtt(self, rtt_ms: int) -> tuple[int, str]:
        """Add ``rtt_ms``; returns the port the clients connect to and how the delay is made."""
        for dev, run in ((self.host_if, sh), (self.ns_if, self.ns)):
            run("tc", "qdisc", "del", "dev", dev, "root", check=False)
        if not rtt_ms:
            return self.site["port"], "none"
        netem = [sh("tc", "qdisc", "add", "dev", dev, "root", "netem", "delay", f"{rtt_ms / 2:g}ms", check=False)
                 for dev in (self.host_if,)]
        if netem[0].returncode == 0:
            self.ns("tc", "qdisc", "add", "dev", self.ns_if, "root", "netem", "delay", f"{rtt_ms / 2:g}ms")
            return self.site["port"], "tc netem"
        relay = DelayRelay((self.host_ip, 0), (self.host_ip, self.site["port"]), rtt_ms / 2000)
        self.relays.append(relay)
        return relay.port, f"relay ({netem[0].stderr.strip()})"

    def wire_bytes(self) -> int:
        for line in Path("/proc/net/dev").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name.strip() == self.host_if:
                fields = rest.split()
                return int(fields[0]) + int(fields[8])
        raise RuntimeError(f"{self.host_if} is not in /proc/net/dev")

    def __exit__(self, *exc) -> None:
        for relay in self.relays:
            relay.close()
        if self.sshd is not None and self.sshd.poll() is None:
            self.sshd.send_signal(signal.SIGTERM)
            self.sshd.wait(timeout=10)
        sh("ip", "link", "del", self.host_if, check=False)
        sh("ip", "netns", "del", self.name, check=False)


class DelayRelay:
    """TCP relay that passes every chunk on ``delay`` seconds after it arrived, in each direction."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int], delay: float):
        self.target, self.delay = target, delay
        self.server = socket.create_server(listen)
        self.port = self.server.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for src, dst in ((client, upstream), (upstream, client)):
                src.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                queue: list = []
                ready = threading.Condition()
                threading.Thread(target=self._read, args=(src, queue, ready), daemon=True).start()
                threading.Thread(target=self._write, args=(dst, queue, ready), daemon=True).start()

    def _read(self, src: socket.socket, queue: list, ready: threading.Condition) -> None:
        while True:
            try:
                data = src.recv(1 << 16)
            except OSError:
                data = b""
            with ready:
                queue.append((time.monotonic() + self.delay, data))
                ready.notify()
            if not data:
                return

    def _write(self, dst: socket.socket, queue: list, ready: threading.Condition) -> None:
        while True:
            with ready:
                while not queue:
                    ready.wait()
                due, data = queue.pop(0)
            time.sleep(max(0.0, due - time.monotonic()))
            try:
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self.closed = True
        self.server.close()


def generate(base: Path, n_files: int, total_mb: int, seed: int = 15) -> None:
    """n_files in 40 directories, sizes 0.5x-1.5x the mean, content from a seeded PRNG."""
    rng = random.Random(seed)
    mean = total_mb * 1_000_000 // n_files
    for i in range(n_files):
        p = base / f"pkg{i % 40:02d}" / f"mod{i:05d}.dat"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rng.randbytes(rng.randint(mean // 2, mean * 3 // 2)))
        os.utime(p, (1_700_000_000 + i, 1_700_000_000 + i))


def change_20(base: Path, rep: int) -> None:
    rng = random.Random(1000 + rep)
    files = sorted(p for p in base.rglob("*.dat"))
    for p in rng.sample(files, 20):
        data = bytearray(p.read_bytes())
        at = len(data) // 2
        data[at:at + 100] = rng.randbytes(100)
        p.write_bytes(bytes(data))


def tree_digest(base: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(base.rglob("*")):
        if p.is_file() and not p.name.startswith(".batchsite-"):
            h.update(p.relative_to(base).as_posix().encode() + b"\0" + hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


class Bench:
    def __init__(self, net: Netns, site: dict, work: Path, remote_base: Path, port: int):
        self.net, self.site, self.work, self.remote_base = net, site, work, remote_base
        self.known_hosts = work / f"known_hosts.{port}"
        self.known_hosts.write_text(f"[{net.host_ip}]:{port} {site['host_key']}\n")
        self.port = port
        self.ssh = ["ssh", "-p", str(port), "-i", site["key_file"], "-o", "IdentitiesOnly=yes",
                    "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={self.known_hosts}",
                    "-o", "StrictHostKeyChecking=yes", "-o", "ControlPath=none"]
        self.login = f"{site['user']}@{net.host_ip}"
        self.site_cfg = {tool: self._site_config(tool, port) for tool in ("batchsite", "batchsite task")}
        self.task: subprocess.Popen | None = None

    def _site_config(self, tool: str, port: int) -> Path:
        path = self.work / f"{TOOL_DIRS[tool]}.{port}.json"
        path.write_text(json.dumps({
            "host": self.net.host_ip, "port": port, "login": self.site["user"],
            "extra": {"scheduler": "slurm", "transport": "openssh",
                      "remote_root": str(self.remote_base / TOOL_DIRS[tool]), "key_file": self.site["key_file"],
                      "known_hosts": str(self.known_hosts), "control_path": str(self.control_path(tool))},
        }))
        return path

    def control_path(self, tool: str) -> Path:
        return self.work / "cm" / f"{TOOL_DIRS[tool]}.{self.port}"

    def dest(self, tool: str) -> Path:
        if tool.startswith("batchsite"):
            return self.remote_base / TOOL_DIRS[tool] / "code" / "source"
        return self.remote_base / TOOL_DIRS[tool]

    def command(self, tool: str, src: Path) -> list[str]:
        dest = self.dest(tool)
        if tool == "batchsite":
            return [str(PYTHON), "-m", "batchsite.hooks.staging_cli", "--action", "push", "--code", str(src),
                    "--site-config", str(self.site_cfg[tool])]
        if tool == "rsync -a":
            return ["rsync", "-a", "-e", " ".join(self.ssh), f"{src}/", f"{self.login}:{dest}/"]
        return ["sh", "-c", f'tar -cf - -C "$1" . | {" ".join(self.ssh)} "$2" "mkdir -p {dest} && tar -xf - -C {dest}"',
                "tar+ssh", str(src), self.login]

    def reset(self, tool: str) -> None:
        shutil.rmtree(self.remote_base / TOOL_DIRS[tool], ignore_errors=True)
        if tool.startswith("batchsite"):
            self.net.ns("ssh", "-o", f"ControlPath={self.control_path(tool)}", "-O", "exit", self.login, check=False)
            shutil.rmtree(self.work / f"hashcache-{TOOL_DIRS[tool]}", ignore_errors=True)

    def push_in_task(self, src: Path) -> tuple[int, str, str]:
        """One push by the long-lived worker (``--task-worker``) in the namespace: what a StagingHook
        pays inside an Airflow task, where Python and batchsite are already loaded."""
        if self.task is None:
            self.task = subprocess.Popen(
                ["ip", "netns", "exec", self.net.name, str(PYTHON), str(Path(__file__).resolve()), "--task-worker",
                 str(self.site_cfg["batchsite task"])],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=str(REPO),
                env=self.env("batchsite task"))
        self.task.stdin.write(f"{src}\n")
        self.task.stdin.flush()
        reply = json.loads(self.task.stdout.readline() or '{"rc": 1, "summary": "", "error": "worker died"}')
        return reply["rc"], reply["summary"], reply.get("error", "")

    def close(self) -> None:
        if self.task is not None:
            self.task.stdin.close()
            self.task.wait(timeout=60)

    def env(self, tool: str = "batchsite") -> dict[str, str]:
        """The environment of batchsite's pushes. Its bytecode is kept (in the bench's work dir), as
        in an installed package, even where PYTHONDONTWRITEBYTECODE is set (CI sets it to keep the
        tree clean): else every push would compile batchsite's modules from source first."""
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        return {**env, "BATCHSITE_CACHE_DIR": str(self.work / f"hashcache-{TOOL_DIRS[tool]}"),
                "PYTHONPYCACHEPREFIX": str(self.work / "pycache")}

    def timed(self, tool: str, src: Path) -> tuple[float, int, str]:
        """(seconds, bytes on the veth, how batchsite sent the files: "rsync"/"tar"/"" for the others)."""
        b0, t0 = self.net.wire_bytes(), time.monotonic()
        if tool == "batchsite task":
            rc, stdout, stderr = self.push_in_task(src)
        else:
            r = self.net.ns(*self.command(tool, src), check=False, env=self.env(), cwd=str(REPO))
            rc, stdout, stderr = r.returncode, r.stdout, r.stderr
        elapsed, nbytes = time.monotonic() - t0, self.net.wire_bytes() - b0
        if rc != 0:
            raise RuntimeError(f"{tool} failed (exit {rc}): {stderr.strip()[-800:]}")
        got, want = tree_digest(self.dest(tool)), tree_digest(src)
        if got != want:
            raise RuntimeError(f"{tool}: the site's tree differs from the local one after the push")
        method = ""
        if tool.startswith("batchsite"):  # the push summary says "via rsync" or "via tar (why)"
            method = "rsync" if "; via rsync," in stdout else "tar"
        return elapsed, nbytes, method


def task_worker(site_config: str) -> int:
    """``--task-worker CFG``: push each local dir named on stdin with ``Staging.push_code`` in this one
    process (a site built per push, as a task's StagingHook does); one JSON line per push on stdout."""
    from batchsite.hooks.staging_cli import site_from_plain_config
    from batchsite.staging import Staging, StagingError

    for line in sys.stdin:
        site = site_from_plain_config(site_config)
        try:
            reply = {"rc": 0, "summary": Staging(site).push_code(line.strip()).summary()}
        except StagingError as e:
            reply = {"rc": 1, "summary": "", "error": str(e)}
        finally:
            site.close()
        print(json.dumps(reply), flush=True)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--mb", type=int, default=52)
    ap.add_argument("--rtt", type=int, nargs="+", default=[0, 20], help="added round-trip times (ms)")
    ap.add_argument("--task-worker", metavar="SITE_CONFIG", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.task_worker:
        return task_worker(a.task_worker)
    if os.geteuid() != 0:
        print("staging_bench: needs root (ip netns, tc, a second sshd): run it with sudo", file=sys.stderr)
        return 2
    site = json.loads((STATE / "site.json").read_text())
    work = Path(tempfile.mkdtemp(prefix="batchsite-staging-bench."))
    os.chmod(work, 0o755)
    remote_base = Path(site["remote_root"]) / f"staging-bench-{os.getpid()}"
    pristine = work / "pristine"
    generate(pristine, a.files, a.mb)
    size = sum(p.stat().st_size for p in pristine.rglob("*") if p.is_file())
    # times[(rtt, case, tool)] = [seconds, ...]; wire[...] = [bytes, ...]
    times: dict[tuple[int, str, str], list[float]] = {}
    wire: dict[tuple[int, str, str], list[int]] = {}
    how: dict[int, str] = {}
    methods: dict[tuple[int, str, str], set[str]] = {}
    load_before = os.getloadavg()
    try:
        with Netns(site, work) as net:
            for rtt in a.rtt:
                port, how[rtt] = net.set_rtt(rtt)
                bench = Bench(net, site, work, remote_base, port)
                sh(str(PYTHON), "-c", "import batchsite.hooks.staging_cli", env=bench.env())  # bytecode, once
                try:
                    for rep in range(a.reps):
                        for tool in TOOLS:
                            src = work / "src" / tool.replace(" ", "_").replace("+", "_")
                            shutil.rmtree(src, ignore_errors=True)
                            shutil.copytree(pristine, src)  # copy2: same mtimes for every tool
                            bench.reset(tool)
                            for case in CASES:
                                if case == "20 changed":
                                    change_20(src, rep)
                                t, b, method = bench.timed(tool, src)
                                times.setdefault((rtt, case, tool), []).append(t)
                                wire.setdefault((rtt, case, tool), []).append(b)
                                if method:
                                    methods.setdefault((rtt, case, tool), set()).add(method)
                        print(f"  rtt +{rtt} ms, run {rep + 1}/{a.reps} done", file=sys.stderr, flush=True)
                finally:
                    bench.close()
                net.set_rtt(0)
    finally:
        shutil.rmtree(remote_base, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)

    load_after = os.getloadavg()
    print(f"Staging bench: {a.files} files, {size / 1e6:.1f} MB in 40 dirs; median of {a.reps} runs; "
          f"bytes = veth rx+tx; batchsite over openssh (ControlMaster closed before each first push); "
          f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after, on {os.cpu_count()} cores")
    print(f"| added RTT | case | batchsite CLI (sent via) | batchsite in a task | rsync -a | tar+ssh | "
          f"CLI / rsync | <= {TARGET_RATIO}x | task / rsync | bytes CLI / rsync / tar |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    notes = [f"+{rtt} ms: {how[rtt]}" for rtt in a.rtt if rtt]
    worst = worst_task = 0.0
    for rtt in a.rtt:
        for case in CASES:
            med = {tool: statistics.median(times[(rtt, case, tool)]) for tool in TOOLS}
            nbytes = {tool: int(statistics.median(wire[(rtt, case, tool)])) for tool in TOOLS}
            ratio, task_ratio = med["batchsite"] / med["rsync -a"], med["batchsite task"] / med["rsync -a"]
            worst, worst_task = max(worst, ratio), max(worst_task, task_ratio)
            via = "/".join(sorted(methods[(rtt, case, "batchsite")] | methods[(rtt, case, "batchsite task")]))
            print(f"| {rtt} ms | {case} | {med['batchsite']:.2f} s ({via}) | {med['batchsite task']:.2f} s | "
                  f"{med['rsync -a']:.2f} s | {med['tar+ssh']:.2f} s | {ratio:.2f}x | "
                  f"{'yes' if ratio <= TARGET_RATIO else 'NO'} | {task_ratio:.2f}x | {_mb(nbytes['batchsite'])} / "
                  f"{_mb(nbytes['rsync -a'])} / {_mb(nbytes['tar+ssh'])} |")
    if notes:
        print("added delay made by: " + "; ".join(notes))
    verdict = "PASS" if worst <= TARGET_RATIO else "FAIL"
    print(f"{verdict}: worst batchsite CLI/rsync ratio {worst:.2f}x (target <= {TARGET_RATIO}x); "
          f"in a task (Python already running) {worst_task:.2f}x")
    return 0 if verdict == "PASS" else 1


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 100_000 else f"{n / 1e3:.0f} kB"


if __name__ == "__main__":
    sys.exit(main())
