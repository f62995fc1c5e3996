"""Airflow connection -> SiteConfig -> transport + backend -> Site.

The only module (with transport/ssh.py) that reads Airflow connections. The built-in
connection id ``local`` needs no Airflow connection at all (the embedded demo).
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseHook

from batchsite.backends.base import get_backend
from batchsite.config import LOCAL_CONN_ID, SiteConfig, SiteConfigError, local_site_config, site_config_from_connection
from batchsite.site import Site
from batchsite.transport.base import AsyncTransport, Transport


def load_site_config(conn_id: str) -> SiteConfig:
    if not conn_id or not isinstance(conn_id, str):
        raise SiteConfigError("site_conn_id is empty: name an Airflow connection, or 'local' for this machine")
    if conn_id == LOCAL_CONN_ID:
        return local_site_config()
    try:
        conn = BaseHook.get_connection(conn_id)
    except Exception as e:  # AirflowNotFoundException and friends
        raise SiteConfigError(
            f"site connection {conn_id!r} does not exist: create it (Admin -> Connections, type "
            f"'batchsite', or AIRFLOW_CONN_{conn_id.upper()}) or use site_conn_id='local'"
        ) from e
    return site_config_from_connection(conn_id, conn.host, conn.port, conn.login, conn.extra_dejson)


def transport_for(cfg: SiteConfig) -> Transport:
    if cfg.transport == "local":
        from batchsite.transport.local import LocalTransport

        return LocalTransport(env_script=cfg.env_script)
    if cfg.transport == "ssh":
        from batchsite.transport.ssh import SSHTransport

        return SSHTransport(cfg.conn_id, env_script=cfg.env_script, known_hosts=cfg.known_hosts,
                            connect_timeout=int(cfg.connect_timeout))
    from batchsite.transport.openssh import OpenSSHTransport

    return OpenSSHTransport(_openssh_opts(cfg), env_script=cfg.env_script)


def async_transport_for(cfg: SiteConfig) -> AsyncTransport:
    if cfg.transport == "local":
        from batchsite.transport.local import AsyncLocalTransport

        return AsyncLocalTransport(env_script=cfg.env_script)
    if cfg.transport == "ssh":
        from batchsite.transport.ssh import AsyncSSHTransport

        return AsyncSSHTransport(cfg.conn_id, env_script=cfg.env_script, known_hosts=cfg.known_hosts,
                                 connect_timeout=cfg.connect_timeout)
    from batchsite.transport.openssh import AsyncOpenSSHTransport

    return AsyncOpenSSHTransport(_openssh_opts(cfg), env_script=cfg.env_script)


def _openssh_opts(cfg: SiteConfig):
    from batchsite.transport.openssh import OpenSSHOptions, control_path_for

    user = cfg.login or "unknown"
    return OpenSSHOptions(
        host=cfg.host or "", user=user, port=cfg.port,
        control_path=cfg.control_path or control_path_for(cfg.host or "", user, cfg.port),
        known_hosts=cfg.known_hosts, key_file=cfg.key_file,
        control_persist=cfg.control_persist, no_host_key_check=cfg.no_host_key_check,
        connect_timeout=cfg.connect_timeout,
    )


def site_from_config(cfg: SiteConfig) -> Site:
    # the connection's X509 proxy is installed 0600 with every submission made through this site
    return Site(cfg.conn_id, transport_for(cfg), get_backend(cfg.scheduler), cfg.remote_root,
                x509_proxy=cfg.x509_proxy)


def site_from_conn_id(conn_id: str) -> Site:
    return site_from_config(load_site_config(conn_id))


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
            self._site = site_from_config(self.config)
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
