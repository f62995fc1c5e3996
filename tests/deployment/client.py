"""A small client of Airflow 3's public REST API, doing what the web UI does.

JWT from ``POST /auth/token`` (SimpleAuthManager), then ``/api/v2``: unpause a DAG, trigger a
run with conf (the trigger form's request), wait for the run's state, list task instances
(mapped ones included) and read a task instance's log.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx

FINISHED_RUN_STATES = frozenset({"success", "failed"})


class AirflowApiError(AssertionError):
    pass


class AirflowClient:
    def __init__(self, base_url: str, username: str, password: str, timeout: float = 30):
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)
        r = self._http.post("/auth/token", json={"username": username, "password": password})
        if r.status_code not in (200, 201):
            raise AirflowApiError(f"POST /auth/token -> {r.status_code}: {r.text[:500]}")
        self._http.headers["Authorization"] = f"Bearer {r.json()['access_token']}"

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kw: Any) -> Any:
        r = self._http.request(method, f"/api/v2{path}", **kw)
        if r.status_code >= 400:
            raise AirflowApiError(f"{method} /api/v2{path} -> {r.status_code}: {r.text[:2000]}")
        return r.json() if r.content else None

    # ------------------------------------------------------------------ DAGs and runs
    def dag(self, dag_id: str) -> dict:
        return self.request("GET", f"/dags/{dag_id}")

    def import_errors(self) -> list[dict]:
        return self.request("GET", "/importErrors")["import_errors"]

    def unpause(self, dag_id: str) -> None:
        self.request("PATCH", f"/dags/{dag_id}", json={"is_paused": False})

    def trigger(self, dag_id: str, conf: dict, run_id: str | None = None) -> str:
        """``POST dagRuns`` as the trigger form sends it; returns the run id."""
        body: dict[str, Any] = {"conf": conf, "logical_date": None}
        if run_id:
            body["dag_run_id"] = run_id
        return self.request("POST", f"/dags/{dag_id}/dagRuns", json=body)["dag_run_id"]

    def run(self, dag_id: str, run_id: str) -> dict:
        return self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances",
                            params={"limit": 1000})["task_instances"]

    def task_tries(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> list[dict]:
        """Every recorded try of one task instance (history and current), oldest first. Airflow
        can raise ``try_number`` without recording a try (a task put back to scheduled, e.g. by
        the stuck-in-queued sweep), so ``range(1, try_number + 1)`` may name tries that have no log."""
        data = self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/{map_index}/tries")
        return sorted(data["task_instances"], key=lambda t: t["try_number"])

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float,
                     on_poll: Callable[[list[dict]], None] | None = None, interval: float = 1.0) -> dict:
        """Poll until the run is success or failed; AssertionError with every task's state on
        timeout. ``on_poll(task_instances)`` runs each cycle (e.g. to act once a task defers)."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.run(dag_id, run_id)
            if run["state"] in FINISHED_RUN_STATES:
                return run
            if on_poll is not None:
                on_poll(self.task_instances(dag_id, run_id))
            if time.monotonic() > deadline:
                raise AirflowApiError(f"run {dag_id}/{run_id} still {run['state']} after {timeout:.0f}s; tasks: "
                                      f"{self.describe_tasks(dag_id, run_id)}")
            time.sleep(interval)

    def describe_tasks(self, dag_id: str, run_id: str) -> str:
        return ", ".join(f"{t['task_id']}[{t['map_index']}]={t['state']}"
                         for t in self.task_instances(dag_id, run_id))

    # ------------------------------------------------------------------ logs
    def task_log(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1, try_number: int = 1) -> str:
        """The whole log of one task instance try (its trigger's lines included), one line per
        record: structured records are rendered as JSON so that their text can be searched."""
        data = self.request(
            "GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
            params={"map_index": map_index, "full_content": "true"}, headers={"Accept": "application/json"})
        content = data.get("content", [])
        if isinstance(content, str):
            return content
        return "\n".join(x if isinstance(x, str) else _render_record(x) for x in content)

    def failure_report(self, dag_id: str, run_id: str) -> str:
        """Every failed task instance's log tail, for assertion messages."""
        out = [f"tasks: {self.describe_tasks(dag_id, run_id)}"]
        for t in self.task_instances(dag_id, run_id):
            if t["state"] in ("failed", "upstream_failed") and t.get("try_number"):
                try:
                    log = self.task_log(dag_id, run_id, t["task_id"], t["map_index"], t["try_number"])
                except AirflowApiError as e:
                    log = str(e)
                out.append(f"--- {t['task_id']}[{t['map_index']}] try {t['try_number']}\n{log[-3000:]}")
        return "\n".join(out)


def _render_record(record: dict) -> str:
    """One structured log record as the UI shows it: time, level, message; an exception as its
    type, value and innermost frames."""
    line = f"{record.get('timestamp', '')} {record.get('level', '')} {record.get('event', '')}".strip()
    extra = {k: v for k, v in record.items()
             if k not in ("timestamp", "level", "event", "error_detail", "task_id", "ti_id", "dag_id", "map_index",
                          "try_number", "run_id", "logger", "filename", "lineno", "loc")}
    if extra:
        line += " " + json.dumps(extra, default=str)
    for err in record.get("error_detail") or []:
        frames = " <- ".join(f"{f['filename']}:{f['lineno']} {f['name']}" for f in reversed(err.get("frames", [])[-3:]))
        line += f"\n    {err.get('exc_type')}: {err.get('exc_value')} at {frames}"
    return line
