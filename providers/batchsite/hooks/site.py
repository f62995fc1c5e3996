"""``BatchSiteHook``, and the adapter API DAGs and operators build sites with.

The functions are defined in :mod:`batchsite.hooks.connection` (which imports Airflow only
for a real connection, so the CLI runs ``local`` without Airflow) and re-exported here:
an Airflow connection id -> SiteConfig -> the core builder (``batchsite.sitebuild``) with the
SSH provider's hooks as the ``ssh`` connectors.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseHook

from batchsite.config import SiteConfig
from batchsite.hooks.connection import (
    async_transport_for_conn,
    load_site_config,
    site_for_conn,
    site_from_conn_id,
    transport_for_conn,
)
from batchsite.site import Site

__all__ = [
    "BatchSiteHook",
    "async_transport_for_conn",
    "load_site_config",
    "site_for_conn",
    "site_from_conn_id",
    "transport_for_conn",
]


class BatchSiteHook(BaseHook):
    """A batch site: SSH (or local) transport + scheduler + remote root, from one connection.

    One hook = one open connection for the whole task; call ``close()`` (operators do).
    """

    conn_name_attr = "site_conn_id"
    default_conn_name = "batchsite_default"
    conn_type = "batchsite"
    hook_name = "Batch site (Slurm / HTCondor over SSH)"

    def __init__(self, site_conn_id: str = default_conn_name, **kwargs: Any):
        super().__init__(**kwargs)
        self.site_conn_id = site_conn_id
        self._site: Site | None = None
        self._config: SiteConfig | None = None

    @property
    def config(self) -> SiteConfig:
        if self._config is None:
            self._config = load_site_config(self.site_conn_id)
        return self._config

    def get_conn(self) -> Site:
        if self._site is None:
            self._site = site_for_conn(self.config)
        return self._site

    get_site = get_conn

    def close(self) -> None:
        if self._site is not None:
            self._site.close()
            self._site = None

    def test_connection(self) -> tuple[bool, str]:
        try:
            site = self.get_conn()
            r = site.transport.run(["sh", "-c", 'test -d "$1" && echo ok', "t", site.remote_root], timeout=30)
            site.probe()
            self.close()
            if r.returncode != 0:
                return False, f"remote_root {site.remote_root} does not exist on the site"
            return True, f"reached site, scheduler {self.config.scheduler}"
        except Exception as e:
            return False, str(e)
