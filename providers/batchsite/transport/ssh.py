"""``ssh`` transport: paramiko in tasks, asyncssh in the triggerer, over a connection that a
*connector* opens.

The transport never reads credentials. It is handed a connector, a callable that opens and
returns an authenticated connection (``SSHConnect``: a paramiko ``SSHClient``;
``AsyncSSHConnect``: an asyncssh connection). The Airflow adapter builds them from the SSH
provider's ``SSHHook`` / ``SSHHookAsync`` (``batchsite.hooks.connection``); the core never
imports Airflow. The connector is called again only when the connection is dead, so there
is one connection per transport object, reused for every command of a task.

Host keys are the connector's to check (the adapter's always are, unless the connection
says ``no_host_key_check: true``); a rejected key becomes a ``HostKeyError`` naming the
``ssh-keyscan`` command that fixes it. A command killed by a signal is never exit 0.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from batchsite.transport.base import AsyncTransport, HostKeyError, Transport, TransportError, host_key_help

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


def _exit_code(rc: int | None) -> int:
    # None / negative: the remote process ended without an exit status (killed by a signal)
    return 255 if rc is None or rc < 0 else rc


class SSHTransport(Transport):
    kind = "ssh"

    def __init__(self, connect: SSHConnect, target: SSHTarget, *, env_script: str | None = None):
        super().__init__(env_script)
        self._open_client = connect
        self.target = target
        self._client: paramiko.SSHClient | None = None

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
                if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
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
