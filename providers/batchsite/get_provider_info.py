"""Provider registration (entry point ``apache_airflow_provider``)."""

from batchsite import __version__


def get_provider_info() -> dict:
    return {
        "package-name": "apache-airflow-providers-batchsite",
        "name": "Batchsite",
        "description": "Run scientific production campaigns on remote batch sites (HTCondor DAGMan, "
        "Slurm arrays) over SSH, with deferrable watching and iterative rounds.",
        "versions": [__version__],
        "integrations": [
            {"integration-name": "Batchsite", "external-doc-url": "https://example.invalid/batchsite",
             "tags": ["software"]},
        ],
        "hooks": [
            {"integration-name": "Batchsite",
             "python-modules": ["batchsite.hooks.site", "batchsite.hooks.staging"]},
        ],
        "operators": [
            {"integration-name": "Batchsite",
             "python-modules": ["batchsite.operators.round", "batchsite.operators.slurm", "batchsite.operators.condor"]},
        ],
        "sensors": [
            {"integration-name": "Batchsite", "python-modules": ["batchsite.sensors.job"]},
        ],
        "triggers": [
            {"integration-name": "Batchsite", "python-modules": ["batchsite.triggers.round"]},
        ],
        "connection-types": [
            {
                "connection-type": "batchsite",
                "hook-class-name": "batchsite.hooks.site.BatchSiteHook",
                "hook-name": "Batch site (Slurm / HTCondor over SSH)",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema"],
                    "relabeling": {"login": "Username", "host": "Login host"},
                    "placeholders": {
                        "host": "lxplus.cern.ch or taskfarm.example.ac.uk",
                        "extra": '{"scheduler": "slurm", "remote_root": "/home/me/batchsite", '
                                 '"known_hosts": "~/.ssh/known_hosts"}',
                    },
                },
                "conn-fields": {
                    "scheduler": {"label": "Scheduler", "schema": {"type": "string", "enum": ["slurm", "htcondor", "local"]}},
                    "transport": {"label": "Transport", "schema": {"type": "string", "enum": ["ssh", "openssh", "local"], "default": "ssh"}},
                    "remote_root": {"label": "Remote root (absolute)", "schema": {"type": "string"}},
                    "env_script": {"label": "Env script sourced before every command", "schema": {"type": ["string", "null"]}},
                    "known_hosts": {"label": "known_hosts file", "schema": {"type": ["string", "null"]}},
                    "partition": {"label": "Default partition", "schema": {"type": ["string", "null"]}},
                    "account": {"label": "Default account", "schema": {"type": ["string", "null"]}},
                },
            }
        ],
    }
