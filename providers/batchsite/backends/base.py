"""Layer 2 contract: a scheduler backend turns a RoundSpec into files + one submit script,
and turns the text of ONE status command (for many rounds) back into RoundStatus objects.

Backends do no I/O. ``Site`` (site.py) runs what they render through a transport.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from batchsite.measure import RoundUsage
from batchsite.model import RoundSpec, RoundStatus, Submission


class UnsupportedOperation(RuntimeError):
    """This scheduler cannot do that (e.g. the local runner has no job names to search)."""


@dataclass(frozen=True)
class RenderedRound:
    """Files to create under ``spec.workdir`` (relative path -> text) and the submit script.

    ``submit_script`` is POSIX sh, run with cwd = workdir; its stdout is what
    ``Backend.parse_submit`` reads (and what the site records before anything returns).
    """

    files: dict[str, str]
    submit_script: str
    executable: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class SubmitIds:
    """What ``parse_submit`` / ``parse_find`` read; the fields of ``Submission`` of the same names."""

    fanout_id: str
    fanin_id: str | None = None
    schedd: str | None = None


class Backend(abc.ABC):
    name: ClassVar[str]

    @abc.abstractmethod
    def render_round(self, spec: RoundSpec) -> RenderedRound: ...

    @abc.abstractmethod
    def parse_submit(self, stdout: str) -> SubmitIds:
        """Raise ValueError with the text when no id can be found."""

    @abc.abstractmethod
    def render_status_script(self, subs: Sequence[Submission]) -> str:
        """ONE sh script that reports on every submission given (one remote command per poll)."""

    @abc.abstractmethod
    def parse_status(self, text: str, subs: Sequence[Submission]) -> dict[str, RoundStatus]: ...

    @abc.abstractmethod
    def render_cancel_script(self, subs: Sequence[Submission]) -> str: ...

    def render_release_script(self, subs: Sequence[Submission]) -> str | None:
        """Release the held jobs of these rounds (one command); None: this scheduler has no holds."""
        return None

    def probe_script(self) -> str:
        """A cheap command run once per connection to learn site capabilities (e.g. accounting)."""
        return "true"

    def apply_probe(self, text: str) -> None:  # noqa: B027 - optional
        """Take what probe_script printed (e.g. whether sacct works)."""

    # -------------------------------------------------------------- re-attach by scheduler name
    # Optional. ``Site.submit`` uses these when a submission left a lock but no record
    # (it died half-way, or submit.sh failed): the round's jobs carry ``spec.key`` as their
    # scheduler name (Slurm --job-name, DAGMan -batch-name).

    def render_find_script(self, spec: RoundSpec) -> str | None:
        """ONE sh script that looks for the jobs of this round by name; None: this backend
        cannot search (local: the runner's own lock file already prevents a second runner)."""
        return None

    def parse_find(self, text: str, spec: RoundSpec) -> SubmitIds | None:
        """The ids of the round's submission in the output of ``render_find_script(spec)``;
        None: definitely not submitted. Raises ValueError when the scheduler could not be
        asked, or when the answer is ambiguous (two submissions carry the name, half a
        submission): the caller must not guess."""
        raise UnsupportedOperation(f"{self.name}: cannot look for submissions by name")

    def format_submit(self, ids: SubmitIds) -> str:
        """What submit.sh prints for these ids, so ``parse_submit`` reads them back (the
        submission record written for a submission found by ``parse_find``)."""
        raise UnsupportedOperation(f"{self.name}: cannot write a record for found ids")

    # -------------------------------------------------------------- measured usage (issue 15)

    def usage_command(self, sub: Submission) -> list[str] | None:
        """The argv of ONE command that prints the measured usage of every job of ``sub``
        (``parse_usage`` reads it); None: this site cannot measure (e.g. no accounting)."""
        return None

    def parse_usage(self, text: str, sub: Submission) -> RoundUsage:
        return RoundUsage(note=f"{self.name}: no usage measurement")

    def diagnose(self, text: str) -> str | None:
        """A hint for a known error in a tool's output (credentials, controller down, bad
        partition), or None. ``Site`` adds it to the errors it raises."""
        return None


_REGISTRY: dict[str, type[Backend]] = {}


def register(cls: type[Backend]) -> type[Backend]:
    _REGISTRY[cls.name] = cls
    return cls


KNOWN = ("slurm", "htcondor", "local")


def get_backend(name: str, **settings: str) -> Backend:
    """Backend by scheduler name; each module registers its class when imported.
    ``settings``: the site's keyword settings of that backend (HTCondor: ``schedd``);
    ``batchsite.sitebuild.backend_for`` gives them from a site's config."""
    import importlib

    if name not in KNOWN:
        raise ValueError(f"scheduler={name!r} is not known; use one of {list(KNOWN)}")
    importlib.import_module(f"batchsite.backends.{name}")
    return _REGISTRY[name](**settings)
