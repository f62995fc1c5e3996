#!/usr/bin/env python3
"""batchsite local runner: the ``local`` scheduler of one round, as a detached process.

Shipped into every local round's workdir by ``batchsite.backends.local`` (nothing is
installed on the site). Standard library only; Python >= 3.9; runs under Debian's
/usr/bin/python3 and macOS's python3.

    python3 localsched.py run <workdir>

reads ``<workdir>/local.json`` and runs the round like a Slurm job array with a throttle
plus an ``afterok`` fan-in job:

* at most ``throttle`` units run at once (default: CPUs of this machine // cpus per unit);
  each unit is ``bash <workdir>/unit.sh`` with ``BATCHSITE_INDEX`` set, in its own session
  and process group, output appended to ``logs/<key>_<index>.out`` / ``.err``;
* the fan-in (``bash <workdir>/fanin.sh``) starts only when every unit exited 0; when a
  unit fails, the fan-in is marked ``dependency-never-satisfied`` at once, the remaining
  units still run (as in a Slurm array), and then the runner exits;
* ``time_limit_s`` (Resources.time_minutes): a unit still running at its limit gets
  SIGTERM to its process group, SIGKILL ``KILL_WAIT`` seconds later, and is recorded as
  ``timeout``;
* when a unit's script has exited, whatever is left in its process group is killed, as a
  batch system ends every process of a finished job;
* SIGTERM / SIGINT (cancel): queued units and a waiting fan-in become ``cancelled``, every
  running process group gets SIGTERM, SIGKILL ``CANCEL_WAIT`` seconds later, and those
  become ``cancelled <pid>``; then the runner exits.

Files (all under the workdir; every state file is replaced atomically, temp name + rename):

    state/runner.lock          created with O_EXCL: at most one runner per workdir, ever
    state/runner.pid           "<pid> <hostname>": written after every state file exists
    state/<index>              queued | running <pid> | exited <rc> | signalled <sig>
                               | timeout <pid> | cancelled | cancelled <pid>
    state/fanin                waiting | running <pid> | exited <rc> | signalled <sig>
                               | timeout <pid> | dependency-never-satisfied | cancelled [<pid>]
    state/runner.done          finished | cancelled  (last thing the runner writes)
    state/runner.usage         "<index|fanin> <wall s> <cpu s> <peak RSS KB>" per reaped job
                               (wait4's rusage: the job and its waited-for descendants)
    status/<index>.exit        written by unit.sh itself (batchsite.backends.common)
    logs/localsched.log        the runner's own log

``<pid>`` of a running job is also its process-group id (each job is a session leader).
Every job gets ``BATCHSITE_WORKDIR=<workdir>`` in its environment so that a cancel can
recognise the job's processes even when the runner is gone.
"""

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time

STATE = "state"
LOGS = "logs"
FANIN = "fanin"
#: seconds between SIGTERM and SIGKILL for a cancelled job (the cancel script waits longer)
CANCEL_WAIT = 2.0
#: seconds between SIGTERM and SIGKILL for a job past its time limit (Slurm's KillWait)
KILL_WAIT = 10.0
#: the longest the main loop sleeps when nothing wakes it (SIGCHLD and SIGTERM do)
TICK = 1.0


def log(msg):
    sys.stdout.write("%s localsched[%d]: %s\n" % (time.strftime("%Y-%m-%dT%H:%M:%S"), os.getpid(), msg))
    sys.stdout.flush()


def write_atomic(path, text):
    d, name = os.path.split(path)
    tmp = os.path.join(d, ".%s.tmp.%d" % (name, os.getpid()))
    with open(tmp, "w") as f:
        f.write(text if text.endswith("\n") else text + "\n")
    os.replace(tmp, path)


def killpg(pgid, sig):
    if pgid <= 1:  # never our own group (0) or init (1)
        return False
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


class _NotStarted:
    """Stands in for a Popen that could not be created: exits 127 at once."""

    pid = 0
    returncode = 127

    def poll(self):
        return 127

    def wait(self):
        return 127


