"""Layer 2: scheduler backends (pure render/parse) for Slurm, HTCondor and the local runner."""

from batchsite.backends.base import Backend, RenderedRound, SubmitIds, get_backend

__all__ = ["Backend", "RenderedRound", "SubmitIds", "get_backend"]
