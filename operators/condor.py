"""``CondorDagOperator``: a round as one HTCondor DAGMan DAG (a node per work unit, the fan-in
node as child of all, RETRY, CATEGORY/MAXJOBS throttle, node status file)."""

from batchsite.operators.round import BatchRoundOperator


class CondorDagOperator(BatchRoundOperator):
    """Submit the round with ``condor_submit_dag -batch-name <key>`` and watch it deferred.
    Failed nodes are recovered by resubmitting the same DAG (DAGMan's rescue DAG: only the
    failed nodes run), with the JobFlavour escalated for nodes removed at their time limit.
    ``on_kill`` removes the DAGMan job (``condor_rm``), which removes its node jobs."""

    expected_scheduler = "htcondor"
