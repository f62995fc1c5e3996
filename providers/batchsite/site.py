"""A site = a transport + a scheduler backend + a remote root.

This is the only place where rendered text meets I/O. Submitting is "adopt before submit",
done in ONE remote command so that no crash of ours can split it: the protocol (lock,
record, exit codes, credentials) is specified in the header of ``submit_once.sh``, the
script beside this module that every step below runs (modes ``submit``, ``write-found``,
``clear``, ``set-aside``).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import posixpath
import re
import stat
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from batchsite.backends.base import Backend, RenderedRound
from batchsite.backends.common import CREDENTIALS_DIR, RECORD_DIR, with_x509_proxy
from batchsite.backends.slurm import compact_indices
from batchsite.backends.slurm_parse import expand_indices
from batchsite.model import CommandResult, RoundSpec, RoundStatus, Submission
from batchsite.shellscripts import load
from batchsite.transport.base import RemoteCommandError, Transport

#: exit codes of submit_once.sh (see its header): lock without record, the last attempt
#: failed (``failed`` marker) / no marker and no record after the wait
LOCK_STALE = 75
LOCK_FAILED = 76
#: the site's copy of a credential differs from the hash given (send the content); the
#: credential could not be installed
CRED_STALE = 77
CRED_FAILED = 78
#: larger than any X509 proxy (a few kB): a wrong path (a whole directory tarred...) is refused
MAX_CREDENTIAL_BYTES = 1 << 20

#: the submit-once protocol, a POSIX sh script run as ``sh -c <text> batchsite <mode> ...``
SUBMIT_ONCE = load("batchsite", "submit_once.sh")


class CredentialError(ValueError):
    """A credential named by the site connection (``x509_proxy``) cannot be used."""


@dataclass(frozen=True)
class _Credential:
    remote_path: str
    sha256: str
    data: bytes

    def __repr__(self) -> str:  # never the content, whatever prints this
        return f"_Credential({self.remote_path!r}, sha256={self.sha256[:12]}...)"


def read_x509_proxy(path: str, conn_id: str) -> bytes:
    """The proxy's content, after the checks a grid tool would make; errors name the extra."""
    where = f"site connection {conn_id!r}: extra x509_proxy={path!r}"
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise CredentialError(f"{where}: no such file. Create the proxy first (e.g. voms-proxy-init) "
                              "or fix the path in the connection's extras") from None
    except PermissionError:
        raise CredentialError(f"{where}: not readable by this user (uid {os.getuid()}); "
                              "the proxy must belong to the user running Airflow tasks") from None
    except OSError as e:
        raise CredentialError(f"{where}: cannot open it: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CredentialError(f"{where}: not a regular file")
        if st.st_mode & 0o077:
            raise CredentialError(
                f"{where}: mode {stat.S_IMODE(st.st_mode):04o} lets other users read or change it; "
                f"run `chmod 600 {path}` (grid tools refuse such proxies too)")
        if st.st_size == 0 or st.st_size > MAX_CREDENTIAL_BYTES:
            raise CredentialError(f"{where}: {st.st_size} bytes is not an X509 proxy")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_CREDENTIAL_BYTES + 1)
    except OSError as e:
        raise CredentialError(f"{where}: cannot read it: {e.strerror}") from None
    finally:
        os.close(fd)
    if not data or len(data) > MAX_CREDENTIAL_BYTES:
        raise CredentialError(f"{where}: {len(data)} bytes is not an X509 proxy")
    return data


class SiteCommandError(RemoteCommandError):
    """A site command failed; the message ends with the backend's hint, if it has one."""

    def __init__(self, result: CommandResult, what: str, detail: str = "", hint: str | None = None):
        super().__init__(result, what)
        msg = self.args[0]
        if detail:
            msg += f". {detail}"
        if hint and hint not in msg:
            msg += f"; hint: {hint}"
        self.args = (msg,)
        self.hint = hint


class RoundSpecMismatchError(ValueError):
    """The round key was submitted from another round spec: adopting it would mix two rounds."""


