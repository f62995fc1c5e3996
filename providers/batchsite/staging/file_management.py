"""The group's ``file_management.py`` on a batchsite ``Site``: push code and scripts, pull
RG outputs and logs (the layout is ``batchsite.campaign.rg_layout``)."""

from __future__ import annotations

import os
from pathlib import Path

from batchsite.campaign.rg_layout import pull_plan
from batchsite.staging.paths import StagingInputError
from batchsite.staging.transfer import PullReport, PushReport, pull_tree, push_tree


def payload_dir(name: str) -> Path:
    """A payload shipped in ``include/`` (``batchsite.include.<name>``), e.g. ``rg_reference``."""
    import batchsite.include as inc

    d = Path(inc.__file__).parent / name
    if not d.is_dir():
        raise StagingInputError(f"no payload {name!r} in {d.parent}")
    return d


class Staging:
    """The group's ``file_management.py`` on a batchsite ``Site``.

    code -> ``<remote_root>/code/source``; scripts/configs -> ``<remote_root>/scripts``;
    pull hist/outputs -> ``job_outputs/{version}/{type}``, logs -> ``job_logs/{version}/{type}``,
    mirrored under ``local_root``.
    """

    def __init__(self, site, *, cache_file: str | os.PathLike | None | bool = True):
        self.site = site
        self.cache_file = cache_file

    @property
    def remote_root(self) -> str:
        return self.site.remote_root

    def push_tree_to(self, local_dir: str | os.PathLike, remote_rel: str, *, delete: bool = False) -> PushReport:
        """Push a local tree to ``<remote_root>/<remote_rel>`` (only changed files)."""
        return push_tree(self.site.transport, local_dir, self.site.path(*remote_rel.split("/")),
                         remote_root=self.remote_root, delete=delete, cache_file=self.cache_file)

    def push_code(self, local_code_dir: str | os.PathLike, *, delete: bool = False) -> PushReport:
        return self.push_tree_to(local_code_dir, "code/source", delete=delete)

    def push_scripts(self, local_dir: str | os.PathLike, *, delete: bool = False) -> PushReport:
        return self.push_tree_to(local_dir, "scripts", delete=delete)

    def pull(self, kind: str, version: str, run_type: str, local_root: str | os.PathLike) -> PullReport:
        sub, patterns = pull_plan(kind, version, run_type)
        remote_dir = self.site.path(*sub)
        local_dir = Path(local_root).joinpath(*sub)
        return pull_tree(self.site.transport, remote_dir, local_dir, remote_root=self.remote_root,
                         patterns=patterns, cache_file=self.cache_file)
