"""A site = a transport + a scheduler backend + a remote root.

This is the only place where rendered text meets I/O. Submitting is "adopt before submit",
done in ONE remote command so that no crash of ours can split it:

1. if ``<workdir>/.batchsite/submitted`` exists, print it (re-attach, nothing submitted);
2. else take ``<workdir>/.batchsite/lock`` (mkdir is atomic) or wait for the other submitter;
3. unpack the rendered files (a tar on stdin), run ``submit.sh``;
4. write its stdout + the script hash to ``submitted`` (temp name, rename) BEFORE anything
   is printed back, so the job id is on the site before any caller can see it.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import tarfile
import time
from collections.abc import Sequence

from batchsite.backends.base import Backend, RenderedRound
from batchsite.model import RoundSpec, RoundStatus, Submission
from batchsite.transport.base import RemoteCommandError, Transport

RECORD_DIR = ".batchsite"

_SUBMIT_ONCE = r"""
set -u
trap '' HUP PIPE
wd=$1; hash=$2; meta="$wd/.batchsite"; rec="$meta/submitted"
mkdir -p "$meta" || exit 70
if [ -s "$rec" ]; then echo "@@ADOPT"; cat "$rec"; cat >/dev/null; exit 0; fi
if ! mkdir "$meta/lock" 2>/dev/null; then
  cat >/dev/null
  i=0
  while [ $i -lt 60 ]; do
    if [ -s "$rec" ]; then echo "@@ADOPT"; cat "$rec"; exit 0; fi
    sleep 1; i=$((i + 1))
  done
  echo "batchsite: $meta/lock exists but no submission record after 60 s: a submission of this round may have died half-way. Check the scheduler for jobs named $(basename "$wd") before removing $meta/lock to allow a new submission." >&2
  exit 75
fi
tar -xf - -C "$wd" || { rmdir "$meta/lock"; echo "batchsite: could not unpack round files into $wd" >&2; exit 71; }
out=$(cd "$wd" && sh ./submit.sh 2>"$meta/submit.err"); rc=$?
if [ $rc -ne 0 ]; then
  rmdir "$meta/lock"
  echo "batchsite: submit.sh exited $rc" >&2; cat "$meta/submit.err" >&2; printf '%s\n' "$out" >&2
  exit $rc
fi
printf '%s\n%s\n%s\n' "$hash" "$(date +%s)" "$out" > "$rec.tmp.$$" && mv -f "$rec.tmp.$$" "$rec"
echo "@@SUBMITTED"; cat "$rec"
"""


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
    def __init__(self, name: str, transport: Transport, backend: Backend, remote_root: str):
        if not remote_root.startswith("/"):
            raise ValueError(
                f"remote_root={remote_root!r} must be an absolute path on the site (e.g. /home/you/batchsite)"
            )
        self.name = name
        self.transport = transport
        self.backend = backend
        self.remote_root = posixpath.normpath(remote_root)
        self._probed = False

    # ------------------------------------------------------------------ helpers
    def path(self, *parts: str) -> str:
        p = posixpath.normpath(posixpath.join(self.remote_root, *parts))
        if p != self.remote_root and not p.startswith(self.remote_root + "/"):
            raise ValueError(f"path {'/'.join(parts)!r} escapes remote_root {self.remote_root}")
        return p

    def probe(self) -> None:
        if self._probed:
            return
        r = self.transport.sh(self.backend.probe_script(), timeout=60)
        self.backend.apply_probe(r.out + r.err)
        self._probed = True

    def close(self) -> None:
        self.transport.close()

    # ------------------------------------------------------------------ submit / re-attach
    def submit(self, spec: RoundSpec) -> Submission:
        """Submit the round unless this key was submitted before; then adopt that submission."""
        rendered = self.backend.render_round(spec)
        files = dict(rendered.files)
        files["submit.sh"] = rendered.submit_script
        digest = script_hash(rendered)
        payload = tar_files(files, rendered.executable)
        # mkdir -p of the workdir happens inside the same remote command
        r = self.transport.sh(
            _SUBMIT_ONCE, spec.workdir, digest, stdin=payload, timeout=180,
            what=f"submit {spec.label}",
        )
        if r.returncode != 0:
            raise RemoteCommandError(r, f"submitting {spec.label} on site {self.name}")
        return self._submission_from_record(spec, r.out)

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

    def find(self, spec: RoundSpec) -> Submission | None:
        """The recorded submission of this round, or None (no side effects)."""
        rec = posixpath.join(spec.workdir, RECORD_DIR, "submitted")
        r = self.transport.sh('[ -s "$1" ] && { echo "@@ADOPT"; cat "$1"; } || true', rec)
        if not r.out.strip():
            return None
        return self._submission_from_record(spec, r.out)

    # ------------------------------------------------------------------ watch / cancel
    def status(self, subs: Sequence[Submission]) -> dict[str, RoundStatus]:
        """One remote command for every submission given."""
        self.probe()
        script = self.backend.render_status_script(subs)
        r = self.transport.sh(script, timeout=120)
        return self.backend.parse_status(r.out, subs)

    def cancel(self, subs: Sequence[Submission]) -> str:
        if not subs:
            return ""
        r = self.transport.sh(self.backend.render_cancel_script(subs), timeout=120)
        return (r.out + r.err).strip()
