"""Run Python code in a fresh interpreter where ``airflow`` cannot be imported: how the tests
show that the core (everything below the Airflow adapters) works without Airflow."""

from __future__ import annotations

import subprocess
import sys
import textwrap

_BLOCK_AIRFLOW = textwrap.dedent("""
    import importlib.abc
    import sys

    class _NoAirflow(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "airflow" or name.startswith("airflow."):
                raise ImportError(f"{name} imported below the Airflow adapters")
            return None

    sys.meta_path.insert(0, _NoAirflow())
""")


def run_without_airflow(code: str, **kw) -> subprocess.CompletedProcess:
    """``code`` (dedented) with Airflow blocked; it should end with ``"airflow" in sys.modules`` false."""
    return subprocess.run([sys.executable, "-c", _BLOCK_AIRFLOW + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=120, **kw)
