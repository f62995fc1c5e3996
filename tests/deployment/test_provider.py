"""The provider as Airflow sees it: registered under its third-party distribution name, the hook
kept by the coherence check, ``airflow connections test`` and ``Connection.get_hook()`` against
the REAL sshd of the test site, and a connection-form field for every SiteConfig extra."""

from __future__ import annotations

import json
import subprocess

import pytest

from ..conftest import VENV_BIN, airflow_env, site_conn

DIST = "airflow-provider-batchsite"


def test_the_distribution_uses_the_third_party_name():
    import importlib.metadata as md

    from batchsite.get_provider_info import get_provider_info

    assert get_provider_info()["package-name"] == DIST
    eps = [ep for ep in md.distribution(DIST).entry_points if ep.group == "apache_airflow_provider"]
    assert [ep.value for ep in eps] == ["batchsite.get_provider_info:get_provider_info"]
    # the reserved name would make Airflow's coherence check drop the hook
    names = {d.metadata["Name"] for d in md.distributions()}
    assert "apache-airflow-providers-batchsite" not in names


def test_providers_manager_keeps_the_hook_and_the_form_fields():
    from airflow.providers_manager import ProvidersManager

    from batchsite.config import SiteConfig

    pm = ProvidersManager()
    hook = pm.hooks["batchsite"]
    assert hook is not None and hook.hook_class_name == "batchsite.hooks.site.BatchSiteHook"
    assert hook.package_name == DIST
    widgets = {k.removeprefix("extra__batchsite__"): w for k, w in pm.connection_form_widgets.items()
               if k.startswith("extra__batchsite__")}
    extras = set(SiteConfig.model_fields) - {"conn_id", "host", "port", "login"}
    assert extras <= set(widgets), sorted(extras - set(widgets))
    # secrets are password widgets (masked by the API); the model's bounds reach the form
    assert widgets["private_key"].is_sensitive and widgets["private_key_passphrase"].is_sensitive
    assert not widgets["remote_root"].is_sensitive
    poll = widgets["poll_interval"].field["schema"]
    assert (poll["minimum"], poll["maximum"]) == (0.2, 3600)
    assert widgets["scheduler"].field["schema"]["enum"] == ["slurm", "htcondor", "local"]
    # defaults are placeholders, never pre-filled values (they would be saved into the extra)
    assert all(w.field["value"] is None for w in widgets.values())
    placeholders = pm.field_behaviours["batchsite"]["placeholders"]
    assert placeholders["extra__batchsite__poll_interval"] == "10.0"
    assert placeholders["extra__batchsite__control_persist"] == "10m"


def test_a_connection_saved_by_the_form_with_empty_fields_is_valid(site_info):
    """The form saves every field it shows, the empty ones as null."""
    from batchsite.config import site_config_from_connection
    from batchsite.get_provider_info import connection_fields

    conn = site_conn(site_info, "slurm")
    fields, _ = connection_fields()
    extra = {name: None for name in fields} | conn["extra"]
    cfg = site_config_from_connection("form_site", conn["host"], conn["port"], conn["login"], extra)
    assert cfg.poll_interval == 1 and cfg.status_timeout == 120 and cfg.transport == "ssh"


@pytest.mark.parametrize("scheduler", ["slurm", "htcondor"])
def test_airflow_connections_test_reaches_the_real_site(condor_pool, tmp_path, scheduler):
    env = airflow_env(tmp_path, the_site=site_conn(condor_pool, scheduler))
    env["AIRFLOW__CORE__TEST_CONNECTION"] = "Enabled"
    r = subprocess.run([str(VENV_BIN / "airflow"), "connections", "test", "the_site"], env=env,
                       capture_output=True, text=True, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "Connection success!" in out, out[-3000:]
    assert "Unknown hook type" not in out


def test_connection_get_hook_returns_the_batchsite_hook(site_info, monkeypatch):
    from airflow.models.connection import Connection

    from batchsite.hooks.site import BatchSiteHook

    conn = site_conn(site_info, "slurm")
    monkeypatch.setenv("AIRFLOW_CONN_SLURM_SITE", json.dumps(conn))
    c = Connection(conn_id="slurm_site", conn_type="batchsite", host=conn["host"], port=conn["port"],
                   login=conn["login"], extra=json.dumps(conn["extra"]))
    hook = c.get_hook()
    assert isinstance(hook, BatchSiteHook) and hook.site_conn_id == "slurm_site"
    ok, message = hook.test_connection()
    assert ok, message
