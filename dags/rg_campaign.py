"""RG campaign: real-space RG of the Chalker-Coddington network on any batch site.

validate -> stage -> round_01 .. round_12, each a task group mapped over the partitions
the previous replan emitted (FP: one; EXP: one per shift): prepare -> submit (array of
generation batches + afterok aggregation, deferred) -> collect; then replan decides:
repair missing batches, next step (maybe with more samples), or stop. Rounds after a stop
are skipped. Only ``site_conn_id`` changes between the local, Slurm and HTCondor sites.
The payload is batchsite's reference (default), or with the ``group`` Param the RG group's
own Taskfarm scripts, run unchanged. The report prints the per-step z mean/std/peak and,
for EXP, the critical exponent nu next to the published values.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import AssetAlias, Param, dag, get_current_context, task

from batchsite.campaign.common import param_kwargs
from batchsite.campaign.rg import MAX_ROUNDS, RGParams
from batchsite.operators.notify import notify_failure
from batchsite.operators.round_loop import round_loop
from batchsite.report.model import RG_OUTPUTS_ALIAS

#: the form's text of each Param (title, description); its JSON schema and default are the
#: model's field (``param_kwargs``), so the form and the first task's check never drift
FORM = {
    "type": ("Run type", "FP: fixed-point distribution; EXP: shifted runs for the critical exponent"),
    "version": ("Version", "Output folder name: job_outputs/<version>/<type>/"),
    "steps": ("RG steps (max)", None),
    "samples": ("Samples per RG step", None),
    "batches": ("Generation batches per step", None),
    "throttle": ("Batches running at once (array %throttle)", None),
    "seed": ("Seed", None),
    "method": ("Method", None),
    "site_conn_id": ("Site connection", "'local' = this machine, no daemons"),
    "shifts": ("Shifts (EXP only)", None),
    "tolerance": ("Convergence tolerance (L1 of P(z))", None),
    "fp_version": ("FP version seeding EXP (default: version)", None),
    "time_minutes": ("Time limit per job (min)", None),
    "mem_mb": ("Memory per job (MB)", None),
    "max_samples": ("Samples per step at most",
                    "the replan doubles the samples while the change is within the noise, up to this"),
    "max_repairs": ("Repair rounds per step at most", None),
    "code_dir": ("Your own source/ package (local dir)",
                 "staged to <remote_root>/code/source instead of the reference payload"),
    "commands": ("Job command templates",
                 '{"generate": [...argv...], "aggregate": [...]}; placeholders such as '
                 '{python} {batch_root} {out_dir} {step} {batch} {samples} {seed} {input_hist}'),
    "group": ("The group's own Taskfarm chain",
              'run the group\'s rg_gen_batch.sh / rg_hist_manager.sh / gen_shifted_data.sh '
              'unchanged: {"repo_root": "/site/path/PX402-RGCC", "expr": "shaw", '
              '"env_script": "/site/path/rg-env.sh", "config": {...}}; see the README, "RG: run your own chain"'),
    "start_step": ("Restart from RG step", None),
}
PARAMS = {name: Param(**{**param_kwargs(RGParams, name), "title": title, **({"description": d} if d else {})})
          for name, (title, d) in FORM.items()}


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
    on_failure_callback=notify_failure,  # e-mail when the batchsite_notify connection exists
    max_active_tasks=8,
    doc_md=__doc__,
)
def rg_campaign():
    @task
    def validate() -> dict:
        """Validate every Param again (the UI form clamps and skips checks), once: later tasks
        get the validated params in the setup; nothing remote yet."""
        from batchsite.campaign.restart import restart_campaign, rg_restart_plan
        from batchsite.campaign.rg import RGSetup, parse_params
        from batchsite.hooks.site import load_site_config, site_for_conn

        params = parse_params(_params())
        cfg = load_site_config(params.site_conn_id)
        # restarting: before anything is staged or submitted, step k-1 complete on the site,
        # then the earlier run's steps >= k set aside (one remote command)
        restarted = restart_campaign(rg_restart_plan(params, cfg.remote_root), lambda: site_for_conn(cfg))
        if restarted:
            print(restarted)
        return RGSetup(params=params, remote_root=cfg.remote_root, python=cfg.python).model_dump(mode="json")

    @task
    def stage(setup: dict) -> dict:
        """Reference payload: push it to <remote_root>/code/source (only changed files).
        Group chain: check the group's repository and job environment on the site, then write
        the campaign's updated_config.yaml (CFG) and batchsite's job wrapper."""
        from batchsite.campaign.collect import group_preflight
        from batchsite.campaign.rg import RGSetup, group_wrapper_path
        from batchsite.campaign.rg_group import WRAPPER
        from batchsite.hooks.site import site_from_conn_id
        from batchsite.shellscripts import load
        from batchsite.staging import Staging, payload_dir
        from batchsite.staging.transfer import put_text

        known = RGSetup.model_validate(setup)
        params = known.params
        site = site_from_conn_id(params.site_conn_id)
        try:
            if params.group is None:
                code = params.code_dir or str(payload_dir("rg_reference"))
                print(f"staged {code} -> {known.remote_root}/code/source: {Staging(site).push_code(code)}")
                return setup
            group_preflight(site, params)
            cfg = params.group_config_path(known.remote_root)
            put_text(site.transport, cfg, params.group_config_text(), remote_root=known.remote_root)
            put_text(site.transport, group_wrapper_path(known.remote_root), load("batchsite.campaign", WRAPPER),
                     remote_root=known.remote_root, mode=0o755)
        finally:
            site.close()
        print(f"group chain: {params.group.repo_root} ({params.versionstr}); CFG {cfg}:\n{params.group_config_text()}")
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
        if params.type == "EXP" and params.begin_step == params.first_step:
            # EXP starts from the last fixed-point histogram of the FP run it names
            site = site_from_conn_id(params.site_conn_id)
            try:
                fp_step = latest_fp_step(site, params, fp_hist_dir(known.remote_root, params))
            finally:
                site.close()
            if fp_step is None:
                raise CampaignConfigError(
                    f"fp_version={params.fp_version or params.version!r}: no FP histogram on the site to start "
                    "EXP from; run the FP campaign first or name its version in fp_version")
            print(f"EXP shifts {params.shifts} start from FP {params.fp_version or params.version} RG step {fp_step}")
        if params.begin_step > params.first_step:
            print(f"restart: RG steps {params.begin_step}..{params.last_step}; steps {params.first_step}.."
                  f"{params.begin_step - 1} are read from the site, never submitted")
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
        if partition.get("phase", "rg") == "rg" and partition["step"] > params.first_step:
            prev = hist_path(out_dir(known.remote_root, params, partition["shift_index"]), params,
                             partition["step"] - 1)
        every_batch = list(range(params.batches))
        site = site_from_conn_id(params.site_conn_id)
        try:
            measured = collect_round(site, outputs, prev, every_batch)
        finally:
            site.close()
        if submitted and submitted.get("failed") and partition["batches"]:
            from batchsite.model import expand_ranges  # the round's XCom carries index ranges

            measured["missing"] = sorted(set(measured["missing"]) | set(expand_ranges(submitted["failed"])))
            measured["done"] = measured["done"] and not measured["missing"]
        print(f"{'perturbed start' if partition.get('phase') == 'perturb' else 'RG step'} {partition['step']}"
              f"{'' if partition['shift'] is None else ' shift ' + str(partition['shift'])}: "
              f"done={measured['done']} missing={measured['missing']} z_mean={measured['z_mean']} "
              f"z_std={measured['z_std']} z_peak={measured['z_peak']} L1={measured['distance']} "
              f"noise={measured['noise']}")
        return {**partition, **measured}

    def replan(results: list[dict], setup: dict, round_no: int) -> tuple[list[dict], str]:
        from batchsite.campaign.rg import RGSetup, replan as plan

        nxt, reason = plan(RGSetup.model_validate(setup).params, results)
        print(f"replan after round {round_no}: {reason}")
        return nxt, reason  # the reason goes to the campaign ledger

    @task(trigger_rule="none_failed", outlets=[AssetAlias(RG_OUTPUTS_ALIAS)])
    def report(setup: dict, *, outlet_events=None) -> dict:
        """Per-step z mean/std/peak of every output dir from the normalised z histograms the
        aggregation jobs wrote, the L1 convergence metric per step; for EXP the critical
        exponent nu, both ways, next to the published values. Plots (z histograms per step,
        z std and L1 per step) and report.json go to <outputs>/report/ on the site; the
        outputs' Asset event (batchsite://<conn>/<outputs>) carries the final statistics."""
        from batchsite.campaign.rg import RGSetup
        from batchsite.operators.campaign_report import publish_report
        from batchsite.report.rg import rg_report, rg_xcom

        params = RGSetup.model_validate(setup).params
        rep = publish_report(params.site_conn_id, lambda site, run: rg_report(site, params, run), RG_OUTPUTS_ALIAS,
                             outlet_events)
        return rg_xcom(rep)

    setup = stage(validate())
    replans = round_loop(setup=setup, first=first_round(setup), prepare=prepare, collect=collect,
                         replan=replan, max_rounds=MAX_ROUNDS)
    rep = report(setup)
    for x in replans:
        x >> rep


rg_campaign()
