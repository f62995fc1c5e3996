"""The campaign ledger: campaigns, rounds, submissions, units, transitions and decisions.

Core (no Airflow): the records (``model``), the store interface with its SQLite store
(``store``), the terminal tables of ``batchsite campaigns`` (``render``). The PostgreSQL
store, reached through ``PostgresHook``, is an adapter: ``batchsite.hooks.ledger``.
"""
