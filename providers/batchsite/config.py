"""Site configuration: what an Airflow connection (or the built-in ``local`` site) says.

Every extra is documented in README ("Site connections"). Unknown extras are refused, so a
typo (``remote_rot``) fails at once with the list of known names instead of being ignored.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from batchsite.model import Resources

#: extras owned by the Airflow SSH provider; we pass them through untouched
SSH_PROVIDER_EXTRAS = frozenset({
    "key_file", "private_key", "private_key_passphrase", "passphrase", "host_key",
    "no_host_key_check", "allow_host_key_change", "conn_timeout", "cmd_timeout", "compress",
    "look_for_keys", "disabled_algorithms", "ciphers", "timeout", "auth_timeout",
})

#: the built-in site that needs no Airflow connection
LOCAL_CONN_ID = "local"
#: an HTCondor schedd name as condor_status -schedd prints it (``bsite@vm``, ``bigbird17.cern.ch``)
SCHEDD_NAME = r"[A-Za-z0-9][A-Za-z0-9@._:-]{0,254}"


class SiteConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    conn_id: str
    scheduler: Literal["slurm", "htcondor", "local"]
    transport: Literal["ssh", "openssh", "local"] = "ssh"
    remote_root: str
    env_script: str | None = None
    python: str = "python3"
    #: path (on the Airflow side) of an X509 proxy; copied 0600 to
    #: <remote_root>/.batchsite/credentials/ before each submission, X509_USER_PROXY in every job
    x509_proxy: str | None = None
    # connection facts (not secrets) the openssh transport and the logs need
    host: str | None = None
    port: int = 22
    login: str | None = None
    known_hosts: str | None = None
    key_file: str | None = None
    no_host_key_check: bool = False
    control_path: str | None = None
    control_persist: str = "10m"
    # default resources for jobs on this site
    partition: str | None = None
    account: str | None = None
    time_minutes: int | None = Field(default=None, gt=0)
    mem_mb: int | None = Field(default=None, gt=0)
    cpus: int = Field(default=1, gt=0)
    job_flavour: str | None = None
    # campaigns (the round loop): carry a round's measured sizing into the next round's unit
    # resources the campaign left unset. Off by default: a campaign's rounds may grow (RG
    # doubles its samples); the OOM rescue is the safety net when they do
    right_size: Literal["off", "memory", "all"] = "off"
    # watching
    poll_interval: float = Field(default=10.0, ge=0.2, le=3600)
    outage_grace: float = Field(default=900.0, ge=0, le=7 * 86400)
    vanish_grace: float = Field(default=120.0, ge=0, le=86400)
    max_backoff: float = Field(default=60.0, ge=1, le=3600)
    # a triggerer keeps a site's connection this long after its last watched round ends: a
    # campaign's next round (deferred again after its collect and replan tasks) reuses it
    idle_linger: float = Field(default=60.0, ge=0, le=3600)
    # a status command that hangs (dropped traffic) is abandoned after this and the
    # connection reopened; condor_q on a busy lxplus schedd can take tens of seconds
    status_timeout: float = Field(default=120.0, ge=5, le=3600)
    connect_timeout: float = Field(default=20.0, ge=1, le=600)
    # HTCondor. No ``spool``: with ``-spool`` (and ``-remote``, which implies it) DAGMan's node
    # status file, .dagman.out and the jobs' logs stay in the schedd's spool instead of the
    # round's directory, where the status command reads them
    schedd: str | None = Field(
        default=None,
        description="HTCondor: the schedd every round of this site goes to (condor_submit_dag through "
                    "_CONDOR_SCHEDD_HOST, condor_q/condor_history/condor_rm/condor_release with -name), e.g. "
                    "bigbird17.cern.ch. Unset: the login node's default schedd (lxplus login nodes differ).")

    @field_validator("remote_root", "env_script")
    @classmethod
    def _absolute(cls, v: str | None, info) -> str | None:
        if v is None:
            return v
        if not v.startswith("/"):
            raise ValueError(
                f"{info.field_name}={v!r} must be an absolute path on the site, e.g. /home/<user>/batchsite"
            )
        if any(c in v for c in "\n\x00"):
            raise ValueError(f"{info.field_name} must not contain newlines or NUL")
        return v.rstrip("/") or "/"

    @field_validator("schedd")
    @classmethod
    def _schedd_name(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(SCHEDD_NAME, v):
            raise ValueError(f"{v[:100]!r} is not a schedd name (e.g. bigbird17.cern.ch or bsite@vm; "
                             "`condor_status -schedd -af Name` lists the pool's schedds)")
        return v

    @field_validator("x509_proxy")
    @classmethod
    def _local_path(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not isinstance(v, str) or not v.strip() or any(c in v for c in "\n\x00"):
            raise ValueError("x509_proxy must be the path of the proxy file on the Airflow side, e.g. /tmp/x509up_u1000")
        p = os.path.expanduser(v)
        if not os.path.isabs(p):
            raise ValueError(f"x509_proxy={v!r} must be an absolute path on the Airflow side (or start with ~)")
        return p

    @model_validator(mode="after")
    def _needs_host(self) -> SiteConfig:
        if self.transport in ("ssh", "openssh") and not self.host:
            raise ValueError(f"transport={self.transport!r} needs the connection's host")
        if self.schedd is not None and self.scheduler != "htcondor":
            raise ValueError(f"schedd={self.schedd!r} is an HTCondor extra but scheduler={self.scheduler!r}: "
                             "remove it from the connection's extras")
        return self

    def default_resources(self) -> Resources:
        return Resources(
            time_minutes=self.time_minutes, mem_mb=self.mem_mb, cpus=self.cpus,
            partition=self.partition, account=self.account, job_flavour=self.job_flavour,
        )

    def public_dict(self) -> dict[str, Any]:
        """What may be stored in a trigger row or XCom: no secrets are ever in this model
        (``x509_proxy`` is a path; its content is read only when a round is submitted)."""
        return self.model_dump(mode="json")


class SiteConfigError(ValueError):
    pass


def _explain(conn_id: str, e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "connection"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = f"unknown extra; known extras: {sorted(set(SiteConfig.model_fields) - {'conn_id'})}"
        parts.append(f"{loc}: {msg}")
    return f"site connection {conn_id!r}: " + "; ".join(parts)


def local_site_config(root: str | None = None) -> SiteConfig:
    root = root or os.environ.get("BATCHSITE_LOCAL_ROOT") or os.path.expanduser("~/batchsite-local")
    return SiteConfig(
        conn_id=LOCAL_CONN_ID, scheduler="local", transport="local",
        remote_root=os.path.abspath(root), poll_interval=float(os.environ.get("BATCHSITE_LOCAL_POLL", "1")),
        # the interpreter running Airflow has numpy; a bare python3 on a fresh machine may not
        python=os.environ.get("BATCHSITE_LOCAL_PYTHON", sys.executable),
        right_size=os.environ.get("BATCHSITE_LOCAL_RIGHT_SIZE", "off"),
    )


def site_config_from_connection(conn_id: str, host: str | None, port: int | None, login: str | None,
                                extra: dict[str, Any]) -> SiteConfig:
    # the connection form (conn-fields) saves every field it shows, an empty one as null: unset
    fields = {k: v for k, v in extra.items() if k not in SSH_PROVIDER_EXTRAS and v is not None}
    if "key_file" in extra:
        fields["key_file"] = extra["key_file"]
    if str(extra.get("no_host_key_check", "false")).lower() == "true":
        fields["no_host_key_check"] = True
    if "transport" not in fields:
        fields["transport"] = "ssh" if host else "local"
    try:
        return SiteConfig(conn_id=conn_id, host=host or None, port=port or 22, login=login or None, **fields)
    except ValidationError as e:
        raise SiteConfigError(_explain(conn_id, e)) from None
    except TypeError as e:
        raise SiteConfigError(f"site connection {conn_id!r}: {e}") from None
