"""The headline test's DAG (tests/deployment/test_headline.py): ROUNDS rounds per run, all
deferred at once, their units waiting for a release file the test creates once it has counted
the status commands that reached the site."""

import pendulum
from airflow.sdk import Param, dag

from batchsite.operators.slurm import SlurmArrayOperator

ROUNDS = 2
# a unit waits (at most 3 min) for the release file named by its first argument
WAIT = ["sh", "-c", 'for _ in $(seq 180); do [ -e "$0" ] && exit 0; sleep 1; done; exit 1',
        "{{ params.release }}"]


@dag(dag_id="batchsite_headline", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
     catchup=False, params={"tag": Param("x", type="string", pattern=r"^[a-z0-9]{1,32}$"),
                            "site": Param("slurm_site", type="string"),
                            "release": Param("/nonexistent", type="string")})
def batchsite_headline():
    for r in range(ROUNDS):
        SlurmArrayOperator(task_id=f"round_{r}", site_conn_id="{{ params.site }}", units=[WAIT],
                           fanin=["true"], workdir=f"test/{{{{ params.tag }}}}/r{r}")


batchsite_headline()
