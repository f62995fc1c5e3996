"""Fixtures of the fast unit tests: the ``local`` site on a temporary root."""

from tests.unit.local_rounds import local_root, local_site  # noqa: F401 - fixtures
