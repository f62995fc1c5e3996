"""A site = a transport + a scheduler backend + a remote root.

This is the only place where rendered text meets I/O. Submitting is "adopt before submit",
done in ONE remote command (``_SUBMIT_ONCE``) so that no crash of ours can split it:

1. if ``<workdir>/.batchsite/submitted`` exists, print it (re-attach, nothing submitted);
2. else take ``<workdir>/.batchsite/lock`` (mkdir is atomic; ``lock/owner`` names the
   taker) or wait for the other submitter (``lock_wait_seconds``, 60);
3. unpack the rendered files (a tar on stdin), run ``submit.sh``;
4. write its stdout + the script hash to ``submitted`` (temp name, rename) BEFORE anything
   is printed back, so the job id is on the site before any caller can see it.

A lock without a record is never removed blindly: ``submit.sh`` may have submitted
something before it failed or died. The script exits

* the submit's own exit code when ``submit.sh`` fails; it keeps the lock and writes
  ``failed`` (stderr + stdout of that attempt, also appended to ``failed.log``);
* 76 (``LOCK_FAILED``) at once when it finds the lock, a ``failed`` marker and no record;
* 75 (``LOCK_STALE``) when it finds the lock without marker or record and none appears
  while it waits: the other submitter died half-way.

On 75/76 ``Site.submit`` asks the scheduler once (``Backend.render_find_script``: the jobs
carry ``spec.key`` as their name). Found: it writes the record from the found ids
(``_WRITE_FOUND``, same format, atomically) and returns the submission with
``adopted=True``. Definitely not submitted: it removes lock + marker (``_CLEAR``, only if
the lock still has the owner it saw) and runs the submit-once script one more time. A
backend that cannot search: 76 is retried the same way (the local runner's own lock makes
a second runner impossible), 75 is an error that says what to check.

``Site.resubmit`` (DAGMan rescue, Slurm repair) keeps the record as ``submitted.<n>`` and
runs the same flow again.

Credentials (the connection's ``x509_proxy`` extra) ride in the same command, before step 1
(a re-attached round's jobs get a renewed proxy too): the script gets the site copy's path
and the sha256 of the local proxy; when the copy on the site has another content it exits
77 (``CRED_STALE``) before touching anything, and ``Site.submit`` runs it once more with the
content as the first line of stdin (base64; never in argv, which ``ps`` shows to everyone).
The copy is written with umask 077 under a temp name in a 0700 directory, checked against
the hash, then renamed: no window with wider permissions, no partial file under the final
name. An unchanged proxy is never sent again. Failures exit 78 (``CRED_FAILED``).
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import posixpath
import re
import stat
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

from batchsite.backends.base import Backend, RenderedRound
from batchsite.backends.common import CREDENTIALS_DIR, RECORD_DIR, with_x509_proxy
from batchsite.model import CommandResult, RoundSpec, RoundStatus, Submission
from batchsite.transport.base import RemoteCommandError, Transport

#: exit codes of _SUBMIT_ONCE: lock without record, the last attempt failed (``failed``
#: marker) / no marker and no record after the wait
LOCK_STALE = 75
LOCK_FAILED = 76
#: submitted, but the record could not be written (the ids are in the error text)
RECORD_WRITE_FAILED = 74
#: the site's copy of a credential differs from the hash given (send the content); the
#: credential could not be installed
CRED_STALE = 77
CRED_FAILED = 78
#: larger than any X509 proxy (a few kB): a wrong path (a whole directory tarred...) is refused
MAX_CREDENTIAL_BYTES = 1 << 20

#: shared by the snippets below; $meta is <workdir>/.batchsite
_META_FNS = r"""
bs_owner() { o=; [ -f "$meta/lock/owner" ] && read -r o < "$meta/lock/owner"; }
bs_busy() {  # the lock's owner may still be submitting: its shell lives here, or it is on another host and < 10 min old
  bs_owner; set -- $o
  [ -n "${2:-}" ] || return 1
  if [ "$1" = "$(uname -n)" ]; then
    kill -0 "$2" 2>/dev/null || return 1
    [ -r "/proc/$2/cmdline" ] || return 0
    tr '\000' '\n' < "/proc/$2/cmdline" | grep -qxF -- "$wd"
    return
  fi
  [ $(( $(date +%s) - ${3:-0} )) -lt 600 ]
}
bs_mutex() {  # serialises the snippets that remove a lock or a record (not the submissions)
  i=0
  until mkdir "$meta/mutex" 2>/dev/null; do
    i=$((i + 1)); [ $i -gt 100 ] && { rmdir "$meta/mutex" 2>/dev/null; i=0; }  # a holder died
    sleep 0.1
  done
}
"""

#: $5 credential path ('' = none), $6 its sha256, $7 1 when stdin starts with its content as
#: one base64 line. Runs in a subshell with umask 077; the content is never echoed.
_CREDENTIAL = r"""
cred=${5:-}; cred_sha=${6:-}; cred_sent=${7:-0}
if [ -n "$cred" ]; then
  (
    t=; trap 'rm -f "$t"' EXIT
    bs_cred_fail() { cat >/dev/null; echo "batchsite: credential $cred: $1" >&2; exit 78; }
    d=${cred%/*}
    { [ -L "$d" ] || [ -L "$cred" ]; } && bs_cred_fail "$d or the file is a symbolic link; refusing to write a credential through it"
    [ -d "$cred" ] && bs_cred_fail "is a directory"
    mkdir -p "${d%/*}" || bs_cred_fail "cannot create ${d%/*}"
    umask 077
    mkdir -p "$d" || bs_cred_fail "cannot create $d"
    chmod 700 "$d" || bs_cred_fail "cannot make $d private (chmod 700; owned by another user?)"
    cur=; [ -f "$cred" ] && cur=$(sha256sum < "$cred" 2>/dev/null); cur=${cur%% *}
    if [ "$cred_sent" = 1 ]; then
      IFS= read -r b64 || bs_cred_fail "its content did not arrive"
      if [ "$cur" != "$cred_sha" ]; then
        t=$(mktemp "$d/.incoming.XXXXXX") || bs_cred_fail "mktemp failed in $d (disk full?)"
        printf '%s\n' "$b64" | base64 -d > "$t" || bs_cred_fail "could not write it (disk full? base64 missing?)"
        got=$(sha256sum < "$t"); [ "${got%% *}" = "$cred_sha" ] || bs_cred_fail "checksum mismatch after transfer"
        chmod 600 "$t" && mv -fT "$t" "$cred" || bs_cred_fail "could not rename it into place"
        t=
      fi
    elif [ "$cur" != "$cred_sha" ]; then
      cat >/dev/null; echo "@@CRED_STALE"; exit 77
    fi
    chmod 600 "$cred" || bs_cred_fail "cannot chmod 600 (owned by another user?)"
  ) || exit $?
fi
"""

_SUBMIT_ONCE = r"""
set -u
trap '' HUP PIPE
wd=$1; hash=$2; key=$3; wait_s=$4; meta="$wd/.batchsite"; rec="$meta/submitted"
""" + _META_FNS + _CREDENTIAL + r"""
mkdir -p "$meta" || exit 70
if [ -s "$rec" ]; then echo "@@ADOPT"; cat "$rec"; cat >/dev/null; exit 0; fi
if ! mkdir "$meta/lock" 2>/dev/null; then
  cat >/dev/null
  i=0
  while :; do
    if [ -s "$rec" ]; then echo "@@ADOPT"; cat "$rec"; exit 0; fi
    if [ -f "$meta/failed" ]; then
      bs_owner; echo "@@LOCK $o"
      echo "batchsite: a submission of $key failed and left $meta/lock; its output ($meta/failed):" >&2
      cat "$meta/failed" >&2
      exit 76
    fi
    # past the wait, only while the owner still submits (at most 3 times as long)
    if [ $i -ge "$wait_s" ]; then { [ $i -lt $((wait_s * 3)) ] && bs_busy; } || break; fi
    sleep 1; i=$((i + 1))
  done
  bs_owner; echo "@@LOCK $o"
  echo "batchsite: $meta/lock (taken by: ${o:-unknown}) exists but no submission record after $i s: a submission of this round may have died half-way. Check the scheduler for jobs named $key before removing $meta/lock to allow a new submission." >&2
  exit 75
fi
printf '%s %s %s\n' "$(uname -n)" "$$" "$(date +%s)" > "$meta/lock/owner"
rm -f "$meta/failed"
tar -xf - -C "$wd" || { rm -f "$meta/lock/owner"; rmdir "$meta/lock"; echo "batchsite: could not unpack round files into $wd" >&2; exit 71; }
out=$(cd "$wd" && sh ./submit.sh 2>"$meta/submit.err"); rc=$?
if [ $rc -ne 0 ]; then
  # keep the lock: submit.sh may have submitted something before it failed
  { echo "submit.sh exited $rc at $(date +%s)"; cat "$meta/submit.err"; printf '%s\n' "$out"; } > "$meta/failed.tmp.$$"
  cat "$meta/failed.tmp.$$" >> "$meta/failed.log"
  mv -f "$meta/failed.tmp.$$" "$meta/failed"
  echo "batchsite: submit.sh exited $rc" >&2; cat "$meta/submit.err" >&2; printf '%s\n' "$out" >&2
  case $rc in 74|75|76|77|78) rc=1 ;; esac  # ours
  exit $rc
fi
if ! { printf '%s\n%s\n%s\n' "$hash" "$(date +%s)" "$out" > "$rec.tmp.$$" && mv -f "$rec.tmp.$$" "$rec"; }; then
  rm -f "$rec.tmp.$$"
  echo "batchsite: submitted, but could not write $rec (lock kept); submit.sh printed: $out" >&2
  exit 74
fi
rm -f "$meta/failed"
echo "@@SUBMITTED"; cat "$rec"
"""

#: record a submission found by name: $1 workdir, $2 hash, $3 the lock owner seen;
#: stdin = what submit.sh would have printed. Never replaces a record.
_WRITE_FOUND = r"""
set -u
wd=$1; hash=$2; tok=$3; meta="$wd/.batchsite"; rec="$meta/submitted"
""" + _META_FNS + r"""
found=$(cat)
bs_mutex
if [ -s "$rec" ]; then rmdir "$meta/mutex"; echo "@@ADOPT"; cat "$rec"; exit 0; fi
bs_owner
if [ ! -d "$meta/lock" ] || [ "$o" != "$tok" ]; then rmdir "$meta/mutex"; echo "@@CHANGED"; exit 0; fi
if ! { printf '%s\n%s\n%s\n%s\n' "$hash" "$(date +%s)" "# batchsite: found by scheduler name, the submission's own output was lost" "$found" > "$rec.tmp.$$" && mv -f "$rec.tmp.$$" "$rec"; }; then
  rm -f "$rec.tmp.$$"; rmdir "$meta/mutex"
  echo "batchsite: could not write $rec; the scheduler has: $found" >&2; exit 74
fi
rm -f "$meta/failed"; rmdir "$meta/mutex"
echo "@@ADOPT"; cat "$rec"
"""

#: remove lock + failed marker, only while the lock still has the owner seen ($2), and
#: ($3 = stale) only when that owner no longer submits / ($3 = failed) its marker is there
_CLEAR = r"""
set -u
wd=$1; tok=$2; mode=$3; meta="$wd/.batchsite"; rec="$meta/submitted"
""" + _META_FNS + r"""
bs_mutex
bs_owner
if [ -s "$rec" ]; then echo "@@RECORDED"
elif [ ! -d "$meta/lock" ] || [ "$o" != "$tok" ]; then echo "@@CHANGED"
elif [ "$mode" = failed ] && [ ! -f "$meta/failed" ]; then echo "@@CHANGED"
elif [ "$mode" != failed ] && bs_busy; then echo "@@BUSY $o"
else rm -f "$meta/failed" "$meta/lock/owner"; rmdir "$meta/lock" && echo "@@CLEARED"
fi
rmdir "$meta/mutex"
"""

#: keep the record as submitted.<n> and remove the lock, if the record is still the one
#: on stdin; $2 = the reason (logged in resubmit.log)
_SET_ASIDE = r"""
set -u
meta="$1/.batchsite"; reason=$2; rec="$meta/submitted"
""" + _META_FNS + r"""
exp=$(cat)
bs_mutex
cur=; [ -f "$rec" ] && cur=$(cat "$rec")
if [ ! -s "$rec" ] || [ "$cur" != "$exp" ]; then rmdir "$meta/mutex"; echo "@@CHANGED"; exit 0; fi
n=1; while [ -e "$rec.$n" ]; do n=$((n + 1)); done
mv "$rec" "$rec.$n" || { rmdir "$meta/mutex"; exit 72; }
# the last attempt's exit files must not speak for the rescue round's units
[ -d "$1/status" ] && mv "$1/status" "$1/status.$n"
printf '%s %s %s\n' "$n" "$(date +%s)" "$reason" >> "$meta/resubmit.log"
rm -f "$meta/failed" "$meta/lock/owner"; rmdir "$meta/lock" 2>/dev/null
rmdir "$meta/mutex"
echo "@@MOVED $n"
"""


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


def script_hash(rendered: RenderedRound) -> str:
    h = hashlib.sha256()
    for name in sorted(rendered.files):
        h.update(name.encode() + b"\0" + rendered.files[name].encode() + b"\0")
    h.update(rendered.submit_script.encode())
    return h.hexdigest()[:16]


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
        p = posixpath.normpath(posixpath.join(self.remote_root, *parts))
        if p != self.remote_root and not p.startswith(self.remote_root + "/"):
            raise ValueError(f"path {'/'.join(parts)!r} escapes remote_root {self.remote_root}")
        return p

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
        """Submit the round unless this key was submitted before; then adopt that submission.

        With ``x509_proxy`` set, the proxy is read (and checked) here, before anything is
        sent, installed on the site by the same command, and the jobs get X509_USER_PROXY."""
        cred = self._credential()
        if cred is not None:
            spec = with_x509_proxy(spec, cred.remote_path)
        rendered = self.backend.render_round(spec)
        files = dict(rendered.files)
        files["submit.sh"] = rendered.submit_script
        digest = script_hash(rendered)
        payload = tar_files(files, rendered.executable)
        what = f"submitting {spec.label} on site {self.name}"
        r = self._submit_once(spec, digest, payload, cred)
        if r.returncode in (LOCK_STALE, LOCK_FAILED):
            found = self._recover(spec, digest, r, what)
            if found is not None:
                return found
            r = self._submit_once(spec, digest, payload, cred)
            if r.returncode in (LOCK_STALE, LOCK_FAILED):
                raise self._error(r, what, "still locked after one attempt to recover")
        if r.returncode != 0:
            raise self._error(r, what)
        return self._submission_from_record(spec, r.out)

    def _submit_once(self, spec: RoundSpec, digest: str, payload: bytes,
                     cred: _Credential | None = None) -> CommandResult:
        # mkdir -p of the workdir happens inside the same remote command
        wait = int(self.lock_wait_seconds)
        args = [spec.workdir, digest, spec.key, str(wait)]

        def run(*extra: str, stdin: bytes) -> CommandResult:
            return self.transport.sh(_SUBMIT_ONCE, *args, *extra, stdin=stdin, timeout=120 + 3 * wait,
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

    def _recover(self, spec: RoundSpec, digest: str, r: CommandResult, what: str) -> Submission | None:
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
            fr = self.transport.sh(script, timeout=120, what=f"look for {spec.key}")
            try:
                ids = self.backend.parse_find(fr.out, spec)
            except ValueError as e:
                raise self._error(r, what, (
                    f"{meta}/lock exists without a submission record, and looking for jobs named "
                    f"{spec.key} did not settle it: {e}"), also=f"{fr.out}\n{fr.err}") from e
            if ids is not None:
                text = self.backend.format_submit(ids).rstrip("\n") + "\n"
                w = self.transport.sh(_WRITE_FOUND, spec.workdir, digest, owner, stdin=text.encode(), timeout=60)
                if w.returncode != 0:
                    raise self._error(w, f"recording the submission of {spec.key} found by name")
                if w.out.startswith("@@ADOPT"):
                    return self._submission_from_record(spec, w.out)
                return None  # the lock changed hands meanwhile: submit-once decides again
        mode = "failed" if r.returncode == LOCK_FAILED else "stale"
        c = self.transport.sh(_CLEAR, spec.workdir, owner, mode, timeout=60, check=True,
                              what=f"clear the lock of {spec.key}")
        if c.out.startswith("@@BUSY"):
            raise self._error(r, what, (
                f"{meta}/lock is held by a submission that is still running ({c.out[7:].strip()}: host, pid, "
                f"start) and no job named {spec.key} is known yet: try again later, or stop it first"))
        return None

    def _submission_from_record(self, spec: RoundSpec, out: str) -> Submission:
        lines = out.splitlines()
        if not lines or lines[0] not in ("@@ADOPT", "@@SUBMITTED"):
            raise ValueError(f"unexpected reply from the site while submitting {spec.label}: {out[:500]!r}")
        adopted = lines[0] == "@@ADOPT"
        digest, when, submit_out = lines[1], lines[2], "\n".join(lines[3:])
        ids = self.backend.parse_submit(submit_out)
        return Submission(
            key=spec.key,
            scheduler=self.backend.name,  # type: ignore[arg-type]
            workdir=spec.workdir,
            indices=spec.indices,
            fanout_id=ids.fanout_id,
            fanin_id=ids.fanin_id,
            schedd=ids.schedd,
            script_hash=digest,
            submitted_at=float(when or 0),
            adopted=adopted,
        )

    def _read_record(self, spec: RoundSpec) -> bytes | None:
        rec = posixpath.join(spec.workdir, RECORD_DIR, "submitted")
        r = self.transport.sh('[ -s "$1" ] && { echo "@@ADOPT"; cat "$1"; } || true', rec)
        return r.stdout if r.stdout.strip() else None

    def find(self, spec: RoundSpec) -> Submission | None:
        """The recorded submission of this round, or None (no side effects)."""
        raw = self._read_record(spec)
        return None if raw is None else self._submission_from_record(spec, raw.decode("utf-8", "replace"))

    def resubmit(self, spec: RoundSpec, last_status: RoundStatus, *, reason: str) -> Submission:
        """Submit a finished round again in the same workdir (HTCondor: ``condor_submit_dag``
        without ``-f`` picks up the rescue DAG, so only failed nodes run again).

        The current record is kept as ``submitted.<n>`` (next free n), the lock removed, and
        the usual submit-once flow runs. Raises ValueError unless ``last_status`` (the last
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
        if raw is not None:
            # the status given may be older than the current record (another resubmission)
            current = self._submission_from_record(spec, raw.decode("utf-8", "replace"))
            now = self.status([current])[spec.key]
            if now.succeeded or not now.finished:
                raise ValueError(
                    f"resubmit {spec.key}: its current submission {current.fanout_id} "
                    f"{'succeeded' if now.succeeded else 'is not finished'} ({now.progress_line(spec.label)})")
            record = raw.split(b"\n", 1)[1] if b"\n" in raw else b""
            self.transport.sh(_SET_ASIDE, spec.workdir, reason, stdin=record, timeout=60, check=True,
                              what=f"keep the record of {spec.key} aside")
        return self.submit(spec)

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