def spec_hash(spec: RoundSpec) -> str:
    """What the caller asked for, independent of rendering: the round spec's fields that
    differ from their defaults (a field added by a later release leaves old hashes valid)."""
    data = json.dumps(spec.model_dump(mode="json", exclude_defaults=True), sort_keys=True)
    return hashlib.sha256(data.encode()).hexdigest()[:16]


class RecordHeader(BaseModel):
    """Line 1 of a submission record (``submit_once.sh``'s header says where it lives):
    what was submitted. ``spec_hash`` is the hash of the round spec the round's caller
    gives (a rescue inherits it from the round it rescues); ``attempt`` counts
    resubmissions from 1 (records of attempts 1..n-1 are ``submitted.<k>``, their units'
    exit files ``status.<k>/``); ``indices`` are the units this attempt runs. A record
    written before these fields existed has the script hash only (None / 1 / None)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    script_hash: str = Field(pattern=r"^[0-9a-f]{1,64}$")
    spec_hash: str | None = Field(default=None, pattern=r"^[0-9a-f]{1,64}$")
    attempt: int = Field(default=1, ge=1)
    indices: list[int] | None = None

    def line(self) -> str:
        return " ".join([self.script_hash, f"spec={self.spec_hash or '-'}", f"attempt={self.attempt}",
                         f"indices={compact_indices(self.indices) if self.indices else '-'}"])

    @classmethod
    def parse(cls, line: str) -> RecordHeader:
        first, *fields = line.split() or [""]
        values = dict(f.split("=", 1) for f in fields if "=" in f)
        indices = values.get("indices", "-")
        return cls(script_hash=first, spec_hash=None if values.get("spec", "-") == "-" else values["spec"],
                   attempt=int(values.get("attempt", "1")),
                   indices=None if indices == "-" else expand_indices(indices))


def script_hash(rendered: RenderedRound) -> str:
    digest = hashlib.sha256()
    for name in sorted(rendered.files):
        digest.update(name.encode() + b"\0" + rendered.files[name].encode() + b"\0")
    digest.update(rendered.submit_script.encode())
    return digest.hexdigest()[:16]


def tar_files(files: dict[str, str], executable: frozenset[str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, text in sorted(files.items()):
            if name.startswith("/") or ".." in name.split("/"):
                raise ValueError(f"rendered file name {name!r} escapes the round directory")
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755 if name in executable or name.endswith(".sh") else 0o644
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class Site:
    #: how long a submission waits for another submitter's record before giving up (exit 75)
    lock_wait_seconds: int = 60

    def __init__(self, name: str, transport: Transport, backend: Backend, remote_root: str, *,
                 x509_proxy: str | None = None):
        if not remote_root.startswith("/"):
            raise ValueError(
                f"remote_root={remote_root!r} must be an absolute path on the site (e.g. /home/you/batchsite)"
            )
        self.name = name
        self.transport = transport
        self.backend = backend
        self.remote_root = posixpath.normpath(remote_root)
        #: the connection's ``x509_proxy`` extra: a path on THIS side, read at each submission
        self.x509_proxy = x509_proxy
        self._probed = False

    # ------------------------------------------------------------------ helpers
    def path(self, *parts: str) -> str:
        joined = posixpath.normpath(posixpath.join(self.remote_root, *parts))
        if joined != self.remote_root and not joined.startswith(self.remote_root + "/"):
            raise ValueError(f"path {'/'.join(parts)!r} escapes remote_root {self.remote_root}")
        return joined

    def x509_proxy_path(self) -> str:
        """Where the site's copy of the proxy lives (one per connection under remote_root)."""
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", self.name) or "site"
        return self.path(CREDENTIALS_DIR, f"x509up.{safe}")

    def _credential(self) -> _Credential | None:
        if not self.x509_proxy:
            return None
        data = read_x509_proxy(self.x509_proxy, self.name)
        return _Credential(self.x509_proxy_path(), hashlib.sha256(data).hexdigest(), data)

    def probe(self) -> None:
        if self._probed:
            return
        r = self.transport.sh(self.backend.probe_script(), timeout=60)
        self.backend.apply_probe(r.out + r.err)
        self._probed = True

    def close(self) -> None:
        self.transport.close()

    def _error(self, r: CommandResult, what: str, detail: str = "", also: str = "") -> SiteCommandError:
        """``also``: more tool output to diagnose (e.g. the find script's)."""
        return SiteCommandError(r, what, detail, self.backend.diagnose(f"{r.err}\n{r.out}\n{also}"))

    # ------------------------------------------------------------------ submit / re-attach
    def submit(self, spec: RoundSpec) -> Submission:
        """Submit the round unless this key was submitted before; then adopt that submission:
        its own units (a rescue may have narrowed them) and ids, after checking that it was
        made from this same round spec (else RoundSpecMismatchError, nothing submitted).

        With ``x509_proxy`` set, the proxy is read (and checked) here, before anything is
        sent, installed on the site by the same command, and the jobs get X509_USER_PROXY."""
        return self._submit(spec, spec_hash(spec), attempt=1)

    def _submit(self, spec: RoundSpec, round_hash: str | None, attempt: int) -> Submission:
        """``round_hash``: the spec hash the record must carry (a rescue's is its round's)."""
        cred = self._credential()
        if cred is not None:
            spec = with_x509_proxy(spec, cred.remote_path)
        self.probe()  # the site's limits shape the rendering (Slurm: MaxArraySize splits the array)
        rendered = self.backend.render_round(spec)
        files = dict(rendered.files)
        files["submit.sh"] = rendered.submit_script
        header = RecordHeader(script_hash=script_hash(rendered), spec_hash=round_hash, attempt=attempt,
                              indices=spec.indices).line()
        payload = tar_files(files, rendered.executable)
        what = f"submitting {spec.label} on site {self.name}"
        r = self._submit_once(spec, header, payload, cred)
        if r.returncode in (LOCK_STALE, LOCK_FAILED):
            found = self._recover(spec, header, round_hash, r, what)
            if found is not None:
                return found
            r = self._submit_once(spec, header, payload, cred)
            if r.returncode in (LOCK_STALE, LOCK_FAILED):
                raise self._error(r, what, "still locked after one attempt to recover")
        if r.returncode != 0:
            raise self._error(r, what)
        return self._submission_from_record(spec, r.out, round_hash)

    def _submit_once(self, spec: RoundSpec, header: str, payload: bytes,
                     cred: _Credential | None = None) -> CommandResult:
        # mkdir -p of the workdir happens inside the same remote command
        wait = int(self.lock_wait_seconds)
        args = [spec.workdir, header, spec.key, str(wait)]

        def run(*extra: str, stdin: bytes) -> CommandResult:
            return self.transport.sh(SUBMIT_ONCE, "submit", *args, *extra, stdin=stdin, timeout=120 + 3 * wait,
                                     what=f"submit {spec.label}")

        if cred is None:
            return run(stdin=payload)
        # the hash only: an unchanged proxy is not sent again
        r = run(cred.remote_path, cred.sha256, "0", stdin=payload)
        if r.returncode == CRED_STALE and "@@CRED_STALE" in r.out.splitlines():
            r = run(cred.remote_path, cred.sha256, "1", stdin=base64.b64encode(cred.data) + b"\n" + payload)
        if r.returncode in (CRED_STALE, CRED_FAILED):
            raise self._error(r, f"installing the x509_proxy of site {self.name} as {cred.remote_path} "
                                 f"before submitting {spec.label}")
        return r

    def _recover(self, spec: RoundSpec, header: str, round_hash: str | None, r: CommandResult,
                 what: str) -> Submission | None:
        """After exit 75/76: the submission found by name (recorded now), or None once the
        lock is cleared (or changed hands) and one more submit-once may run."""
        owner = next((ln[len("@@LOCK "):] for ln in r.out.splitlines() if ln.startswith("@@LOCK ")), "")
        meta = posixpath.join(spec.workdir, RECORD_DIR)
        script = self.backend.render_find_script(spec)
        if script is None:
            if r.returncode == LOCK_STALE:
                raise self._error(r, what, (
                    f"{meta}/lock exists without a submission record and the {self.backend.name} backend "
                    f"cannot look for jobs by name: a submission of {spec.key} may have died half-way. "
                    f"Check whether jobs of this round run (the scheduler's jobs named {spec.key}; for a local "
                    f"site {spec.workdir}/state and logs), then remove {meta}/lock to allow a new submission"))
            # 76: the failed attempt's own guard prevents a second start (local: state/runner.lock)
        else:
            found_reply = self.transport.sh(script, timeout=120, what=f"look for {spec.key}")
            try:
                ids = self.backend.parse_find(found_reply.out, spec)
            except ValueError as e:
                raise self._error(r, what, (
                    f"{meta}/lock exists without a submission record, and looking for jobs named "
                    f"{spec.key} did not settle it: {e}"), also=f"{found_reply.out}\n{found_reply.err}") from e
            if ids is not None:
                text = self.backend.format_submit(ids).rstrip("\n") + "\n"
                written = self.transport.sh(SUBMIT_ONCE, "write-found", spec.workdir, header, owner,
                                            stdin=text.encode(), timeout=60)
                if written.returncode != 0:
                    raise self._error(written, f"recording the submission of {spec.key} found by name")
                if written.out.startswith("@@ADOPT"):
                    return self._submission_from_record(spec, written.out, round_hash)
                return None  # the lock changed hands meanwhile: submit-once decides again
        mode = "failed" if r.returncode == LOCK_FAILED else "stale"
        cleared = self.transport.sh(SUBMIT_ONCE, "clear", spec.workdir, owner, mode, timeout=60, check=True,
                              what=f"clear the lock of {spec.key}")
        if cleared.out.startswith("@@BUSY"):
            raise self._error(r, what, (
                f"{meta}/lock is held by a submission that is still running ({cleared.out[7:].strip()}: host, pid, "
                f"start) and no job named {spec.key} is known yet: try again later, or stop it first"))
        return None

    def _submission_from_record(self, spec: RoundSpec, out: str, round_hash: str | None) -> Submission:
        """The submission a record describes. ``round_hash``: the spec hash the caller's
        round has (None: do not check, the caller moves this record aside)."""
        lines = out.splitlines()
        if len(lines) < 3 or lines[0] not in ("@@ADOPT", "@@SUBMITTED"):
            raise ValueError(f"unexpected reply from the site while submitting {spec.label}: {out[:500]!r}")
        adopted = lines[0] == "@@ADOPT"
        where = posixpath.join(spec.workdir, RECORD_DIR, "submitted")
        try:
            header = RecordHeader.parse(lines[1])
        except ValueError as e:
            raise ValueError(f"{where}: line 1 {lines[1][:200]!r} is not a submission record header: {e}") from None
        if round_hash is not None and header.spec_hash is not None and header.spec_hash != round_hash:
            raise RoundSpecMismatchError(
                f"round {spec.key} on site {self.name}: {where} records a submission made from another round "
                f"spec (spec hash {header.spec_hash}; this task's round has {round_hash}): its units, fan-in, "
                f"resources or environment changed since. batchsite does not mix two specs in one round. Keep "
                f"the round as it was submitted, or give the changed round a new key (another round_index or "
                f"DAG run); to replace the recorded round instead, cancel its jobs and move {spec.workdir} aside")
        when, submit_out = lines[2], "\n".join(lines[3:])
        ids = self.backend.parse_submit(submit_out)
        return Submission(
            key=spec.key,
            scheduler=self.backend.name,  # type: ignore[arg-type]
            workdir=spec.workdir,
            # what this attempt runs: a narrowed rescue's units, not the caller's whole round
            indices=header.indices if header.indices is not None else spec.indices,
            fanout_id=ids.fanout_id,
            fanin_id=ids.fanin_id,
            schedd=ids.schedd,
            script_hash=header.script_hash,
            submitted_at=float(when or 0),
            adopted=adopted,
            attempt=header.attempt,
        )

    def _read_record(self, spec: RoundSpec) -> bytes | None:
        rec = posixpath.join(spec.workdir, RECORD_DIR, "submitted")
        r = self.transport.sh('[ -s "$1" ] && { echo "@@ADOPT"; cat "$1"; } || true', rec)
        return r.stdout if r.stdout.strip() else None

    def find(self, spec: RoundSpec) -> Submission | None:
        """The recorded submission of this round, or None (no side effects)."""
        raw = self._read_record(spec)
        return None if raw is None else self._submission_from_record(spec, raw.decode("utf-8", "replace"),
                                                                     spec_hash(spec))

    def resubmit(self, spec: RoundSpec, last_status: RoundStatus, *, reason: str) -> Submission:
        """Submit a finished round again in the same workdir (HTCondor: ``condor_submit_dag``
        without ``-f`` picks up the rescue DAG, so only failed nodes run again).

        The current record is kept as ``submitted.<n>`` (next free n), the lock removed, and
        the usual submit-once flow runs. ``spec`` may be narrowed to the failed units and
        carry escalated resources: the new record keeps the spec hash of the round it
        rescues (so the round's caller still re-attaches to it) and the next attempt
        number. Raises ValueError unless ``last_status`` (the last
        observation of this round) says it is finished, and again unless one fresh status
        of the submission recorded now says finished and not succeeded (``last_status`` may
        be older than a resubmission by someone else). Two callers at once: one moves the
        record, the other adopts the new submission.
        """
        if last_status.key != spec.key:
            raise ValueError(f"resubmit {spec.key}: the status given is of round {last_status.key}")
        if not last_status.finished:
            raise ValueError(
                f"resubmit {spec.key}: the round is not finished ({last_status.progress_line(spec.label)}); "
                "cancel it or wait for it first")
        if "\n" in reason or "\x00" in reason:
            raise ValueError("reason must be one line")
        raw = self._read_record(spec)
        round_hash, attempt = spec_hash(spec), 1
        if raw is not None:
            text = raw.decode("utf-8", "replace")
            # the status given may be older than the current record (another resubmission)
            current = self._submission_from_record(spec, text, None)
            header = RecordHeader.parse(text.splitlines()[1])
            round_hash, attempt = header.spec_hash, header.attempt + 1
            now = self.status([current])[spec.key]
            if now.succeeded or not now.finished:
                raise ValueError(
                    f"resubmit {spec.key}: its current submission {current.fanout_id} "
                    f"{'succeeded' if now.succeeded else 'is not finished'} ({now.progress_line(spec.label)})")
            record = raw.split(b"\n", 1)[1] if b"\n" in raw else b""
            self.transport.sh(SUBMIT_ONCE, "set-aside", spec.workdir, reason, stdin=record, timeout=60, check=True,
                              what=f"keep the record of {spec.key} aside")
        return self._submit(spec, round_hash, attempt)

    # ------------------------------------------------------------------ watch / cancel
    def status(self, subs: Sequence[Submission]) -> dict[str, RoundStatus]:
        """One remote command for every submission given."""
        self.probe()
        script = self.backend.render_status_script(subs)
        r = self.transport.sh(script, timeout=120)
        return self.backend.parse_status(r.out, subs)

    def release(self, subs: Sequence[Submission]) -> str | None:
        """Release held jobs (one command); None when the scheduler has no holds."""
        script = self.backend.render_release_script(subs)
        if script is None:
            return None
        r = self.transport.sh(script, timeout=120)
        return (r.out + r.err).strip()

    def cancel(self, subs: Sequence[Submission]) -> str:
        """Cancel every job of these rounds (one command); returns what the tools printed,
        followed by the backend's hint when it recognises an error in it. Raises when the
        cancel script itself fails (local: a round that cannot be cancelled from here)."""
        if not subs:
            return ""
        r = self.transport.sh(self.backend.render_cancel_script(subs), timeout=120)
        if r.returncode != 0:
            raise self._error(r, f"cancelling {', '.join(s.key for s in subs)} on site {self.name}")
        text = (r.out + r.err).strip()
        hint = self.backend.diagnose(text)
        return f"{text}\nhint: {hint}" if hint else text
