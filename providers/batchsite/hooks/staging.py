"""Airflow hook for file staging: push code/scripts to a site, pull outputs/logs back.

Thin: the work is done by :mod:`batchsite.staging` (no Airflow there), on the site of
``site_conn_id`` (``local`` needs no Airflow connection).
"""

from __future__ import annotations

import os
from typing import Any

from airflow.sdk import BaseHook

from batchsite.hooks.site import site_from_conn_id
from batchsite.site import Site
from batchsite.staging import PullReport, PushReport, Staging


class StagingHook(BaseHook):
    """Stage files on the batch site of ``site_conn_id``. One hook = one open connection; call ``close()``."""

    conn_name_attr = "site_conn_id"
    default_conn_name = "batchsite_default"
    hook_name = "Batch site file staging"

    def __init__(self, site_conn_id: str = default_conn_name, *, cache_file: str | os.PathLike | None | bool = True,
                 **kwargs: Any):
        super().__init__(**kwargs)
        self.site_conn_id = site_conn_id
        self.cache_file = cache_file
        self._site: Site | None = None
        self._staging: Staging | None = None

    def get_conn(self) -> Staging:
        if self._staging is None:
            self._site = site_from_conn_id(self.site_conn_id)
            self._staging = Staging(self._site, cache_file=self.cache_file)
        return self._staging

    def push_code(self, local_code_dir: str | os.PathLike, *, delete: bool = False) -> PushReport:
        rep = self.get_conn().push_code(local_code_dir, delete=delete)
        self.log.info("push code: %s", rep.summary())
        return rep

    def push_scripts(self, local_dir: str | os.PathLike, *, delete: bool = False) -> PushReport:
        rep = self.get_conn().push_scripts(local_dir, delete=delete)
        self.log.info("push scripts: %s", rep.summary())
        return rep

    def pull(self, kind: str, version: str, run_type: str, local_root: str | os.PathLike) -> PullReport:
        rep = self.get_conn().pull(kind, version, run_type, local_root)
        self.log.info("pull %s: %s", kind, rep.summary())
        return rep

    def close(self) -> None:
        if self._site is not None:
            self._site.close()
        self._site = self._staging = None
