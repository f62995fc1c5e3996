"""A one-round campaign on the shared round loop, for the review tests (tests/integration/
test_review_e2e.py): partition "flaky" has ``units`` units of which those in ``fail`` exit 3
on their first run only (stderr "unit <i>: boom on first run"), partition "clean" has 3 units
that never fail. Every unit appends to ``<dir>/<partition>/runs_<i>.log``, the fan-in to
``fanin_runs.txt``: the tests count reruns from these. ``collect`` prints the result it got.
"""

import json
from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, task

from batchsite.operators.round_loop import round_loop

UNIT = ('d=$1/$2; mkdir -p "$d"; echo run >> "$d/runs_$0.log"; [ -e "$d/ok_$0" ] && exit 0; '
        'case " $3 " in *" $0 "*) touch "$d/ok_$0"; echo "unit $0: boom on first run" >&2; exit 3;; esac; exit 0')
FANIN = 'cat "$1/$2"/runs_*.log | wc -l >> "$1/$2/fanin_runs.txt"'


@dag(dag_id="batchsite_review", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False,
     params={"dir": Param("/tmp/x", type="string"), "units": Param(8, type="integer"),
             "fail": Param([], type="array"), "site_conn_id": Param("local", type="string")})
def batchsite_review():
    @task
    def setup() -> dict:
        from airflow.sdk import get_current_context

        p = get_current_context()["params"]
        return {"dir": p["dir"], "units": p["units"], "fail": " ".join(str(i) for i in p["fail"])}

    @task
    def first(setup: dict) -> list[dict]:
        return [{"name": "flaky", "units": setup["units"], "fail": setup["fail"]},
                {"name": "clean", "units": 3, "fail": ""}]

    def prepare(partition: dict, setup: dict) -> dict:
        argv = ["sh", "-c", UNIT]
        return {"units": [[*argv, str(i), setup["dir"], partition["name"], partition["fail"]]
                          for i in range(partition["units"])],
                "fanin": ["sh", "-c", FANIN, "fanin", setup["dir"], partition["name"]],
                "label": partition["name"]}

    def collect(partition: dict, round_request: dict, submitted: dict, setup: dict) -> dict:
        print("COLLECTED " + json.dumps({"partition": partition["name"], **{
            k: submitted.get(k) for k in ("key", "decision", "failed_indices", "succeeded", "rescues", "message")}}))
        return partition

    def replan(results: list[dict], setup: dict, round_no: int) -> list[dict]:
        return []

    round_loop(setup=(s := setup()), first=first(s), prepare=prepare, collect=collect, replan=replan, max_rounds=1,
               review_timeout=timedelta(seconds=2))


batchsite_review()
