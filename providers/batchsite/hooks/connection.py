"""Airflow connection -> SiteConfig, and the SSH provider's hooks as the ``ssh`` connectors.

The adapter half of building a site: the core builder (``batchsite.sitebuild``) does the rest.
Airflow is imported only when a real connection is read, so the built-in ``local`` site
(the embedded demo, the CLI) works where Airflow is not installed. The Airflow-side API is
re-exported by ``batchsite.hooks.site``, next to ``BatchSiteHook``.
"""

from __future__ import annotations

import os

from batchsite.config import LOCAL_CONN_ID, SiteConfig, SiteConfigError, local_site_config, site_config_from_connection
from batchsite.site import Site
from batchsite.sitebuild import async_transport_for, site_from_config, transport_for
from batchsite.transport.base import AsyncTransport, HostKeyError, Transport, TransportError, host_key_help
from batchsite.transport.ssh import AsyncSSHConnect, SSHClientKey, SSHClientKeySource, SSHConnect


def load_site_config(conn_id: str) -> SiteConfig:
    if not conn_id or not isinstance(conn_id, str):
        raise SiteConfigError("site_conn_id is empty: name an Airflow connection, or 'local' for this machine")
    if conn_id == LOCAL_CONN_ID:
        return local_site_config()
    from airflow.sdk import BaseHook

    try:
        conn = BaseHook.get_connection(conn_id)
    except Exception as e:  # AirflowNotFoundException and friends
        raise SiteConfigError(
            f"site connection {conn_id!r} does not exist: create it (Admin -> Connections, type "
            f"'batchsite', or AIRFLOW_CONN_{conn_id.upper()}) or use site_conn_id='local'"
        ) from e
    return site_config_from_connection(conn_id, conn.host, conn.port, conn.login, conn.extra_dejson)


def site_from_conn_id(conn_id: str) -> Site:
    return site_for_conn(load_site_config(conn_id))


def site_for_conn(cfg: SiteConfig) -> Site:
    """``sitebuild.site_from_config`` with the connection's SSHHook as the ssh connector."""
    return site_from_config(cfg, ssh_connect=_ssh_connect(cfg), ssh_client_key=_ssh_client_key(cfg))


def transport_for_conn(cfg: SiteConfig) -> Transport:
    """``sitebuild.transport_for`` with the connection's SSHHook as the ssh connector."""
    return transport_for(cfg, ssh_connect=_ssh_connect(cfg), ssh_client_key=_ssh_client_key(cfg))


def async_transport_for_conn(cfg: SiteConfig) -> AsyncTransport:
    """``sitebuild.async_transport_for`` with the connection's SSHHookAsync (the triggerer)."""
    return async_transport_for(cfg, ssh_connect=_async_ssh_connect(cfg))


def _ssh_connect(cfg: SiteConfig) -> SSHConnect | None:
    """Opens a paramiko client through ``SSHHook`` (None unless the site uses ``ssh``).

    The hook is built, and the connection's key and host-key extras checked, right away:
    a broken connection fails when the site is built, not at its first command."""
    if cfg.transport != "ssh":
        return None
    from airflow.providers.ssh.hooks.ssh import SSHHook

    # conn_retry_attempts=1: retries belong to the layer that knows what is transient
    try:
        hook = SSHHook(ssh_conn_id=cfg.conn_id, conn_retry_attempts=1, conn_timeout=int(cfg.connect_timeout))
    except Exception as e:
        if "cannot be read by paramiko" not in str(e):
            raise
        # the provider's text never mentions the usual cause
        raise TransportError(
            f"connection {cfg.conn_id!r}: extra private_key cannot be decrypted or parsed: check the "
            "extra private_key_passphrase (or remove it for an unencrypted key) and that the key is "
            "RSA, ECDSA or Ed25519 in OpenSSH/PEM format"
        ) from None
    if getattr(hook, "allow_host_key_change", False) and not hook.no_host_key_check:
        raise ValueError(
            f"connection {cfg.conn_id!r}: extra allow_host_key_change=true silently disables host-key "
            "verification; remove it (or, knowingly, set no_host_key_check=true, which logs a warning)"
        )
    if cfg.known_hosts and hook.host_key is None and not hook.no_host_key_check:
        hook.host_key = _key_from_known_hosts(cfg.known_hosts, hook.remote_host, hook.port)
        if hook.host_key is None:
            raise HostKeyError(host_key_help(hook.remote_host, hook.port, cfg.known_hosts))

    def connect():
        hook.client = None  # never let the hook hand back a dead cached client
        return hook.get_conn()

    return connect


def _ssh_client_key(cfg: SiteConfig) -> SSHClientKeySource | None:
    """The connection's key for the system ssh client (staging's ``rsync -e ssh``), read when
    first needed. None for a password or a passphrase-protected key: staging then uses its tar path."""
    if cfg.transport != "ssh":
        return None

    def client_key() -> SSHClientKey | None:
        from airflow.sdk import BaseHook

        extra = BaseHook.get_connection(cfg.conn_id).extra_dejson
        if extra.get("private_key_passphrase"):
            return None
        if extra.get("private_key"):
            return SSHClientKey(private_key=extra["private_key"])
        return SSHClientKey(key_file=extra["key_file"]) if extra.get("key_file") else None

    return client_key


def _async_ssh_connect(cfg: SiteConfig) -> AsyncSSHConnect | None:
    """Opens an asyncssh connection through ``SSHHookAsync`` (None unless the site uses ``ssh``)."""
    if cfg.transport != "ssh":
        return None
    from airflow.providers.ssh.hooks.ssh import SSHHookAsync

    known_hosts = {"known_hosts": cfg.known_hosts} if cfg.known_hosts else {}
    return SSHHookAsync(ssh_conn_id=cfg.conn_id, **known_hosts).get_conn


def _key_from_known_hosts(path: str, host: str, port: int):
    """The host's key from a known_hosts file, as SSHHook's ``host_key`` (the sync hook reads
    only ``~/.ssh/known_hosts``, not the connection's ``known_hosts`` extra)."""
    import paramiko

    hk = paramiko.HostKeys()
    hk.load(os.path.expanduser(path))
    name = host if port == 22 else f"[{host}]:{port}"
    entry = hk.lookup(name)
    if not entry:
        return None
    # prefer ed25519, as ssh-keyscan -t ed25519 writes
    for kind in ("ssh-ed25519", "ecdsa-sha2-nistp256", "rsa-sha2-512", "ssh-rsa"):
        if kind in entry:
            return entry[kind]
    return next(iter(entry.values()))
