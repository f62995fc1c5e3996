"""On Slurm: a round that ends with a failed unit shows that unit's last stderr lines in the
task log (read from the array task's ``.err`` file on the site in one remote command), not
only the path of its logs; the fan-in cancelled because of it shows nothing."""

from __future__ import annotations

import json
import time

import pytest
import structlog
from airflow.sdk.exceptions import AirflowException

from batchsite.operators.round import BatchRoundOperator

from ..conftest import site_conn
from ..unit.test_operator_round import context
from .test_decision_paths import WATCH_S, drive, site_dir  # noqa: F401 - fixture: a directory on the site


def test_slurm_failed_units_stderr_tail_is_in_the_task_log(site_info, site_dir, monkeypatch):  # noqa: F811
    tag, _ = site_dir
    monkeypatch.setenv("AIRFLOW_CONN_FT_SLURM", json.dumps(site_conn(site_info, "slurm")))
    known = f"KNOWN-{tag}: calibration file cal_0042.root not found"
    failing = ["sh", "-c", f"seq 1 30 >&2; echo '{known}' >&2; exit 3"]
    op = BatchRoundOperator(task_id="tails", site_conn_id="ft_slurm", workdir=f"test/{tag}",
                            units=[["true"], failing], fanin=["true"], watch_timeout=WATCH_S)
    t0 = time.monotonic()
    with structlog.testing.capture_logs() as logged, pytest.raises(AirflowException, match="1 of 2 units failed"):
        drive(op, context(task_id="tails", run_id=f"manual__{tag}"), WATCH_S + 30)
    errors = "\n".join(e["event"] for e in logged if e["log_level"] == "error")
    block = errors.split("tails: stderr of 1 of 1 failed unit(s), last lines:\n", 1)
    assert len(block) == 2, errors
    lines = block[1].splitlines()
    assert lines[0].startswith("--- unit 1: FAILED exit 3"), errors
    # the last 20 lines of the unit's stderr: 11..30 of seq's lines minus the one the known line pushed out
    assert lines[1:21] == [f"    {n}" for n in range(12, 31)] + [f"    {known}"], errors
    assert "fan-in" not in block[1], errors  # cancelled (afterok never satisfied): it never ran
    print(f"\nslurm stderr tail in the task log: {len(lines) - 1} lines of unit 1; {time.monotonic() - t0:.1f} s")
