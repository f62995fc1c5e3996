"""Deterministic job identity.

The key of a round comes from (dag_id, run_id, task_id, map_index, round) and NEVER from the
try number: a retried or restarted task computes the same key, finds the submission record
on the site and re-attaches instead of submitting again. It is also the scheduler job name
(Slurm ``--job-name``, HTCondor ``-batch-name``), so the scheduler itself can be searched.
"""

from __future__ import annotations

import hashlib
import re

_SAFE = re.compile(r"[^A-Za-z0-9]+")


def job_key(dag_id: str, run_id: str, task_id: str, map_index: int | None, round_index: int = 0,
            prefix: str = "bs") -> str:
    mi = -1 if map_index is None else int(map_index)
    ident = "\x1f".join([dag_id, run_id, task_id, str(mi), str(int(round_index))])
    digest = hashlib.sha256(ident.encode()).hexdigest()[:12]
    # a readable stem helps people reading squeue/condor_q; the digest makes it unique
    stem = _SAFE.sub("", task_id.split(".")[-1])[:16] or "round"
    return f"{prefix}-{stem}-{digest}"
