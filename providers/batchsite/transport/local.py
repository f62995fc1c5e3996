"""``local`` transport: the site is this machine (laptops, the embedded demo, tests).

Also home of the two subprocess helpers that ``openssh`` reuses.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Sequence

from batchsite.transport.base import AsyncTransport, Transport, TransportError

# bash, as on the remote side where the login shell of batch users is bash
SHELL = ("/bin/bash", "-c")


#: the variables of this process that commands run here (and the jobs of the local site,
#: which the local runner starts from those commands) may see; every other one is dropped:
#: ``AIRFLOW_CONN_*`` carry passwords and keys, ``AIRFLOW__*`` the metadata DB URL and the
#: Fernet key, and a worker's environment holds cloud tokens and the like. What a job needs
#: beyond these comes from the round's own ``env`` (exported by the unit script) and the
#: site's ``env_script``. ``LC_*`` is allowed as a prefix.
ALLOWED_ENV = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "PYTHONPATH",
               "X509_USER_PROXY")
ALLOWED_ENV_PREFIXES = ("LC_",)
#: what the system ssh client needs on top (``openssh`` transport): the agent, Kerberos (GSSAPI)
SSH_CLIENT_ENV = ("SSH_AUTH_SOCK", "KRB5CCNAME", "KRB5_CONFIG")


def allowed_env(extra: Sequence[str] = ()) -> dict[str, str]:
    """This process's environment, reduced to ``ALLOWED_ENV`` (+ ``extra`` names)."""
    names = (*ALLOWED_ENV, *extra)
    return {k: v for k, v in os.environ.items() if k in names or k.startswith(ALLOWED_ENV_PREFIXES)}


def run_argv(argv: Sequence[str], stdin: bytes | None, timeout: float | None,
             pass_env: Sequence[str] = ()) -> tuple[int, bytes, bytes]:
    try:
        p = subprocess.run(
            list(argv),
            input=stdin if stdin is not None else b"",
            capture_output=True,
            timeout=timeout,
            env=allowed_env(pass_env),
            start_new_session=True,  # a Ctrl-C/SIGTERM of the task must not hit what we started
        )
    except subprocess.TimeoutExpired as e:
        raise TransportError(f"command timed out after {timeout}s") from e
    return p.returncode, p.stdout, p.stderr


async def run_argv_async(
    argv: Sequence[str], stdin: bytes | None, timeout: float | None, pass_env: Sequence[str] = ()
) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=allowed_env(pass_env),
        start_new_session=True,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin or b""), timeout)
    except asyncio.TimeoutError as e:
        proc.kill()
        await proc.wait()
        raise TransportError(f"command timed out after {timeout}s") from e
    return proc.returncode, out, err


class LocalTransport(Transport):
    kind = "local"

    def __init__(self, env_script: str | None = None):
        super().__init__(env_script)
        self.counters.connections_opened = 1  # nothing to open; one "connection" for the benchmarks

    def _exec(self, line, stdin, timeout):
        return run_argv([*SHELL, line], stdin, timeout)


class AsyncLocalTransport(AsyncTransport):
    kind = "local"

    def __init__(self, env_script: str | None = None):
        super().__init__(env_script)
        self.counters.connections_opened = 1

    async def _exec(self, line, stdin, timeout):
        return await run_argv_async([*SHELL, line], stdin, timeout)
