"""Layer 2 contract: a scheduler backend turns a RoundSpec into files + one submit script,
and turns the text of ONE status command (for many rounds) back into RoundStatus objects.

Backends do no I/O. ``Site`` (site.py) runs what they render through a transport.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from batchsite.model import RoundSpec, RoundStatus, Submission


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

    def probe_script(self) -> str:
        """A cheap command run once per connection to learn site capabilities (e.g. accounting)."""
        return "true"

    def apply_probe(self, text: str) -> None:  # noqa: B027 - optional
        """Take what probe_script printed (e.g. whether sacct works)."""


_REGISTRY: dict[str, type[Backend]] = {}


def register(cls: type[Backend]) -> type[Backend]:
    _REGISTRY[cls.name] = cls
    return cls


KNOWN = ("slurm", "htcondor", "local")


def get_backend(name: str) -> Backend:
    """Backend by scheduler name; each module registers its class when imported."""
    import importlib

    if name not in KNOWN:
        raise ValueError(f"scheduler={name!r} is not known; use one of {list(KNOWN)}")
    importlib.import_module(f"batchsite.backends.{name}")
    return _REGISTRY[name]()