class Job:
    def __init__(self, name, proc, limit):
        self.name = name
        self.proc = proc
        self.pid = proc.pid
        self.started = time.monotonic()
        self.deadline = self.started + limit if limit else None
        self.usage = None  # (wall s, cpu s, peak RSS KB) once reaped by ``reap``
        self.timed_out = False
        self.kill_at = None  # SIGKILL time once SIGTERM was sent

    def poll(self):
        """The exit status once the job's script has exited, else None.

        What is left in the job's process group is killed first, while the exited (not yet
        reaped) leader still holds the group id, so the id cannot belong to anyone else."""
        if self.proc.returncode is not None or self.pid <= 0:
            return self.proc.poll()
        if hasattr(os, "waitid") and hasattr(os, "WNOWAIT"):
            try:
                info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                info = None
            if info is None:
                return self.proc.poll()
            killpg(self.pid, signal.SIGKILL)
            return self.reap()
        rc = self.proc.poll()
        if rc is not None:
            killpg(self.pid, signal.SIGKILL)
        return rc

    def reap(self):
        """Wait for the exited job with wait4, which also gives what it used (its own and its
        waited-for descendants' CPU time and peak RSS): ``self.usage``."""
        try:
            _, status, ru = os.wait4(self.pid, 0)
        except ChildProcessError:
            return self.proc.wait()
        self.usage = (time.monotonic() - self.started, ru.ru_utime + ru.ru_stime,
                      ru.ru_maxrss // 1024 if sys.platform == "darwin" else ru.ru_maxrss)  # KB
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        return self.proc.returncode


class Runner:
    def __init__(self, workdir):
        self.wd = os.path.abspath(workdir)
        with open(os.path.join(self.wd, "local.json")) as f:
            cfg = json.load(f)
        self.key = str(cfg["key"])
        self.indices = [int(i) for i in cfg["indices"]]
        self.has_fanin = bool(cfg.get("has_fanin"))
        cpus = max(1, int(cfg.get("cpus_per_unit") or 1))
        throttle = cfg.get("throttle")
        self.throttle = int(throttle) if throttle else max(1, (os.cpu_count() or 1) // cpus)
        self.unit_limit = cfg.get("time_limit_s") or None
        self.fanin_limit = cfg.get("fanin_time_limit_s") or None
        self.running = {}  # name -> Job
        self.cancel_requested = False
        self.fanin_state = "waiting" if self.has_fanin else None
        self.any_failed = False

    # ------------------------------------------------------------------ files
    def state_path(self, name):
        return os.path.join(self.wd, STATE, str(name))

    def set_state(self, name, text):
        write_atomic(self.state_path(name), text)

    # ------------------------------------------------------------------ signals
    def _on_term(self, signum, frame):
        self.cancel_requested = True

    def _setup_signals(self):
        r, w = os.pipe()
        for fd in (r, w):
            os.set_blocking(fd, False)
        self.wake_r = r
        signal.set_wakeup_fd(w)
        signal.signal(signal.SIGCHLD, lambda s, f: None)  # not SIG_IGN: that would auto-reap
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def _sleep(self, timeout):
        try:
            select.select([self.wake_r], [], [], max(0.0, timeout))
        except InterruptedError:
            pass
        try:
            while os.read(self.wake_r, 512):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    # ------------------------------------------------------------------ jobs
    def start(self, name):
        script = "fanin.sh" if name == FANIN else "unit.sh"
        stem = "%s_%s" % (self.key, name)
        env = dict(os.environ)
        env["BATCHSITE_WORKDIR"] = self.wd
        env["BATCHSITE_ROUND"] = self.key
        if name != FANIN:
            env["BATCHSITE_INDEX"] = str(name)
        out = open(os.path.join(self.wd, LOGS, stem + ".out"), "ab")
        err = open(os.path.join(self.wd, LOGS, stem + ".err"), "ab")
        try:
            proc = subprocess.Popen(
                ["bash", os.path.join(self.wd, script)],
                cwd=self.wd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                close_fds=True, start_new_session=True,
            )
        except OSError as e:  # no bash, no fork: the job fails, the round goes on
            err.write(("batchsite localsched: could not start %s: %s\n" % (script, e)).encode())
            log("could not start %s: %s" % (name, e))
            proc = _NotStarted()
        finally:
            out.close()
            err.close()
        job = Job(name, proc, self.fanin_limit if name == FANIN else self.unit_limit)
        self.running[name] = job
        self.set_state(name, "running %d" % job.pid)
        log("started %s as pid %d" % (name, job.pid))
        return job

    def finish(self, job, rc, cancelled=False):
        """Record a reaped job; return True if it succeeded."""
        del self.running[job.name]
        if cancelled:
            text = "cancelled %d" % job.pid
        elif job.timed_out:
            text = "timeout %d" % job.pid
        elif rc < 0:
            text = "signalled %d" % -rc
        else:
            text = "exited %d" % rc
        self.set_state(job.name, text)
        if job.usage is not None:
            # one line per job, appended (a short O_APPEND write): batchsite's usage command reads it
            with open(self.state_path("runner.usage"), "a") as f:
                f.write("%s %.3f %.3f %d\n" % ((job.name,) + job.usage))
        log("%s: %s" % (job.name, text))
        ok = text == "exited 0"
        if job.name == FANIN:
            self.fanin_state = text
        elif not ok:
            self.any_failed = True
            if self.fanin_state == "waiting":
                self.fanin_state = "dependency-never-satisfied"
                self.set_state(FANIN, self.fanin_state)
                log("fan-in: dependency never satisfied (unit %s failed)" % job.name)
        return ok

    def reap(self):
        now = time.monotonic()
        for job in list(self.running.values()):
            rc = job.poll()
            if rc is not None:
                self.finish(job, rc)
                continue
            if job.kill_at is not None and now >= job.kill_at:
                killpg(job.pid, signal.SIGKILL)
            elif job.deadline is not None and now >= job.deadline and not job.timed_out:
                log("%s: time limit reached, SIGTERM to process group %d" % (job.name, job.pid))
                job.timed_out = True
                job.kill_at = now + KILL_WAIT
                killpg(job.pid, signal.SIGTERM)

    def next_wakeup(self):
        t = TICK
        now = time.monotonic()
        for job in self.running.values():
            for at in (job.kill_at, None if job.timed_out else job.deadline):
                if at is not None:
                    t = min(t, at - now)
        return max(0.01, t)

    def cancel(self, pending):
        log("cancel requested: %d running, %d queued" % (len(self.running), len(pending)))
        for i in pending:
            self.set_state(i, "cancelled")
        del pending[:]
        if self.fanin_state == "waiting" and FANIN not in self.running:
            self.fanin_state = "cancelled"
            self.set_state(FANIN, "cancelled")
        for job in self.running.values():
            killpg(job.pid, signal.SIGTERM)
        until = time.monotonic() + CANCEL_WAIT
        while self.running:
            for job in list(self.running.values()):
                rc = job.poll()
                if rc is not None:
                    self.finish(job, rc, cancelled=True)
            if not self.running:
                break
            if time.monotonic() >= until:
                for job in list(self.running.values()):
                    killpg(job.pid, signal.SIGKILL)
                    self.finish(job, job.proc.wait(), cancelled=True)
                break
            time.sleep(0.05)

    # ------------------------------------------------------------------ main
    def run(self):
        os.chdir(self.wd)
        try:
            os.setsid()  # own session: no terminal, no SIGHUP from the submitting shell
        except OSError:
            pass  # already a session/group leader (started under setsid)
        for d in (STATE, LOGS, "status"):
            os.makedirs(os.path.join(self.wd, d), exist_ok=True)
        try:
            fd = os.open(self.state_path("runner.lock"), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            log("a runner was already started in %s (state/runner.lock exists); not starting another" % self.wd)
            return 75
        os.write(fd, ("%d\n" % os.getpid()).encode())
        os.close(fd)
        self._setup_signals()
        for i in self.indices:
            self.set_state(i, "queued")
        if self.has_fanin:
            self.set_state(FANIN, "waiting")
        # the pid file last: once it exists, every state file does
        write_atomic(self.state_path("runner.pid"), "%d %s" % (os.getpid(), socket.gethostname()))
        log("round %s: %d units, throttle %d, fan-in %s" % (
            self.key, len(self.indices), self.throttle, "yes" if self.has_fanin else "no"))

        pending = list(self.indices)
        outcome = "finished"
        while True:
            if self.cancel_requested:
                self.cancel(pending)
                outcome = "cancelled"
                break
            self.reap()
            while pending and len(self.running) < self.throttle and not self.cancel_requested:
                self.start(pending.pop(0))
            if not pending and not self.running and not self.cancel_requested:
                if self.fanin_state == "waiting" and not self.any_failed:
                    self.start(FANIN)
                    self.fanin_state = "running"
                else:
                    break
            self._sleep(self.next_wakeup())
        write_atomic(self.state_path("runner.done"), outcome)
        log("round %s %s" % (self.key, outcome))
        return 0


def main(argv):
    if len(argv) != 3 or argv[1] != "run":
        sys.stderr.write("usage: localsched.py run <workdir>\n")
        return 2
    if sys.version_info < (3, 9):
        sys.stderr.write("batchsite localsched.py needs Python >= 3.9, this is %s\n" % sys.version.split()[0])
        return 2
    return Runner(argv[2]).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
