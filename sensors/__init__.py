"""Airflow sensors of batchsite (mapped from the top-level ``sensors/`` folder)."""
