"""``batchsite faser-align --submit`` triggers the real Airflow DAG (no scheduler needed to see
the run: it is queued in the metadata DB); a failing trigger's exit code is passed through."""

import subprocess

from ..conftest import VENV_BIN, airflow_env


def test_submit_triggers_a_real_dag_run(airflow_home, tmp_path):
    env = airflow_env(airflow_home)
    subprocess.run([str(VENV_BIN / "airflow"), "dags", "reserialize"], env=env, capture_output=True, timeout=300)
    out_dir = tmp_path / "out"
    r = subprocess.run([str(VENV_BIN / "batchsite"), "faser-align", "-y", "2023", "-r", "11705", "-f", "400-450",
                        "-i", "3", "--submit", "--out", str(out_dir)], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "50 raw files" in r.stdout and "run id " in r.stdout
    run_id = r.stdout.split("run id ", 1)[1].split()[0]
    runs = subprocess.run([str(VENV_BIN / "airflow"), "dags", "list-runs", "faser_alignment", "-o", "json"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert f'"{run_id}"' in runs.stdout, runs.stdout[-2000:]  # the JSON follows log lines
    assert not out_dir.exists()  # a submission renders nothing locally


def test_submit_passes_the_triggers_failure_through(airflow_home):
    env = airflow_env(airflow_home)
    env["AIRFLOW__CORE__DAGS_FOLDER"] = "/nonexistent"  # the DAG cannot be found
    env["AIRFLOW_HOME"] = str(airflow_home) + "-empty"
    r = subprocess.run([str(VENV_BIN / "batchsite"), "faser-align", "-y", "2023", "-r", "11705", "-f", "400",
                        "--submit"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "exited" in r.stderr
