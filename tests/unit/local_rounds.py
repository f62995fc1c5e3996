"""Real tiny rounds on the built-in ``local`` site, for the fast tests of the seams.

Jobs are real detached processes under a temporary remote root: no daemon, no mock of a
transport or a scheduler.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from batchsite.hooks.site import site_from_conn_id
from batchsite.model import RoundSpec, Submission, WorkUnit
from batchsite.site import Site
from tests.unit.test_site import wait_finished  # noqa: F401 - one helper for every local-site test


@pytest.fixture
def local_root(tmp_path: Path, monkeypatch) -> Path:
    """``site_conn_id="local"`` now means a fresh remote root, polled every 0.2 s."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.setenv("BATCHSITE_LOCAL_ROOT", str(root))
    monkeypatch.setenv("BATCHSITE_LOCAL_POLL", "0.2")
    return root


@pytest.fixture
def local_site(local_root: Path):
    site = site_from_conn_id("local")
    yield site
    site.close()


def submit(site: Site, *argvs: list[str], fanin: list[str] | None = None) -> Submission:
    key = f"bs-t-{uuid.uuid4().hex[:10]}"
    spec = RoundSpec(key=key, label=key, workdir=site.path("rounds", key),
                     units=[WorkUnit(index=i, argv=argv) for i, argv in enumerate(argvs)], fanin=fanin)
    return site.submit(spec)

