"""The transport contract shared by ``local``, ``ssh`` and ``openssh``.

A transport runs ONE command line on the site and returns exit code, stdout and stderr.
Everything else (file writes, checksums, scheduler commands) is built on ``run`` by the
layers above, so each transport stays a few dozen lines and all three behave alike.

Command lines are always built here from an argv list with ``shlex.quote``; no caller
concatenates user values into a shell string.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import shlex
import time
from collections.abc import Sequence

from batchsite.model import CommandResult


class TransportError(Exception):
    """The site could not be reached (connect, auth, broken connection, timeout)."""


class HostKeyError(TransportError):
    """The site's host key is unknown or changed. Never retried."""


def host_key_help(host: str, port: int, known_hosts: str | None) -> str:
    """What a HostKeyError says, for every ssh transport: the command that fixes it."""
    where = f"the known_hosts file {known_hosts}" if known_hosts else "the connection's `host_key` extra"
    return (
        f"host key of {host}:{port} is unknown or has CHANGED. If the site really changed its key, "
        f"update {where} with the output of `ssh-keyscan -p {port} -t ed25519 {host}` (check the "
        f"fingerprint with the site admins first). Do not turn host-key checking off to get past this."
    )


class RemoteCommandError(Exception):
    """A remote command ran and exited non-zero where success was required."""

    def __init__(self, result: CommandResult, what: str = ""):
        self.result = result
        tail = (result.err or result.out).strip().splitlines()[-5:]
        msg = f"{what or shlex.join(result.argv)[:200]} exited {result.returncode}"
        if tail:
            msg += ": " + " | ".join(tail)
        super().__init__(msg)


def render_command_line(
    argv: Sequence[str], *, env_script: str | None = None, cwd: str | None = None, env_output_to_stderr: bool = False
) -> str:
    """The one shell line a transport hands to the remote shell.

    ``env_script`` is sourced first (site modules, Kerberos renewal, CONDOR_CONFIG), so
    every command of a task sees the same environment as the jobs themselves.
    ``env_output_to_stderr``: what the env script prints goes to stderr (a command whose stdout
    is a protocol, e.g. an rsync server, must not see it).
    """
    if not argv:
        raise ValueError("argv must not be empty")
    steps = []
    if env_script:
        steps.append(f". {shlex.quote(env_script)}" + (" >&2" if env_output_to_stderr else ""))
    if cwd:
        steps.append(f"cd {shlex.quote(cwd)}")
    steps.append(shlex.join(argv))
    return " && ".join(steps)


@dataclasses.dataclass(frozen=True)
class SSHClientCommand:
    """The system ``ssh`` client with exactly a transport's connection settings (host, port,
    user, key, host-key checking and known_hosts): what ``rsync -e`` runs to reach the site."""

    argv: tuple[str, ...]  # ssh and its options, without the destination
    destination: str  # user@host
    host: str
    port: int
    known_hosts: str | None  # what a HostKeyError names
    pass_env: tuple[str, ...] = ()  # variables of this process the client needs (agent, Kerberos)


class _Counters:
    """What the benchmarks read: connections opened and commands run by this transport."""

    def __init__(self) -> None:
        self.connections_opened = 0
        self.commands_run = 0


class Transport(abc.ABC):
    """Synchronous transport, used inside operator ``execute()`` and hooks."""

    kind: str = "abstract"

    def __init__(self, env_script: str | None = None):
        self.env_script = env_script
        self.counters = _Counters()

    def run(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | None = None,
        timeout: float | None = 300.0,
        cwd: str | None = None,
        check: bool = False,
        what: str = "",
    ) -> CommandResult:
        line = render_command_line(argv, env_script=self.env_script, cwd=cwd)
        self.counters.commands_run += 1
        rc, out, err = self._exec(line, stdin, timeout)
        result = CommandResult(argv=list(argv), returncode=rc, stdout=out, stderr=err)
        if check and rc != 0:
            raise RemoteCommandError(result, what)
        return result

    def sh(self, script: str, *args: str, **kw) -> CommandResult:
        """Run a fixed shell snippet with positional arguments ($1, $2, ...) passed quoted."""
        return self.run(["sh", "-c", script, "batchsite", *args], **kw)

    @abc.abstractmethod
    def _exec(self, line: str, stdin: bytes | None, timeout: float | None) -> tuple[int, bytes, bytes]:
        """Run one shell line; return (exit code, stdout, stderr). Raise TransportError if unreachable."""

    def ssh_client(self) -> contextlib.AbstractContextManager[SSHClientCommand | None]:
        """The system ssh client reaching the site with this transport's settings, valid inside
        the ``with`` block (files it needs are removed after); None where there is none (``local``,
        or credentials the ssh client cannot use)."""
        return contextlib.nullcontext(None)

    def close(self) -> None:  # noqa: B027 - optional
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class AsyncTransport(abc.ABC):
    """Asynchronous transport, used by the shared site poller inside the triggerer."""

    kind: str = "abstract"

    def __init__(self, env_script: str | None = None):
        self.env_script = env_script
        self.counters = _Counters()

    async def run(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | None = None,
        timeout: float | None = 120.0,
        cwd: str | None = None,
    ) -> CommandResult:
        line = render_command_line(argv, env_script=self.env_script, cwd=cwd)
        self.counters.commands_run += 1
        rc, out, err = await self._exec(line, stdin, timeout)
        return CommandResult(argv=list(argv), returncode=rc, stdout=out, stderr=err)

    async def sh(self, script: str, *args: str, **kw) -> CommandResult:
        return await self.run(["sh", "-c", script, "batchsite", *args], **kw)

    @abc.abstractmethod
    async def _exec(self, line: str, stdin: bytes | None, timeout: float | None) -> tuple[int, bytes, bytes]:
        ...

    async def close(self) -> None:  # noqa: B027
        pass


def backoff_delays(first: float = 1.0, cap: float = 60.0, factor: float = 2.0):
    """Capped exponential backoff: 1, 2, 4, ... cap, cap, ... (seconds)."""
    d = first
    while True:
        yield d
        d = min(cap, d * factor)


def monotonic() -> float:
    return time.monotonic()
