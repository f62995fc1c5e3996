"""``SlurmArrayOperator``: a round as a Slurm array (+ ``afterok`` fan-in job)."""

from batchsite.operators.round import BatchRoundOperator


class SlurmArrayOperator(BatchRoundOperator):
    """Submit work units as one ``sbatch --array`` (throttle ``%N``) and the fan-in with
    ``--dependency=afterok``; watch both deferred. Refuses a non-Slurm site."""

    expected_scheduler = "slurm"
