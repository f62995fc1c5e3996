"""A scheduled campaign: every night a small RG fixed-point run on the ``local`` site.

It triggers ``rg_campaign`` with fixed, small Params (3 steps of 4 batches of 5,000 samples)
and waits for it without holding a worker slot (deferred). The
campaign's report task writes the plots next to ``job_outputs/nightly/FP`` and emits the
outputs' Asset event, which runs ``campaign_outputs`` with the night's final statistics. A
change in the payload or the site that breaks the chain, or moves the fixed-point z std,
shows the next morning. Point ``site_conn_id`` at a batch site to check that site instead.
"""

from __future__ import annotations

import pendulum
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import dag

#: the nightly run's Params (validated by rg_campaign's first task like any other run)
NIGHTLY_CONF = {"site_conn_id": "local", "type": "FP", "version": "nightly", "steps": 3, "samples": 20000,
                "batches": 4, "throttle": 2, "seed": 1, "tolerance": 0.02}


@dag(
    dag_id="rg_nightly_check",
    schedule="30 2 * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["batchsite", "rg", "scheduled"],
    doc_md=__doc__,
)
def rg_nightly_check():
    TriggerDagRunOperator(
        task_id="run_rg_campaign",
        trigger_dag_id="rg_campaign",
        conf=NIGHTLY_CONF,
        wait_for_completion=True,
        deferrable=True,
        poke_interval=30,
    )


rg_nightly_check()
