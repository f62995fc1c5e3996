"""Fixtures of the fast unit tests: the ``local`` site on a temporary root."""

import pytest

from tests.unit.local_rounds import local_root, local_site  # noqa: F401 - fixtures


@pytest.fixture(autouse=True, scope="session")
def _ledger_in_a_temporary_file(tmp_path_factory):
    """Operators and triggers record into the campaign ledger: keep the unit tests' records in a
    throwaway SQLite file instead of ``$AIRFLOW_HOME`` (``~/airflow`` when unset)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("BATCHSITE_LEDGER_PATH", str(tmp_path_factory.mktemp("ledger") / "ledger.sqlite"))
    yield
    mp.undo()
