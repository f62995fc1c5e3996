"""``ssh`` transport: paramiko in tasks, asyncssh in the triggerer, over a connection that a
*connector* opens.

The transport never reads credentials. It is handed a connector, a callable that opens and
returns an authenticated connection (``SSHConnect``: a paramiko ``SSHClient``;
``AsyncSSHConnect``: an asyncssh connection). The Airflow adapter builds them from the SSH
provider's ``SSHHook`` / ``SSHHookAsync`` (``batchsite.hooks.connection``); the core never
imports Airflow. The connector is called again only when the connection is dead, so there
is one connection per transport object, reused for every command of a task.

For the system ssh client (staging's ``rsync -e ssh``), ``ssh_client()`` uses the connector's key
as an optional ``client_key`` source gives it (the adapter reads it from the connection) and pins
the host key the live connection was given, in a temp dir removed after use.

Host keys are the connector's to check (the adapter's always are, unless the connection
says ``no_host_key_check: true``); a rejected key becomes a ``HostKeyError`` naming the
``ssh-keyscan`` command that fixes it. A command killed by a signal is never exit 0.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from batchsite.transport.base import (
    AsyncTransport, HostKeyError, SSHClientCommand, Transport, TransportError, host_key_help,
)

if TYPE_CHECKING:
    import asyncssh
    import paramiko

#: opens an authenticated paramiko client; must bound its own connect time
SSHConnect = Callable[[], "paramiko.SSHClient"]
#: opens an authenticated asyncssh connection (the transport bounds the connect time)
AsyncSSHConnect = Callable[[], Awaitable["asyncssh.SSHClientConnection"]]

#: paramiko's sendall slices the remaining bytes after every 32 kB packet: quadratic,
#: 1.8 MB/s for a 48 MB push. Feeding it 1 MB views keeps each copy small.
SENDALL_VIEW = 1 << 20


@dataclass(frozen=True)
class SSHTarget:
    """Where an ``ssh`` transport's connector connects: what its errors name."""

    host: str
    port: int = 22
    login: str | None = None
    known_hosts: str | None = None

    def __str__(self) -> str:
        return f"{self.login}@{self.host}:{self.port}" if self.login else f"{self.host}:{self.port}"

    def host_key_error(self) -> HostKeyError:
        return HostKeyError(host_key_help(self.host, self.port, self.known_hosts))


@dataclass(frozen=True)
class SSHClientKey:
    """The key a connector authenticates with, in a form the system ssh client can use: the
    unencrypted key text (written 0600 to a temp dir while it is needed) or a key file."""

    private_key: str | None = None
    key_file: str | None = None


#: returns the connector's key for the system ssh client, or None (password, encrypted key)
SSHClientKeySource = Callable[[], "SSHClientKey | None"]


def _write_private(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text if text.endswith("\n") else text + "\n")


def _exit_code(rc: int | None) -> int:
    # None / negative: the remote process ended without an exit status (killed by a signal)
    return 255 if rc is None or rc < 0 else rc


