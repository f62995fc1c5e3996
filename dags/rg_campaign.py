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
from batchsite.dagbuilder import round_loop

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
    ctx = get_current_context()
    return {k: ctx["params"].get(k) for k in PARAMS}


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
        """Validate every Param again (the UI form clamps and skips checks); nothing remote yet."""
        from batchsite.campaign.rg import parse_params
        from batchsite.hooks.site import load_site_config

        p = parse_params(_params())
        cfg = load_site_config(p.site_conn_id)
        return {"params": p.model_dump(mode="json"), "remote_root": cfg.remote_root, "python": cfg.python}

    @task
    def stage(setup: dict) -> dict:
        """Push the payload to <remote_root>/code/source (only changed files)."""
        from batchsite.hooks.site import site_from_conn_id
        from batchsite.staging import Staging, payload_dir

        p = setup["params"]
        code = p.get("code_dir") or str(payload_dir("rg_reference"))
        site = site_from_conn_id(p["site_conn_id"])
        try:
            report = Staging(site).push_code(code)
        finally:
            site.close()
        print(f"staged {code} -> {setup['remote_root']}/code/source: {report}")
        return setup

    @task
    def first_round(setup: dict) -> list[dict]:
        from batchsite.campaign.common import CampaignConfigError
        from batchsite.campaign.rg import initial_partitions, latest_fp_step, parse_params
        from batchsite.hooks.site import site_from_conn_id

        p = parse_params(setup["params"])
        fp_step = None
        if p.type == "EXP":
            # EXP starts from the last fixed-point histogram of the FP run it names
            site = site_from_conn_id(p.site_conn_id)
            try:
                fp_step = latest_fp_step(site.transport, setup["remote_root"], p)
            finally:
                site.close()
            if fp_step is None:
                raise CampaignConfigError(
                    f"fp_version={p.fp_version or p.version!r}: no FP histogram on the site to start EXP from; "
                    "run the FP campaign first or name its version in fp_version")
            print(f"EXP shifts {p.shifts} start from FP {p.fp_version or p.version} RG step {fp_step}")
        return initial_partitions(p, fp_step=fp_step)

    def prepare(partition: dict, setup: dict) -> dict:
        from batchsite.campaign.rg import parse_params, round_def

        p = parse_params(setup["params"])
        return round_def(p, partition, remote_root=setup["remote_root"], python=setup["python"])

    def collect(partition: dict, rd: dict, submitted: dict, setup: dict) -> dict:
        from batchsite.campaign.collect import collect_round
        from batchsite.campaign.rg import hist_path, out_dir, parse_params
        from batchsite.hooks.site import site_from_conn_id

        p = parse_params(setup["params"])
        prev = None
        if partition["step"] > 1:
            prev = hist_path(out_dir(setup["remote_root"], p, partition["shift_index"]), p, partition["step"] - 1)
        site = site_from_conn_id(p.site_conn_id)
        try:
            m = collect_round(site.transport, rd, prev, list(range(p.batches)))
        finally:
            site.close()
        if submitted and submitted.get("failed_indices"):
            m["missing"] = sorted(set(m["missing"]) | set(submitted["failed_indices"]))
            m["done"] = m["done"] and not m["missing"]
        print(f"RG step {partition['step']}: done={m['done']} missing={m['missing']} z_mean={m['z_mean']} "
              f"z_std={m['z_std']} L1={m['distance']} noise={m['noise']}")
        return {**partition, **m}

    def replan(results: list[dict], setup: dict, round_no: int) -> list[dict]:
        from batchsite.campaign.rg import parse_params, replan as plan

        nxt, reason = plan(parse_params(setup["params"]), results)
        print(f"replan after round {round_no}: {reason}")
        return nxt

    @task(trigger_rule="none_failed")
    def report(setup: dict) -> dict:
        """Per-step mean/std from the stats the aggregation jobs wrote; where the histograms are."""
        from batchsite.campaign.collect import format_stats, step_stats
        from batchsite.campaign.rg import output_dirs, parse_params
        from batchsite.hooks.site import site_from_conn_id

        p = parse_params(setup["params"])
        site = site_from_conn_id(p.site_conn_id)
        try:
            rows = {d: step_stats(site.transport, d) for d in output_dirs(setup["remote_root"], p)}
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
