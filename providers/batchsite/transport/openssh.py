"""``openssh`` transport: the system ``ssh`` client through a ControlMaster socket.

For sites such as lxplus where a person logs in once with password + 2FA:

    ssh -MNf -o ControlPersist=24h -S ~/.ssh/cm-lxplus user@lxplus.cern.ch

and batchsite then runs every command through that socket (``BatchMode=yes``: it never
prompts). With key-based sites ``ControlMaster=auto`` opens the master itself once.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

from batchsite.transport.base import (
    AsyncTransport, HostKeyError, SSHClientCommand, Transport, TransportError, host_key_help,
)
from batchsite.transport.local import SSH_CLIENT_ENV, run_argv, run_argv_async


class OpenSSHOptions:
    def __init__(
        self,
        host: str,
        user: str,
        control_path: str,
        *,
        port: int = 22,
        known_hosts: str | None = None,
        key_file: str | None = None,
        control_persist: str = "10m",
        no_host_key_check: bool = False,
        connect_timeout: float = 20.0,
    ):
        self.host, self.user, self.port = host, user, port
        self.control_path = os.path.expanduser(control_path)
        self.known_hosts, self.key_file = known_hosts, key_file
        self.control_persist = control_persist
        self.no_host_key_check = no_host_key_check
        self.connect_timeout = connect_timeout

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}"

    def argv(self, line: str) -> list[str]:
        return [*self.client_argv(), self.destination, "--", line]

    def client_argv(self) -> list[str]:
        """ssh and every option of this connection, without the destination."""
        a = [
            "ssh", "-p", str(self.port),
            "-o", "BatchMode=yes",
            "-o", "ControlMaster=auto",
            "-o", f"ControlPath={self.control_path}",
            "-o", f"ControlPersist={self.control_persist}",
            "-o", "ServerAliveInterval=30",
            "-o", f"ConnectTimeout={max(1, int(self.connect_timeout))}",
            "-o", "StrictHostKeyChecking=" + ("no" if self.no_host_key_check else "yes"),
        ]
        if self.known_hosts:
            a += ["-o", f"UserKnownHostsFile={os.path.expanduser(self.known_hosts)}"]
        if self.key_file:
            a += ["-i", os.path.expanduser(self.key_file), "-o", "IdentitiesOnly=yes"]
        return a


def classify_ssh_failure(opts: OpenSSHOptions, rc: int, err: bytes) -> None:
    """ssh exits 255 for its own failures; turn those into transport errors with a fix."""
    if rc != 255:
        return
    text = err.decode("utf-8", "replace")
    if "Host key verification failed" in text or "REMOTE HOST IDENTIFICATION HAS CHANGED" in text:
        raise HostKeyError(host_key_help(opts.host, opts.port, opts.known_hosts))
    markers = ("ssh:", "Connection refused", "Connection closed", "Permission denied",
               "Control socket", "mux_client", "Connection timed out", "kex_exchange")
    if any(m in text for m in markers):
        hint = ""
        if "Permission denied" in text:
            hint = (f" (no usable credentials: open the master connection once with "
                    f"`ssh -MNf -o ControlPersist=24h -S {opts.control_path} {opts.user}@{opts.host}`)")
        raise TransportError(f"ssh {opts.user}@{opts.host}:{opts.port}: {text.strip()[-300:]}{hint}")


def ensure_control_dir(control_path: str) -> None:
    """The ControlMaster socket is a live, authenticated session: whoever can connect to it
    runs commands as us. ssh creates it 0600, but only in an existing directory; we create a
    missing one 0700 (never with the umask's wider bits). Nothing else is written: batchsite
    never writes key material for this transport (keys stay in ``key_file`` or the agent)."""
    d = os.path.dirname(control_path) or "."
    if not os.path.isdir(d):
        os.makedirs(d, mode=0o700, exist_ok=True)
        os.chmod(d, 0o700)


class OpenSSHTransport(Transport):
    kind = "openssh"

    def __init__(self, opts: OpenSSHOptions, env_script: str | None = None):
        super().__init__(env_script)
        self.opts = opts

    def _exec(self, line, stdin, timeout):
        self._prepare_control_path()
        rc, out, err = run_argv(self.opts.argv(line), stdin, timeout, SSH_CLIENT_ENV)
        classify_ssh_failure(self.opts, rc, err)
        return rc, out, err

    def _prepare_control_path(self) -> None:
        """A missing ControlMaster socket: its dir made 0700, and a connection counted (ssh opens one)."""
        if not os.path.exists(self.opts.control_path):
            ensure_control_dir(self.opts.control_path)
            self.counters.connections_opened += 1

    def ssh_client(self) -> contextlib.AbstractContextManager[SSHClientCommand | None]:
        """The same ssh options, so ``rsync -e`` goes through the same ControlMaster."""
        self._prepare_control_path()
        o = self.opts
        return contextlib.nullcontext(SSHClientCommand(
            argv=tuple(o.client_argv()), destination=o.destination, host=o.host, port=o.port,
            known_hosts=o.known_hosts, pass_env=SSH_CLIENT_ENV))

    def close(self) -> None:
        # the master stays up (ControlPersist): it belongs to the person who opened it
        pass


class AsyncOpenSSHTransport(AsyncTransport):
    kind = "openssh"

    def __init__(self, opts: OpenSSHOptions, env_script: str | None = None):
        super().__init__(env_script)
        self.opts = opts

    async def _exec(self, line, stdin, timeout):
        if not os.path.exists(self.opts.control_path):
            ensure_control_dir(self.opts.control_path)
            self.counters.connections_opened += 1
        rc, out, err = await run_argv_async(self.opts.argv(line), stdin, timeout, SSH_CLIENT_ENV)
        classify_ssh_failure(self.opts, rc, err)
        return rc, out, err


def control_path_for(host: str, user: str, port: int, base: Sequence[str] = ("~", ".ssh")) -> str:
    return os.path.join(*base, f"batchsite-cm-{user}@{host}:{port}")