class SSHTransport(Transport):
    kind = "ssh"

    def __init__(self, connect: SSHConnect, target: SSHTarget, *, env_script: str | None = None,
                 client_key: SSHClientKeySource | None = None, connect_timeout: float = 20.0):
        super().__init__(env_script)
        self._open_client = connect
        self.target = target
        self._client_key = client_key
        self.connect_timeout = connect_timeout
        self._client: paramiko.SSHClient | None = None

    @contextlib.contextmanager
    def ssh_client(self) -> Iterator[SSHClientCommand | None]:
        """The system ssh client on the same settings: the connector's key and, as the only
        known host key, the key this transport's live connection was given (the connector checked
        it), with StrictHostKeyChecking=yes. Key and known_hosts live in a 0700 temp dir (files
        0600) removed when the block ends."""
        key = self._client_key() if self._client_key is not None else None
        if key is None or not (key.private_key or key.key_file):
            yield None
            return
        live = self._connect().get_transport()
        host_key, user, port = live.get_remote_server_key(), live.get_username(), self.target.port
        with tempfile.TemporaryDirectory(prefix="batchsite-ssh.") as d:
            known_hosts = os.path.join(d, "known_hosts")
            name = self.target.host if port == 22 else f"[{self.target.host}]:{port}"
            _write_private(known_hosts, f"{name} {host_key.get_name()} {host_key.get_base64()}\n")
            key_file = key.key_file
            if key.private_key:
                key_file = os.path.join(d, "id")
                _write_private(key_file, key.private_key)
            argv = ("ssh", "-p", str(port), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                    "-o", f"UserKnownHostsFile={known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
                    "-o", "ControlPath=none", "-o", f"ConnectTimeout={max(1, int(self.connect_timeout))}",
                    "-o", "ServerAliveInterval=30", "-i", os.path.expanduser(key_file), "-o", "IdentitiesOnly=yes")
            yield SSHClientCommand(argv=argv, destination=f"{user}@{self.target.host}", host=self.target.host,
                                   port=port, known_hosts=self.target.known_hosts)

    def _connect(self) -> paramiko.SSHClient:
        import paramiko

        if self._client is not None:
            t = self._client.get_transport()
            if t is not None and t.is_active():
                return self._client
            self._client = None
        try:
            client = self._open_client()
        except paramiko.BadHostKeyException as e:
            raise self.target.host_key_error() from e
        except paramiko.SSHException as e:
            if "known_hosts" in str(e) or "host key" in str(e).lower():
                raise self.target.host_key_error() from e
            raise TransportError(f"ssh {self.target}: {e}") from e
        except (OSError, EOFError) as e:
            raise TransportError(f"ssh {self.target}: {e}") from e
        self.counters.connections_opened += 1
        self._client = client
        return client

    def _exec(self, line, stdin, timeout):
        client = self._connect()
        try:
            chan = client.get_transport().open_session(timeout=30)
            chan.settimeout(1.0)
            chan.exec_command(line)
            if stdin:
                view = memoryview(stdin)
                for i in range(0, len(view), SENDALL_VIEW):
                    chan.sendall(view[i:i + SENDALL_VIEW])
            chan.shutdown_write()
            out, err = bytearray(), bytearray()
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                progressed = False
                while chan.recv_ready():
                    out += chan.recv(65536)
                    progressed = True
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                    progressed = True
                # the end is the server's EOF, not the exit status: sshd may send the status
                # while output the command wrote just before exiting is still on its way, and
                # stopping then cut outputs short (seen: 9 of 300 under load)
                if chan.eof_received and not chan.recv_ready() and not chan.recv_stderr_ready():
                    break
                if chan.closed and not progressed:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    # a silent connection (dropped traffic) would hang the next command too
                    chan.close()
                    self.close()
                    raise TransportError(f"remote command timed out after {timeout}s")
                if not progressed:
                    time.sleep(0.005)
            rc = chan.recv_exit_status()
            chan.close()
        except (OSError, EOFError, socket.timeout) as e:
            self._client = None
            raise TransportError(f"ssh connection lost: {e}") from e
        except Exception as e:  # paramiko.SSHException and friends
            if e.__class__.__module__.startswith("paramiko"):
                self._client = None
                raise TransportError(f"ssh connection lost: {e}") from e
            raise
        return _exit_code(rc), bytes(out), bytes(err)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class AsyncSSHTransport(AsyncTransport):
    kind = "ssh"

    def __init__(self, connect: AsyncSSHConnect, target: SSHTarget, *, env_script: str | None = None,
                 connect_timeout: float = 20.0):
        super().__init__(env_script)
        # asyncssh logs every command line at INFO: status scripts would flood the task logs
        logging.getLogger("asyncssh").setLevel(logging.WARNING)
        self._open_conn = connect
        self.target = target
        self.connect_timeout = connect_timeout
        self._conn: asyncssh.SSHClientConnection | None = None

    async def _connect(self) -> asyncssh.SSHClientConnection:
        import asyncio

        import asyncssh

        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        self._conn = None
        try:
            # SSHHookAsync sets no connect timeout: with dropped traffic a SYN waits ~2 min
            conn = await asyncio.wait_for(self._open_conn(), self.connect_timeout)
        except asyncio.TimeoutError as e:
            raise TransportError(f"ssh {self.target}: no answer within {self.connect_timeout:.0f}s") from e
        except asyncssh.HostKeyNotVerifiable as e:
            raise self.target.host_key_error() from e
        except (OSError, asyncssh.Error) as e:
            raise TransportError(f"ssh {self.target}: {e}") from e
        self.counters.connections_opened += 1
        self._conn = conn
        return conn

    async def _exec(self, line, stdin, timeout):
        import asyncio

        import asyncssh

        conn = await self._connect()
        try:
            # asyncssh's own timeout starts once the channel is open; opening it over a silent
            # connection (dropped traffic) would wait for TCP to give up, so bound the whole call
            r = await asyncio.wait_for(
                conn.run(line, input=stdin or b"", encoding=None, check=False, timeout=timeout), timeout)
        except (asyncssh.TimeoutError, asyncio.TimeoutError) as e:
            # the connection may be silently dead (dropped traffic): open a new one next time
            await self.close()
            raise TransportError(f"remote command timed out after {timeout}s") from e
        except (OSError, asyncssh.Error, asyncio.IncompleteReadError) as e:
            self._conn = None
            raise TransportError(f"ssh connection lost: {e}") from e
        return _exit_code(r.exit_status), r.stdout or b"", r.stderr or b""

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
