"""The one wall: nothing below the Airflow adapters imports Airflow (README, "Layout").

Every core module is imported in a fresh interpreter where ``airflow`` cannot be imported,
its source is scanned for imports of Airflow or of an adapter (lazy ones inside functions
included), and a ``local`` site is built from a plain config and runs a command, with
Airflow blocked; so does the CLI on the ``local`` connection id.
"""

from __future__ import annotations

import ast
import json
import os
import pkgutil
from importlib.util import find_spec

import pytest

import batchsite
from batchsite.config import SiteConfig, SiteConfigError
from batchsite.sitebuild import site_from_config

from ..without_airflow import run_without_airflow

#: The Airflow side of the wall: everything in ``batchsite`` that may import Airflow. The
#: rest, minus the payloads below, is core: it works without Airflow and never imports these.
ADAPTERS = {
    # BaseHook subclasses; they turn an Airflow connection into a SiteConfig and SSH connectors
    "batchsite.hooks",
    # BaseTrigger subclasses, run by the triggerer
    "batchsite.triggers",
    # BaseOperator subclasses and the DAG round loop built from them
    "batchsite.operators",
    # BaseSensorOperator subclasses
    "batchsite.sensors",
    # the command line: an entry point, it resolves connection ids through the hooks
    "batchsite.cli",
    # the provider entry point Airflow calls to discover hooks and connection types
    "batchsite.get_provider_info",
}
#: Neither core nor adapter: code run by the jobs on the site (it needs numpy, not batchsite).
#: The core reads it as package data and ships it; it is not imported as library code.
PAYLOADS = "batchsite.include"
OUTSIDE_THE_CORE = ADAPTERS | {PAYLOADS}


def _within(name: str, packages: set[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def core_modules() -> list[str]:
    # the editable install maps operators/, sensors/ and include/ from their own folders, so
    # they are not under batchsite.__path__ here; a wheel puts them there, hence their entries
    found = pkgutil.walk_packages(batchsite.__path__, "batchsite.")
    return ["batchsite", *sorted(m.name for m in found if not _within(m.name, OUTSIDE_THE_CORE))]


def test_the_sweep_sees_the_core():
    mods = core_modules()
    for expected in ("batchsite.sitebuild", "batchsite.site", "batchsite.transport.ssh", "batchsite.backends.slurm",
                     "batchsite.campaign.rg", "batchsite.polling", "batchsite.staging", "batchsite.report.plots",
                     "batchsite.report.publish"):
        assert expected in mods, f"{expected} missing from the core sweep: {mods}"
    assert not [m for m in mods if _within(m, OUTSIDE_THE_CORE)]


def test_every_core_module_imports_without_airflow():
    r = run_without_airflow(f"""
        import importlib, sys
        failed = []
        for name in {core_modules()!r}:
            try:
                importlib.import_module(name)
            except Exception as e:
                failed.append(f"{{name}}: {{type(e).__name__}}: {{e}}")
        print("\\n".join(failed))
        sys.exit(1 if failed or "airflow" in sys.modules else 0)
    """)
    assert r.returncode == 0, f"core modules that need Airflow:\n{r.stdout}{r.stderr[-3000:]}"


def _is_above_the_wall(module: str) -> bool:
    return _within(module, {"airflow", *ADAPTERS})


def _imports_above_the_wall(path: str) -> list[str]:
    """Imports of Airflow or of an adapter anywhere in the file (inside functions too), and
    ``import_module("...")`` / ``__import__("...")`` calls with a literal name."""
    tree = ast.parse(open(path).read(), path)
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            names = [str(node.args[0].value)]
        found += [f"{path}:{node.lineno}: {n}" for n in names if _is_above_the_wall(n)]
    return found


def test_core_sources_never_import_airflow_or_adapters_even_lazily():
    hits = []
    for name in core_modules():
        spec = find_spec(name)
        assert spec is not None and spec.origin, name
        hits += _imports_above_the_wall(spec.origin)
    assert not hits, "imported below the adapters:\n" + "\n".join(hits)


def test_local_site_runs_from_a_plain_config_without_airflow(tmp_path):
    r = run_without_airflow(f"""
        import sys
        from batchsite.config import local_site_config
        from batchsite.sitebuild import site_from_config

        site = site_from_config(local_site_config({str(tmp_path)!r}))
        try:
            r = site.transport.run(["sh", "-c", 'echo "ran in $PWD"'], cwd=site.remote_root)
        finally:
            site.close()
        print(r.out.strip())
        sys.exit(r.returncode or ("airflow" in sys.modules))
    """)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == f"ran in {tmp_path}"


def test_cli_on_the_local_conn_id_needs_no_airflow(tmp_path):
    """The CLI is an adapter, but ``local`` is this machine: no Airflow connection to read."""
    conf = json.dumps({"site_conn_id": "local", "version": "v1"})
    r = run_without_airflow(f"""
        import sys
        from batchsite.cli import main

        rc = main(["rg-summary", "--conf", {conf!r}])
        sys.exit(rc if "airflow" not in sys.modules else 99)
    """, env={**os.environ, "BATCHSITE_LOCAL_ROOT": str(tmp_path)})
    # 1: the local site was reached and holds no RG statistics yet
    assert r.returncode == 1, r.stdout + r.stderr[-3000:]
    assert f"{tmp_path}/job_outputs/v1/FP/hist" in r.stdout


def test_the_core_builder_asks_for_an_ssh_connector():
    """The ``ssh`` credentials are in the Airflow connection: the core never reads them itself."""
    cfg = SiteConfig(conn_id="far", scheduler="slurm", transport="ssh", host="far.example.org", remote_root="/data")
    with pytest.raises(SiteConfigError, match="transport 'ssh' needs a connector.*site_from_conn_id"):
        site_from_config(cfg)
