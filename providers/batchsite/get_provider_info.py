"""Provider registration (entry point ``apache_airflow_provider``).

The distribution is ``airflow-provider-batchsite``: Airflow treats ``apache-airflow-providers-*``
as one of its own providers and then drops any hook outside ``airflow.providers.<name>``.

The connection form's extra fields (``conn-fields``) are generated from ``SiteConfig`` so that
the form and the server-side check can never drift: one field per model field (except the
connection's own host/port/login), with the model's types, enums and bounds.
"""

from __future__ import annotations

from typing import Any

from batchsite import __version__

CONN_TYPE = "batchsite"

#: SiteConfig fields that are the connection's standard fields, not extras
_STANDARD_FIELDS = frozenset({"conn_id", "host", "port", "login"})

#: SSH provider extras the form offers besides the model's own (the SSH provider publishes no
#: schema for them, so they are named here): a key given inline, its passphrase, a pinned host
#: key. The others it reads are covered by model fields (key_file, no_host_key_check,
#: connect_timeout) or are not null-safe in SSHHook (conn_timeout: int(None)), and
#: allow_host_key_change is refused by batchsite altogether.
_SSH_PASSTHROUGH_FIELDS: dict[str, dict[str, Any]] = {
    "private_key": {"label": "Private key (PEM text, instead of a key file)", "secret": True},
    "private_key_passphrase": {"label": "Private key passphrase", "secret": True},
    "host_key": {"label": "Pinned host key (e.g. 'ssh-ed25519 AAAA...')", "secret": False},
}

#: JSON-schema keys the connection form understands (pydantic's title/default are replaced)
_SCHEMA_KEYS = ("type", "enum", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "pattern")


def _form_schema(field_schema: dict[str, Any], required: bool) -> dict[str, Any]:
    """pydantic's ``anyOf [{type: T, ...bounds}, {type: null}]`` -> ``{type: [T, null], ...bounds}``,
    the shape the React form renders as one input. An optional extra may be left empty (= its
    default), a required one (scheduler, remote_root) may not."""
    variants = field_schema.get("anyOf") or [field_schema]
    out: dict[str, Any] = {}
    types: list[str] = []
    for v in variants:
        t = v.get("type")
        if t is None and "enum" in v:
            t = "string"
        if t and t not in types:
            types.append(t)
        out.update({k: v[k] for k in _SCHEMA_KEYS if k in v and k != "type"})
    if not required and "null" not in types:
        types.append("null")
        if "enum" in out and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
    out["type"] = types if len(types) > 1 else types[0]
    return out


def _label(name: str) -> str:
    return name.replace("_", " ").capitalize()


def connection_fields() -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """``(conn-fields, placeholders)`` for the ``batchsite`` connection type, from ``SiteConfig``.

    Defaults are placeholders and part of the description, never ``schema.default``: the form
    would otherwise pre-fill them and save them into every connection's extra, freezing today's
    defaults (and ``transport`` defaults to ``local`` when the connection has no host)."""
    from pydantic_core import PydanticUndefined

    from batchsite.config import SSH_PROVIDER_EXTRAS, SiteConfig

    properties = SiteConfig.model_json_schema()["properties"]
    fields: dict[str, dict[str, Any]] = {}
    placeholders: dict[str, str] = {}
    for name, info in SiteConfig.model_fields.items():
        if name in _STANDARD_FIELDS:
            continue
        required = info.is_required()
        schema = _form_schema(properties[name], required)
        default = info.default
        has_default = default is not PydanticUndefined and default is not None
        if isinstance(default, bool):
            default = "true" if default else "false"  # as written in the extra JSON
        parts = [info.description] if info.description else []
        if required:
            parts.append("Required.")
        elif has_default:
            parts.append(f"Default: {default}.")
        fields[name] = {"label": info.title or _label(name), "schema": schema,
                        "description": " ".join(parts) or None}
        if has_default:
            placeholders[name] = str(default)
    unknown = set(_SSH_PASSTHROUGH_FIELDS) - SSH_PROVIDER_EXTRAS
    assert not unknown, f"not SSH provider extras: {sorted(unknown)}"
    for name, spec in _SSH_PASSTHROUGH_FIELDS.items():
        schema: dict[str, Any] = {"type": ["string", "null"]}
        if spec["secret"]:
            schema["format"] = "password"
        fields[name] = {"label": spec["label"], "schema": schema,
                        "description": "Passed to the Airflow SSH provider unchanged."}
    return fields, placeholders


def get_provider_info() -> dict:
    conn_fields, extra_placeholders = connection_fields()
    return {
        "package-name": "airflow-provider-batchsite",
        "name": "Batchsite",
        "description": "Run scientific production campaigns on remote batch sites (HTCondor DAGMan, "
        "Slurm arrays) over SSH, with deferrable watching and iterative rounds.",
        "versions": [__version__],
        "integrations": [
            {"integration-name": "Batchsite", "external-doc-url": "https://example.invalid/batchsite",
             "tags": ["software"]},
        ],
        "hooks": [
            {"integration-name": "Batchsite",
             "python-modules": ["batchsite.hooks.site", "batchsite.hooks.staging"]},
        ],
        "operators": [
            {"integration-name": "Batchsite",
             "python-modules": ["batchsite.operators.round", "batchsite.operators.slurm", "batchsite.operators.condor"]},
        ],
        "sensors": [
            {"integration-name": "Batchsite", "python-modules": ["batchsite.sensors.job"]},
        ],
        "triggers": [
            {"integration-name": "Batchsite", "python-modules": ["batchsite.triggers.round"]},
        ],
        "connection-types": [
            {
                "connection-type": CONN_TYPE,
                "hook-class-name": "batchsite.hooks.site.BatchSiteHook",
                "hook-name": "Batch site (Slurm / HTCondor over SSH)",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema"],
                    "relabeling": {"login": "Username", "host": "Login host"},
                    "placeholders": {
                        "host": "lxplus.cern.ch or taskfarm.example.ac.uk",
                        "extra": '{"scheduler": "slurm", "remote_root": "/home/me/batchsite", '
                                 '"known_hosts": "~/.ssh/known_hosts"}',
                        **extra_placeholders,
                    },
                },
                "conn-fields": conn_fields,
            }
        ],
    }
