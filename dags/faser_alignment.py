"""FASER tracker alignment: reconstruction per raw file, then Millepede, iterated to convergence.

Airflow owns the iteration loop (iter01 .. iter10, replan between iterations); the batch
site owns each iteration: on HTCondor one DAGMan DAG (a reco node per raw file, RETRY,
the Millepede node as child of all), on Slurm an array + afterok job, locally the runner.
Only ``site_conn_id`` changes. Remote layout as the group's dag_manager.py:
``<work_dir>/Y{year}_R{run}_F{range}_ST{3|4}/iterNN/{1reco,2kfalignment,3millepede}``.
With ``paths.src_dir`` (and the four environment paths) in config.json the jobs are the
group's own ``templates/runAlignment.sh`` and ``runMillepede.sh``, run unchanged.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import AssetAlias, Param, dag, get_current_context, task

from batchsite.campaign.faser import MAX_ITERATIONS, FaserParams
from batchsite.campaign.common import param_kwargs
from batchsite.operators.notify import notify_failure
from batchsite.operators.round_loop import round_loop
from batchsite.report.model import FASER_OUTPUTS_ALIAS

#: the form's text of each Param (title, description); its JSON schema and default are the
#: model's field (``param_kwargs``), so the form and the first task's check never drift
FORM = {
    "year": ("Year (-y)", None),
    "run": ("Run (-r)", "zero-padded to 6 digits: 11705 -> 011705"),
    "files": ("Raw files (-f)", "400, 400-450 or 400:450. END IS EXCLUSIVE, as dag_manager.py: "
                                "400-450 = the 50 files 400..449"),
    "iterations": ("Max iterations (-i)", None),
    "fourst": ("4-station mode (--fourst)", None),
    "threest": ("3-station mode (--threest, the default)", None),
    "tolerance": ("Stop when constants change less than",
                  "largest relative change between iterations; 0.001 = 0.1%"),
    "site_conn_id": ("Site connection", None),
    "config": ("config.json", "sections paths / htcondor / alignment / storage, as the group's config.json"),
    "max_rescues": ("Rescue rounds per iteration", None),
    "start_iteration": ("Restart from iteration", None),
}
PARAMS = {name: Param(**{**param_kwargs(FaserParams, name), "title": title, **({"description": d} if d else {})})
          for name, (title, d) in FORM.items()}


def _params() -> dict:
    context = get_current_context()
    return {k: context["params"].get(k) for k in PARAMS}


@dag(
    dag_id="faser_alignment",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params=PARAMS,
    tags=["batchsite", "faser"],
    on_failure_callback=notify_failure,  # e-mail when the batchsite_notify connection exists
    doc_md=__doc__,
)
def faser_alignment():
    @task
    def validate() -> dict:
        """Validate every Param again (the UI form clamps and skips checks), once: later tasks
        get the validated params in the setup."""
        from batchsite.campaign.faser import FaserSetup, parse_params
        from batchsite.campaign.restart import faser_restart_plan, restart_campaign
        from batchsite.hooks.site import load_site_config, site_for_conn

        params = parse_params(_params())
        cfg = load_site_config(params.site_conn_id)
        if params.cfg.uses_group_chain:
            # the group's scripts, installs and initial constants must be on the site: check
            # before submitting
            from batchsite.campaign.collect import existing_paths
            from batchsite.campaign.common import CampaignConfigError
            from batchsite.campaign.faser import missing_site_paths

            site = site_for_conn(cfg)
            try:
                found = existing_paths(site, list(params.cfg.group_paths.on_site().values()))
            finally:
                site.close()
            missing = missing_site_paths(params, found)
            if missing:
                raise CampaignConfigError("config.json: " + "; ".join(missing))
        # restarting: before anything is prepared or submitted, iteration k-1's constants on
        # the site, then the earlier run's iterations >= k set aside (one remote command)
        restarted = restart_campaign(faser_restart_plan(params, cfg.remote_root), lambda: site_for_conn(cfg))
        if restarted:
            print(restarted)
        files = params.file_numbers
        print(f"FASER alignment Y{params.year} R{params.run} files {params.files} -> {len(files)} raw files "
              f"({files[0]}..{files[-1]}, end exclusive), up to {params.iterations} iterations, "
              f"{params.stations}-station, starting at iteration {params.begin_iteration}, "
              f"payload: {'the group chain' if params.cfg.uses_group_chain else 'reference'}")
        return FaserSetup(params=params, remote_root=cfg.remote_root, python=cfg.python,
                          scheduler=cfg.scheduler).model_dump(mode="json")

    @task
    def stage(setup: dict) -> dict:
        """The group's chain: every iteration's dirs and iteration 1's constants (their initial
        file), as dag_manager.py; the reference payload: its code."""
        from batchsite.campaign.faser import FaserSetup
        from batchsite.hooks.site import site_from_conn_id

        known = FaserSetup.model_validate(setup)
        params = known.params
        site = site_from_conn_id(params.site_conn_id)
        try:
            if params.cfg.uses_group_chain:
                from batchsite.campaign.faser_site import prepare_tree

                print(f"iteration {params.begin_iteration} constants: {prepare_tree(site, params, known.remote_root)}")
            else:
                from batchsite.staging import Staging, payload_dir

                print(Staging(site).push_tree_to(payload_dir("faser_reference"), "code/faser_reference"))
        finally:
            site.close()
        return setup

    @task
    def first_round(setup: dict) -> list[dict]:
        from batchsite.campaign.faser import FaserSetup, first_round as first

        return first(FaserSetup.model_validate(setup).params)

    def prepare(partition: dict, setup: dict) -> dict:
        from batchsite.campaign.faser import FaserSetup, round_request

        known = FaserSetup.model_validate(setup)
        return round_request(known.params, partition["iteration"], partition["files"], remote_root=known.remote_root,
                             python=known.python).model_dump(mode="json")

    def collect(partition: dict, round_request: dict, submitted: dict, setup: dict) -> dict:
        from batchsite.campaign.collect import read_json
        from batchsite.campaign.faser import FaserRoundRequest, FaserSetup
        from batchsite.hooks.site import site_from_conn_id

        params = FaserSetup.model_validate(setup).params
        request = FaserRoundRequest.model_validate(round_request)
        outputs = request.collect
        site = site_from_conn_id(params.site_conn_id)
        try:
            if outputs.summary is None:  # the group's chain: measured from their constants files
                from batchsite.campaign.faser_site import read_iteration

                measured = read_iteration(site, outputs)
            else:
                summary = read_json(site, outputs.summary)
                measured = {"done": summary is not None, "why": None if summary else f"no {outputs.summary}",
                            **{k: (summary or {}).get(k) for k in ("max_rel_change", "residual_to_truth",
                                                                   "chi2_ndf", "n_tracks")}}
        finally:
            site.close()
        out = {**partition, "workdir": request.workdir, "why": None, **measured}
        if submitted and not submitted.get("succeeded"):
            # files of an earlier run of the same tree must not pass for this round's results
            out.update(done=False, why=f"the round did not succeed ({submitted.get('decision')})")
        if submitted:
            out["rescues"] = submitted.get("rescues", 0)
        print(f"iter{partition['iteration']:02d}: {out}")
        return out

    def replan(results: list[dict], setup: dict, round_no: int) -> tuple[list[dict], str]:
        from batchsite.campaign.faser import FaserSetup, replan as plan

        nxt, reason = plan(FaserSetup.model_validate(setup).params, results)
        print(f"replan after iter{round_no:02d}: {reason}")
        return nxt, reason  # the reason goes to the campaign ledger

    @task(trigger_rule="none_failed", outlets=[AssetAlias(FASER_OUTPUTS_ALIAS)])
    def report(setup: dict, *, outlet_events=None) -> dict:
        """Convergence table: every iteration's largest relative change of the constants and
        pede's chi2 (the group's chain: from their constants files and millepede.res/.log;
        the reference payload: from its alignment.json). Plots of both per iteration and
        report.json go to <data tree>/report/ on the site; the outputs' Asset event
        (batchsite://<conn>/<data tree>) carries the final statistics."""
        from batchsite.campaign.faser import FaserSetup
        from batchsite.operators.campaign_report import publish_report
        from batchsite.report.faser import faser_report, faser_xcom

        known = FaserSetup.model_validate(setup)
        rep = publish_report(known.params.site_conn_id,
                             lambda site, run: faser_report(site, known.params, known.remote_root, run),
                             FASER_OUTPUTS_ALIAS, outlet_events)
        return faser_xcom(rep)

    setup = stage(validate())
    replans = round_loop(setup=setup, first=first_round(setup), prepare=prepare, collect=collect, replan=replan,
                         max_rounds=MAX_ITERATIONS, group_name=lambda r: f"iter{r:02d}")
    rep = report(setup)
    for x in replans:
        x >> rep


faser_alignment()
