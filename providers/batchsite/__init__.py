"""batchsite: run scientific production campaigns on remote batch sites from Apache Airflow."""

__version__ = "0.1.0"
