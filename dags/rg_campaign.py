"""RG campaign: real-space RG of the Chalker-Coddington network on any batch site.

validate -> stage -> round_01 .. round_12, each a task group mapped over the partitions
the previous replan emitted (FP: one; EXP: one per shift): prepare -> submit (array of
generation batches + afterok aggregation, deferred) -> collect; then replan decides:
repair missing batches, next step (maybe with more samples), or stop. Rounds after a stop
are skipped. Only ``site_conn_id`` changes between the local, Slurm and HTCondor sites.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, get_current_context, task

from batchsite.campaign.rg import MAX_ROUNDS, MAX_STEPS
from batchsite.operators.round_loop import round_loop

PARAMS = {
    "type": Param("FP", enum=["FP", "EXP"], title="Run type",
                  description="FP: fixed-point distribution; EXP: shifted runs for the critical exponent"),
    "version": Param("v1", type="string", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", title="Version",
                     description="Output folder name: job_outputs/<version>/<type>/"),
    "steps": Param(4, type="integer", minimum=1, maximum=MAX_STEPS, title="RG steps (max)"),
    "samples": Param(100000, type="integer", minimum=100, title="Samples per RG step"),
    "batches": Param(32, type="integer", minimum=1, maximum=1000, title="Generation batches per step"),
    "throttle": Param(4, type="integer", minimum=1, title="Batches running at once (array %throttle)"),
    "seed": Param(1, type="integer", minimum=0, title="Seed"),
    "method": Param("analytic", enum=["analytic", "numerical"], title="Method"),
    "site_conn_id": Param("local", type="string", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
                          title="Site connection", description="'local' = this machine, no daemons"),
    "shifts": Param([], type="array", items={"type": "number"}, title="Shifts (EXP only)"),
    "tolerance": Param(0.02, type="number", exclusiveMinimum=0, title="Convergence tolerance (L1 of P(z))"),
    "fp_version": Param(None, type=["null", "string"], title="FP version seeding EXP (default: version)"),
    "time_minutes": Param(None, type=["null", "integer"], minimum=1, title="Time limit per job (min)"),
    "code_dir": Param(None, type=["null", "string"], title="Your own source/ package (local dir)",
                      description="staged to <remote_root>/code/source instead of the reference payload"),
    "commands": Param(None, type=["null", "object"], title="Job command templates",
                      description='{"generate": [...argv...], "aggregate": [...]}; placeholders such as '
                                  '{python} {batch_root} {out_dir} {step} {batch} {samples} {seed} {input_hist}'),
}


def _params() -> dict:
    context = get_current_context()
    return {k: context["params"].get(k) for k in PARAMS}


@dag(
    dag_id="rg_campaign",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params=PARAMS,
    tags=["batchsite", "rg"],
    max_active_tasks=8,
    doc_md=__doc__,
)
def rg_campaign():
    @task
    def validate() -> dict:
        """Validate every Param again (the UI form clamps and skips checks), once: later tasks
        get the validated params in the setup; nothing remote yet."""
        from batchsite.campaign.rg import RGSetup, parse_params
        from batchsite.hooks.site import load_site_config

        params = parse_params(_params())
        cfg = load_site_config(params.site_conn_id)
        return RGSetup(params=params, remote_root=cfg.remote_root, python=cfg.python).model_dump(mode="json")

    @task
    def stage(setup: dict) -> dict:
        """Push the payload to <remote_root>/code/source (only changed files)."""
        from batchsite.campaign.rg import RGSetup
        from batchsite.hooks.site import site_from_conn_id
        from batchsite.staging import Staging, payload_dir

        params = RGSetup.model_validate(setup).params
        code = params.code_dir or str(payload_dir("rg_reference"))
        site = site_from_conn_id(params.site_conn_id)
        try:
            report = Staging(site).push_code(code)
        finally:
            site.close()
        print(f"staged {code} -> {setup['remote_root']}/code/source: {report}")
        return setup

    @task
    def first_round(setup: dict) -> list[dict]:
        from batchsite.campaign.collect import latest_fp_step
        from batchsite.campaign.common import CampaignConfigError
        from batchsite.campaign.rg import RGSetup, fp_hist_dir, initial_partitions
        from batchsite.hooks.site import site_from_conn_id

        known = RGSetup.model_validate(setup)
        params = known.params
        fp_step = None
        if params.type == "EXP":
            # EXP starts from the last fixed-point histogram of the FP run it names
            site = site_from_conn_id(params.site_conn_id)
            try:
                fp_step = latest_fp_step(site, fp_hist_dir(known.remote_root, params))
            finally:
                site.close()
            if fp_step is None:
                raise CampaignConfigError(
                    f"fp_version={params.fp_version or params.version!r}: no FP histogram on the site to start "
                    "EXP from; run the FP campaign first or name its version in fp_version")
            print(f"EXP shifts {params.shifts} start from FP {params.fp_version or params.version} RG step {fp_step}")
        return initial_partitions(params, fp_step=fp_step)

    def prepare(partition: dict, setup: dict) -> dict:
        from batchsite.campaign.rg import RGSetup, round_request

        known = RGSetup.model_validate(setup)
        return round_request(known.params, partition, remote_root=known.remote_root,
                             python=known.python).model_dump(mode="json")

    def collect(partition: dict, round_request: dict, submitted: dict, setup: dict) -> dict:
        from batchsite.campaign.collect import collect_round
        from batchsite.campaign.rg import RGRoundRequest, RGSetup, hist_path, out_dir
        from batchsite.hooks.site import site_from_conn_id

        known = RGSetup.model_validate(setup)
        params = known.params
        outputs = RGRoundRequest.model_validate(round_request).collect
        prev = None
        if partition["step"] > 1:
            prev = hist_path(out_dir(known.remote_root, params, partition["shift_index"]), params,
                             partition["step"] - 1)
        site = site_from_conn_id(params.site_conn_id)
        try:
            measured = collect_round(site, outputs, prev, list(range(params.batches)))
        finally:
            site.close()
        if submitted and submitted.get("failed_indices"):
            measured["missing"] = sorted(set(measured["missing"]) | set(submitted["failed_indices"]))
            measured["done"] = measured["done"] and not measured["missing"]
        print(f"RG step {partition['step']}: done={measured['done']} missing={measured['missing']} "
              f"z_mean={measured['z_mean']} z_std={measured['z_std']} L1={measured['distance']} "
              f"noise={measured['noise']}")
        return {**partition, **measured}

    def replan(results: list[dict], setup: dict, round_no: int) -> list[dict]:
        from batchsite.campaign.rg import RGSetup, replan as plan

        nxt, reason = plan(RGSetup.model_validate(setup).params, results)
        print(f"replan after round {round_no}: {reason}")
        return nxt

    @task(trigger_rule="none_failed")
    def report(setup: dict) -> dict:
        """Per-step mean/std from the stats the aggregation jobs wrote; where the histograms are."""
        from batchsite.campaign.collect import format_stats, step_stats
        from batchsite.campaign.rg import RGSetup, output_dirs
        from batchsite.hooks.site import site_from_conn_id

        known = RGSetup.model_validate(setup)
        site = site_from_conn_id(known.params.site_conn_id)
        try:
            rows = {d: step_stats(site, d) for d in output_dirs(known.remote_root, known.params)}
        finally:
            site.close()
        for d, stats in rows.items():
            print(format_stats(d, stats))
        return {"outputs": rows}

    setup = stage(validate())
    replans = round_loop(setup=setup, first=first_round(setup), prepare=prepare, collect=collect,
                         replan=replan, max_rounds=MAX_ROUNDS)
    rep = report(setup)
    for x in replans:
        x >> rep


rg_campaign()
