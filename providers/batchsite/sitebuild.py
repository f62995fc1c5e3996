"""SiteConfig -> transport + backend -> Site: the core's composition root.

No Airflow here. A config names its transport; ``local`` and ``openssh`` are built from the
config alone. ``ssh`` needs a connector (``batchsite.transport.ssh``) because its
credentials live where the config came from: the Airflow adapter passes one built from the
SSH provider's hooks (``batchsite.hooks.site.site_for_conn`` and friends).
"""

from __future__ import annotations

from typing import TypeVar

from batchsite.backends.base import Backend, get_backend
from batchsite.config import SiteConfig, SiteConfigError
from batchsite.site import Site
from batchsite.transport.base import AsyncTransport, Transport
from batchsite.transport.local import AsyncLocalTransport, LocalTransport
from batchsite.transport.openssh import AsyncOpenSSHTransport, OpenSSHOptions, OpenSSHTransport, control_path_for
from batchsite.transport.ssh import (
    AsyncSSHConnect, AsyncSSHTransport, SSHClientKeySource, SSHConnect, SSHTarget, SSHTransport,
)

Connect = TypeVar("Connect", SSHConnect, AsyncSSHConnect)


def transport_for(cfg: SiteConfig, *, ssh_connect: SSHConnect | None = None,
                  ssh_client_key: SSHClientKeySource | None = None) -> Transport:
    """The synchronous transport of a site (tasks, CLI). ``ssh_connect`` (and ``ssh_client_key``,
    the connector's key for the system ssh client, e.g. ``rsync -e ssh``): for ``ssh`` only."""
    if cfg.transport == "local":
        return LocalTransport(env_script=cfg.env_script)
    if cfg.transport == "ssh":
        return SSHTransport(_required(cfg, ssh_connect), _ssh_target(cfg), env_script=cfg.env_script,
                            client_key=ssh_client_key, connect_timeout=cfg.connect_timeout)
    return OpenSSHTransport(_openssh_opts(cfg), env_script=cfg.env_script)


def async_transport_for(cfg: SiteConfig, *, ssh_connect: AsyncSSHConnect | None = None) -> AsyncTransport:
    """The asynchronous transport of a site (the triggerer's poller). ``ssh_connect``: for ``ssh`` only."""
    if cfg.transport == "local":
        return AsyncLocalTransport(env_script=cfg.env_script)
    if cfg.transport == "ssh":
        return AsyncSSHTransport(_required(cfg, ssh_connect), _ssh_target(cfg), env_script=cfg.env_script,
                                 connect_timeout=cfg.connect_timeout)
    return AsyncOpenSSHTransport(_openssh_opts(cfg), env_script=cfg.env_script)


def backend_for(cfg: SiteConfig) -> Backend:
    """The site's scheduler backend with the connection's settings of it (HTCondor: the
    ``schedd`` extra). Everything that renders a site's commands builds it here, so a task,
    the triggerer's poller and a cancel all talk to the same schedd."""
    return get_backend(cfg.scheduler, **({"schedd": cfg.schedd} if cfg.schedd else {}))


def site_from_config(cfg: SiteConfig, *, ssh_connect: SSHConnect | None = None,
                     ssh_client_key: SSHClientKeySource | None = None) -> Site:
    # the connection's X509 proxy is installed 0600 with every submission made through this site
    return Site(cfg.conn_id, transport_for(cfg, ssh_connect=ssh_connect, ssh_client_key=ssh_client_key),
                backend_for(cfg), cfg.remote_root, x509_proxy=cfg.x509_proxy)


def _required(cfg: SiteConfig, connect: Connect | None) -> Connect:
    if connect is None:
        raise SiteConfigError(
            f"site {cfg.conn_id!r}: transport 'ssh' needs a connector, its credentials are in the Airflow "
            "connection: build the site with batchsite.hooks.site.site_from_conn_id (or site_for_conn)"
        )
    return connect


def _ssh_target(cfg: SiteConfig) -> SSHTarget:
    return SSHTarget(host=cfg.host or "", port=cfg.port, login=cfg.login, known_hosts=cfg.known_hosts)


def _openssh_opts(cfg: SiteConfig) -> OpenSSHOptions:
    user = cfg.login or "unknown"
    return OpenSSHOptions(
        host=cfg.host or "", user=user, port=cfg.port,
        control_path=cfg.control_path or control_path_for(cfg.host or "", user, cfg.port),
        known_hosts=cfg.known_hosts, key_file=cfg.key_file,
        control_persist=cfg.control_persist, no_host_key_check=cfg.no_host_key_check,
        connect_timeout=cfg.connect_timeout,
    )
