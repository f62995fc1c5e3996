"""The two DAGs of bench/watchers_bench.py: N mapped tasks, each starting one remote process
that waits for a release file and watching it deferred, once with batchsite and once with the
SSH provider's ``SSHRemoteJobOperator``, against the same sshd. Only the watching differs: the
remote work is the same shell loop.
"""

import pendulum
from airflow.providers.ssh.operators.ssh_remote_job import SSHRemoteJobOperator
from airflow.sdk import Param, dag

from batchsite.operators.round import BatchRoundOperator

WATCHERS = 50
POLL_SECONDS = 5
#: the remote work: wait (at most 10 min) for the release file named by the first argument
WAIT_LOOP = 'for _ in $(seq 600); do [ -e "$0" ] && exit 0; sleep 1; done; exit 1'
PARAMS = {"tag": Param("x", type="string", pattern=r"^[a-z0-9]{1,32}$"),
          "release": Param("/nonexistent", type="string")}


@dag(dag_id="bench_batchsite_watchers", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
     catchup=False, params=PARAMS, max_active_tasks=WATCHERS)
def bench_batchsite_watchers():
    # one single-unit round per mapped task: the trigger of each watches its own round; the
    # triggerer's one poller per site folds them into one status command per cycle
    BatchRoundOperator.partial(
        task_id="watch", site_conn_id="bench_batchsite", units=[["sh", "-c", WAIT_LOOP, "{{ params.release }}"]],
        workdir="bench/{{ params.tag }}/w{{ ti.map_index }}",
    ).expand(round_index=list(range(WATCHERS)))


@dag(dag_id="bench_ssh_remote_job_watchers", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
     catchup=False, params=PARAMS, max_active_tasks=WATCHERS)
def bench_ssh_remote_job_watchers():
    SSHRemoteJobOperator.partial(
        task_id="watch", ssh_conn_id="bench_ssh", poll_interval=POLL_SECONDS, cleanup="always",
        command=f"sh -c '{WAIT_LOOP}' {{{{ params.release }}}}", remote_base_dir="/tmp/bench-ssh-remote-job",
    ).expand(environment=[{"BENCH_WATCHER": str(i)} for i in range(WATCHERS)])


bench_batchsite_watchers()
bench_ssh_remote_job_watchers()
