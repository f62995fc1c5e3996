"""Answer the human-in-the-loop request of a running DAG, from outside its process, as a
person does. Run with the test's AIRFLOW_HOME (``python -m tests.integration.hitl_respond``):

* ``respond DAG_ID OPTION``: waits for the run's pending review, reads it
  (``GET /api/v2/dags/{dag}/dagRuns/~/hitlDetails``) and answers it with
  ``PATCH .../taskInstances/{task}/{map_index}/hitlDetails``: Airflow's own REST API app
  (``airflow.api_fastapi.app.create_app``) served in this process through FastAPI's test
  client, on the same metadata DB as ``airflow dags test`` (SimpleAuthManager,
  all-admins: the answer is recorded as the user "admin"). ``dags test`` runs no
  api-server; this is the request the Required Actions page sends.
* ``timeout DAG_ID``: waits for the pending review and its deadline, then runs the
  scheduler's own AWAITING_INPUT timeout sweep (``SchedulerJobRunner.
  check_awaiting_input_timeouts``), which records the operator's ``defaults`` as the answer
  (``dags test`` runs no scheduler, so nothing else would apply it).

Prints one JSON line: the request as the API showed it (subject, body, options, defaults).
"""

from __future__ import annotations

import json
import sys
import time


def pending(client, dag_id: str, deadline: float) -> dict:
    while True:
        r = client.get(f"/api/v2/dags/{dag_id}/dagRuns/~/hitlDetails", params={"response_received": False})
        assert r.status_code == 200, r.text
        items = r.json().get("hitl_details", [])
        if items:
            return items[0]
        if time.monotonic() > deadline:
            raise SystemExit(f"no pending human-in-the-loop request of {dag_id} within the wait")
        time.sleep(0.5)


def main(argv: list[str]) -> int:
    from fastapi.testclient import TestClient

    from airflow.api_fastapi.app import create_app

    mode, dag_id = argv[0], argv[1]
    client = TestClient(create_app("core"))
    detail = pending(client, dag_id, time.monotonic() + float(argv[3] if len(argv) > 3 else 600))
    ti = detail["task_instance"]
    if mode == "respond":
        path = (f"/api/v2/dags/{dag_id}/dagRuns/{ti['dag_run_id']}/taskInstances/{ti['task_id']}/"
                f"{ti['map_index']}/hitlDetails")
        r = client.patch(path, json={"chosen_options": [argv[2]], "params_input": {}})
        assert r.status_code == 200, f"{r.status_code} {r.text}"
    elif mode == "timeout":
        from airflow.jobs.job import Job
        from airflow.jobs.scheduler_job_runner import SchedulerJobRunner

        runner = SchedulerJobRunner(job=Job())
        # the sweep resolves only requests whose deadline has passed: sweep until it did
        while client.get(f"/api/v2/dags/{dag_id}/dagRuns/~/hitlDetails",
                         params={"response_received": False}).json().get("hitl_details"):
            runner.check_awaiting_input_timeouts()
            time.sleep(0.5)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print(json.dumps({k: detail.get(k) for k in ("subject", "body", "options", "defaults")}
                     | {"task_id": ti["task_id"], "map_index": ti["map_index"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
