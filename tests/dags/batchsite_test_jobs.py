"""A small DAG the integration tests drive with `airflow tasks test` (re-attach, on_kill)."""

import pendulum
from airflow.sdk import Param, dag

from batchsite.operators.round import BatchRoundOperator
from batchsite.operators.slurm import SlurmArrayOperator

UNITS = [["sh", "-c", "sleep {{ params.sleep }}; echo unit done"] for _ in range(4)]


@dag(dag_id="batchsite_test_jobs", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
     catchup=False, params={"tag": Param("x", type="string"), "site": Param("slurm_site", type="string"),
                            "sleep": Param(5, type="integer")})
def batchsite_test_jobs():
    SlurmArrayOperator(task_id="deferred", site_conn_id="{{ params.site }}", units=UNITS,
                       fanin=["sh", "-c", "echo fanin"], throttle=2, workdir="test/{{ params.tag }}")
    # workday = 120 s on the test pool (lxplus durations scaled), so the sleeps are not removed
    BatchRoundOperator(task_id="blocking", site_conn_id="{{ params.site }}", units=UNITS,
                       fanin=["sh", "-c", "echo fanin"], throttle=2, workdir="test/{{ params.tag }}",
                       deferrable=False, job_resources={"job_flavour": "workday"})
    BatchRoundOperator(task_id="deferred_any", site_conn_id="{{ params.site }}", units=UNITS,
                       fanin=["sh", "-c", "echo fanin"], throttle=2, workdir="test/{{ params.tag }}",
                       job_resources={"job_flavour": "workday"})
    SlurmArrayOperator(task_id="failing", site_conn_id="{{ params.site }}",
                       units=[["sh", "-c", f"exit {3 if i in (2, 5) else 0}"] for i in range(8)],
                       fanin=["sh", "-c", "echo fanin"], throttle=4, workdir="test/{{ params.tag }}")

    # units 1 and 4 fail on their first run only: a rescue round reruns exactly them
    flaky = ("echo run >> runs_$0.log; if [ -e ok_$0 ]; then exit 0; fi; "
             "case $0 in 1|4) touch ok_$0; exit 3;; esac; exit 0")
    BatchRoundOperator(task_id="flaky", site_conn_id="{{ params.site }}",
                       units=[["sh", "-c", flaky, str(i)] for i in range(8)],
                       fanin=["sh", "-c", "cat runs_*.log | wc -l > fanin_runs.txt"], throttle=4,
                       workdir="test/{{ params.tag }}",
                       rescue={"auto_below": 0.5, "review_below": 0.9, "max_rescues": 2})

    # unit 0 runs 8 s on its first try: over espresso's (scaled) 5 s, so the pool removes it
    slow = "if [ -e ok_$0 ]; then exit 0; fi; if [ $0 = 0 ]; then touch ok_0; sleep 8; fi; exit 0"
    BatchRoundOperator(task_id="slow", site_conn_id="{{ params.site }}",
                       units=[["sh", "-c", slow, str(i)] for i in range(3)], fanin=["true"],
                       workdir="test/{{ params.tag }}", job_resources={"job_flavour": "espresso"},
                       rescue={"auto_below": 0.5, "review_below": 0.9, "max_rescues": 1})

    # Slurm: unit 0 sleeps past its 1-minute --time on the first try -> TIMEOUT -> rescue with 2 min
    slow_slurm = "echo run >> runs_$0.log; if [ -e ok_$0 ]; then exit 0; fi; if [ $0 = 0 ]; then touch ok_0; sleep 150; fi"
    BatchRoundOperator(task_id="slow_slurm", site_conn_id="{{ params.site }}",
                       units=[["sh", "-c", slow_slurm, str(i)] for i in range(3)], fanin=["true"],
                       workdir="test/{{ params.tag }}", job_resources={"time_minutes": 1},
                       rescue={"auto_below": 0.5, "review_below": 0.9, "max_rescues": 1})

    # 6 units that log every run of theirs: the HTCondor fault tests count reruns from these
    counted = "echo run >> runs_$0.log; sleep {{ params.sleep }}"
    BatchRoundOperator(task_id="counted", site_conn_id="{{ params.site }}",
                       units=[["sh", "-c", counted, str(i)] for i in range(6)],
                       fanin=["sh", "-c", "cat runs_*.log | wc -l > fanin_runs.txt"], throttle=2,
                       workdir="test/{{ params.tag }}", job_resources={"job_flavour": "workday"})

    # a node the test holds with condor_hold: HoldReason in the log, released after 2 s
    BatchRoundOperator(task_id="holdme", site_conn_id="{{ params.site }}",
                       units=[["sh", "-c", "sleep 6"]], fanin=["true"], workdir="test/{{ params.tag }}",
                       job_resources={"job_flavour": "microcentury"},
                       on_hold={"after_seconds": 2, "max_releases": 1})

    # the secrets test (tests/reliability/test_secrets.py): each unit and the fan-in record
    # where X509_USER_PROXY points, whether they can read it and the sha256 they read (never
    # the content) in x509_seen_<name> in the round's workdir
    x509 = ('printf "%s %s %s\\n" "$X509_USER_PROXY" "$(test -r "$X509_USER_PROXY" && echo readable || '
            'echo unreadable)" "$(sha256sum < "$X509_USER_PROXY" | cut -c1-64)" > x509_seen_$0')
    BatchRoundOperator(task_id="x509_probe", site_conn_id="{{ params.site }}",
                       units=[["sh", "-c", x509, "unit0"]], fanin=["sh", "-c", x509, "fanin"],
                       workdir="test/{{ params.tag }}")


batchsite_test_jobs()
