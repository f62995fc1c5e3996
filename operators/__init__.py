"""Airflow operators of batchsite (mapped from the top-level ``operators/`` folder)."""
