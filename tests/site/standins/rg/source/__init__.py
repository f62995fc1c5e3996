"""Stand-in of the RG group's ``source`` package (install.sh adds ``rg_unit.py``, a copy of
batchsite's include/rg_reference/rg_unit.py, the real Chalker-Coddington RG unit)."""
