"""``batchsite`` command line.

* ``rg-summary``: per-step z mean/std/peak of an RG campaign, where its histograms are, and
  for EXP the critical exponent nu;
* ``faser-align``: the group's ``dag_manager.py`` flags (``-y -r -f -i --fourst --threest
  --config --submit``) on top of the ``faser_alignment`` Airflow DAG. Without ``--submit``
  it is a dry run: it validates the Params exactly as the DAG does (``faser.parse_params``),
  renders the FIRST round (iteration 1) with the same functions the DAG's tasks call and
  writes the files locally under the seed's layout
  ``<out>/Y{year}_R{run}_F{range}/iter01/1reco/<key>/``. Nothing is submitted and nothing
  remote is touched. With ``--submit`` it triggers the DAG through the Airflow CLI of this
  python environment.
* ``campaigns list`` / ``campaigns show <run>``: the campaign ledger (``batchsite.ledger``):
  campaigns, their rounds with counts, states, exit codes and timestamps, and the decisions.
* ``report <run>``: the report a campaign's ``report`` task wrote next to its outputs on the
  site (``batchsite.report``): its text, the files, the outputs' Asset URI; ``--fetch DIR``
  copies report.json and the PNGs here. The run is found in the campaign ledger (its DAG,
  site and Params give the outputs dir); ``--campaign rg|faser --conf JSON`` finds it from
  the Params alone (no ledger).
"""

from __future__ import annotations

import argparse
import json
import os
import posixpath
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

FASER_DAG_ID = "faser_alignment"
#: the task id of iteration 1's submit task in the DAG (group ``iter01``, mapped index 0)
FASER_DRY_RUN_ID = "dry-run"
FASER_FIRST_TASK = "iter01.submit"


# ---------------------------------------------------------------------------- rg-summary

def _rg_summary(args: argparse.Namespace) -> int:
    from batchsite.campaign.collect import rg_summary
    from batchsite.campaign.common import CampaignConfigError
    from batchsite.campaign.rg import parse_params
    from batchsite.hooks.connection import site_from_conn_id  # `local` without Airflow

    try:
        p = parse_params(json.loads(args.conf))
    except (CampaignConfigError, json.JSONDecodeError) as e:
        print(f"batchsite rg-summary: {e}", file=sys.stderr)
        return 2
    site = site_from_conn_id(p.site_conn_id)
    try:
        text, summary = rg_summary(site, p)
    finally:
        site.close()
    print(text)
    return 0 if any(summary["outputs"].values()) else 1


# ---------------------------------------------------------------------------- faser-align: params

def _read_config_json(path: str | None) -> dict[str, Any]:
    """The group's config.json as a dict ({} without --config). Raises CampaignConfigError."""
    from batchsite.campaign.common import CampaignConfigError

    from batchsite.campaign.common import short

    if path is None:
        return {}
    shown = path if len(path) <= 200 and path.isprintable() else short(path)
    try:
        text = Path(path).read_text()
    except (OSError, ValueError) as e:  # ValueError: a NUL in the name
        raise CampaignConfigError(f"--config {shown}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    except UnicodeDecodeError as e:
        raise CampaignConfigError(f"--config {shown}: not a UTF-8 text file ({e.reason})") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise CampaignConfigError(f"--config {shown}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") \
            from None
    if not isinstance(raw, dict):
        raise CampaignConfigError(f"--config {shown}: config.json must be a JSON object with the sections "
                                  f"paths / htcondor / alignment / storage (got {type(raw).__name__})")
    return raw


def faser_conf_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The ``faser_alignment`` DAG's Params (``dags trigger -c``) from the parsed flags.

    Reads ``--config`` and validates everything with ``faser.parse_params`` (the DAG's own
    validation); raises CampaignConfigError naming the field. The keys are those of the
    DAG's PARAMS, the run zero-padded. Without ``-i`` the iterations come from
    config.json's ``alignment.default_iterations`` (10 when not set), as dag_manager.py.
    """
    from batchsite.campaign.common import CampaignConfigError
    from batchsite.campaign.faser import FaserParams, parse_config, parse_params

    config = _read_config_json(getattr(args, "config", None))
    cfg = parse_config(config)  # first on its own: its message names the key without the whole Params
    iterations = args.iterations if args.iterations is not None else cfg.alignment.default_iterations
    defaults = FaserParams.model_fields
    raw = {
        "year": args.year,
        "run": args.run,
        "files": args.files,
        "iterations": iterations,
        "fourst": bool(args.fourst),
        "threest": bool(args.threest),
        "tolerance": args.tolerance if args.tolerance is not None else defaults["tolerance"].default,
        "site_conn_id": args.site,
        "config": config,
        "max_rescues": args.max_rescues if args.max_rescues is not None else defaults["max_rescues"].default,
        "start_iteration": getattr(args, "start_iteration", None),
    }
    try:
        return parse_params(raw).model_dump(mode="json")
    except CampaignConfigError as e:
        raise CampaignConfigError(_tidy(str(e))) from None


_WHOLE_INPUT = re.compile(r" \(got \{.*\}\)$", re.S)
#: the flag of each FASER param, so an error names what the user typed
FASER_FLAGS = {"year": "-y", "run": "-r", "files": "-f", "iterations": "-i", "fourst": "--fourst",
               "threest": "--threest", "tolerance": "--tolerance", "site_conn_id": "--site",
               "max_rescues": "--max-rescues", "config": "--config", "start_iteration": "--start-iteration"}


def _tidy(msg: str) -> str:
    """A model-level error (fourst with threest) comes back from ``explain_validation`` as
    ``P: P: <message> (got {<every param>})``: say it once, without the dump. Every param
    named at the start of an error gets its flag: ``files (-f): files='x': ...``."""
    prefix = "FASER alignment params: "
    if msg.startswith(prefix + prefix):
        msg = _WHOLE_INPUT.sub("", msg[len(prefix):])
    for field, flag in FASER_FLAGS.items():
        msg = re.sub(rf"(^|: |; ){field}: ", rf"\g<1>{field} ({flag}): ", msg)
    return msg


def check_out_dir(out: str) -> str:
    """``--out`` of the dry run, made absolute: it plays the site's remote_root in the rendered
    scripts, so it follows the rules of a site path (safe characters, at most 1024 long).
    Relative paths and ``..`` are resolved here (it is the user's own local directory)."""
    from batchsite.campaign.common import CampaignConfigError, check_site_path

    try:
        if "\x00" in out:
            raise ValueError(f"--out={out!r} contains a NUL character")
        return check_site_path("--out", os.path.abspath(out))
    except ValueError as e:
        raise CampaignConfigError(f"{e} (it is the remote_root of the rendered scripts; choose another "
                                  "directory)") from None


def _airflow_cli() -> Path:
    return Path(sys.executable).parent / "airflow"


def _trigger_argv(conf: dict[str, Any]) -> list[str]:
    return [str(_airflow_cli()), "dags", "trigger", FASER_DAG_ID, "-c", json.dumps(conf, separators=(",", ":"))]


def _files_line(p: Any) -> str:
    nums = p.file_numbers
    if len(nums) == 1:
        return f"files {p.files} -> 1 raw file {nums[0]}"
    return f"files {p.files} -> {len(nums)} raw files {nums[0]}..{nums[-1]} (end exclusive)"


# ---------------------------------------------------------------------------- faser-align: dry run

def _site_path(root: str):
    def path(rel: str) -> str:
        p = posixpath.normpath(posixpath.join(root, rel))
        if p != root and not p.startswith(root.rstrip("/") + "/"):
            raise ValueError(f"path {rel!r} escapes remote_root {root}")
        return p
    return path


def _dry_run_site(conn_id: str, scheduler: str, root: str):
    """The SiteConfig the dry run renders with: the chosen scheduler, remote_root = --out."""
    from batchsite.config import SiteConfig, local_site_config

    if scheduler == "local":
        base = local_site_config(root).model_dump()
        return SiteConfig(**{**base, "conn_id": conn_id})
    return SiteConfig(conn_id=conn_id, scheduler=scheduler, transport="local", remote_root=root)


def render_first_round(conf: dict[str, Any], *, scheduler: str, out: str) -> dict[str, Any]:
    """Iteration 1 rendered as the DAG's ``iter01`` group would (no I/O).

    ``--out`` plays the site's remote_root and, unless config.json sets ``paths.work_dir``,
    the work dir of dag_manager.py (so the round lands in ``<out>/Y.._R.._F../iter01/1reco``,
    the seed's layout, and every path in the scripts points inside ``<out>``). With
    ``paths.work_dir`` the scripts keep that site path (where the real jobs write) and only
    the files are placed under ``<out>`` in the same layout.

    Returns ``{"local_dir", "site_workdir", "spec", "files": {relpath: text}, "executable"}``.
    """
    from batchsite.campaign.faser import base_dir, first_round, parse_params, round_request
    from batchsite.keys import job_key
    from batchsite.rounds import spec_from_request
    from batchsite.sitebuild import backend_for

    p = parse_params(conf)
    root = check_out_dir(out)
    cfg = _dry_run_site(p.site_conn_id, scheduler, root)
    if not p.cfg.paths.work_dir:
        config = {**p.config, "paths": {**p.config.get("paths", {}), "work_dir": cfg.remote_root}}
        p = parse_params({**p.model_dump(mode="json"), "config": config})
    (first,) = first_round(p)
    request = round_request(p, first["iteration"], first["files"], remote_root=cfg.remote_root, python=cfg.python)
    key = job_key(FASER_DAG_ID, FASER_DRY_RUN_ID, FASER_FIRST_TASK, 0, 0)
    spec = spec_from_request(request, key=key, cfg=cfg, site_path=_site_path(cfg.remote_root))
    rendered = backend_for(cfg).render_round(spec)
    files = dict(rendered.files)
    files["submit.sh"] = rendered.submit_script  # as Site.submit ships it
    rel = posixpath.relpath(spec.workdir, base_dir(p, cfg.remote_root))
    local_dir = os.path.join(root, posixpath.basename(base_dir(p, cfg.remote_root)), *rel.split("/"))
    return {"local_dir": local_dir, "site_workdir": spec.workdir, "spec": spec, "files": files,
            "executable": rendered.executable, "request": request, "site": cfg}


def _write_atomic(path: str, text: str, mode: int) -> None:
    d = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_round(local_dir: str, files: dict[str, str], executable: frozenset[str]) -> list[str]:
    """Write every rendered file under ``local_dir`` atomically; returns the paths written."""
    for name in files:
        if name.startswith("/") or ".." in name.split("/"):
            raise ValueError(f"rendered file name {name!r} escapes the round directory")
    written = []
    for name, text in sorted(files.items()):
        path = os.path.join(local_dir, *name.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        mode = 0o755 if name in executable or name.endswith(".sh") else 0o644
        _write_atomic(path, text, mode)
        written.append(path)
    return written


def _faser_align(args: argparse.Namespace) -> int:
    from batchsite.campaign.common import CampaignConfigError
    from batchsite.campaign.faser import parse_params, tree_name

    prog = "batchsite faser-align"
    try:
        conf = faser_conf_from_args(args)
        p = parse_params(conf)
    except CampaignConfigError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    tag = tree_name(p)
    print(f"FASER alignment {tag}: year {p.year}, run {p.run} (-r {args.run}), up to {p.iterations} iterations, "
          f"{p.stations}-station, payload: {'the group chain' if p.cfg.uses_group_chain else 'reference'}")
    print(_files_line(p))
    argv = _trigger_argv(conf)

    if args.submit:
        return _submit(prog, argv)

    try:
        r = render_first_round(conf, scheduler=args.scheduler, out=args.out)
    except (CampaignConfigError, ValueError) as e:  # a rendering refusal (bad node name, requirements, ...)
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    local_dir = r["local_dir"]
    earlier = sorted(set(os.listdir(local_dir)) - set(r["files"])) if os.path.isdir(local_dir) else []
    try:
        write_round(local_dir, r["files"], r["executable"])
    except OSError as e:
        print(f"{prog}: cannot write the rendered round under {local_dir}: {e}", file=sys.stderr)
        return 1
    spec = r["spec"]
    print(f"dry run: iteration {p.begin_iteration} rendered for scheduler {args.scheduler} (site {p.site_conn_id!r}, "
          f"remote_root = {r['site'].remote_root}), key {spec.key}")
    print(f"written to {local_dir}/: {', '.join(sorted(r['files']))}")
    if r["site_workdir"] != local_dir:
        print(f"  (the scripts use the site paths of config.json paths.work_dir; on the site this round is "
              f"{r['site_workdir']})")
    if earlier:
        print(f"  note: {local_dir} also holds files from an earlier render: {', '.join(earlier)}")
    outputs = r["request"].collect
    print(f"reco outputs -> {outputs.kf_dir}; Millepede -> {outputs.mp_dir}")
    print("nothing was submitted. `--submit` would run:")
    print(f"  {shlex.join(argv)}")
    return 0


_RUN_ID = re.compile(r'"dag_run_id"\s*:\s*"([^"]+)"')


def _submit(prog: str, argv: list[str]) -> int:
    airflow = argv[0]
    if not os.access(airflow, os.X_OK):
        print(f"{prog}: no Airflow CLI at {airflow} (install apache-airflow in this environment)", file=sys.stderr)
        return 127
    print(f"triggering: {shlex.join(argv)}")
    r = subprocess.run([*argv, "-o", "json"], capture_output=True, text=True)
    m = _RUN_ID.findall(r.stdout or "")
    if r.returncode == 0 and m:
        print(f"triggered DAG {FASER_DAG_ID}: run id {m[-1]}")
    else:
        if r.stdout:
            print(r.stdout, end="" if r.stdout.endswith("\n") else "\n")
        if r.returncode == 0:
            print(f"{prog}: the trigger succeeded but printed no run id", file=sys.stderr)
    if r.returncode != 0:
        if r.stderr:
            print(r.stderr, end="" if r.stderr.endswith("\n") else "\n", file=sys.stderr)
        print(f"{prog}: airflow dags trigger exited {r.returncode}", file=sys.stderr)
    return r.returncode


# ---------------------------------------------------------------------------- campaigns (the ledger)

def _open_ledger(path: str | None):
    """``--ledger PATH`` (SQLite), else the deployment's choice: the ``batchsite_ledger``
    connection (PostgreSQL) when Airflow and the connection exist, else the SQLite file at
    ``$BATCHSITE_LEDGER_PATH`` / ``$AIRFLOW_HOME/batchsite_ledger.sqlite``."""
    from batchsite.ledger.store import LedgerError, SqliteLedger, default_sqlite_path

    if path is None:
        try:
            from batchsite.hooks.ledger import open_ledger
        except ImportError:  # no Airflow here: only the SQLite ledger can be meant
            path = str(default_sqlite_path())
        else:
            store = open_ledger()
            path = str(store.path) if isinstance(store, SqliteLedger) else None
            if path is None:
                return store
    if not os.path.isfile(path):
        raise LedgerError(f"no campaign ledger at {path} (nothing recorded there yet; --ledger PATH, "
                          "$BATCHSITE_LEDGER_PATH or a batchsite_ledger connection say where it is)")
    return SqliteLedger(path)


def _campaigns(args: argparse.Namespace) -> int:
    from batchsite.ledger.render import campaign_text, campaigns_table
    from batchsite.ledger.store import LedgerError

    try:
        store = _open_ledger(args.ledger)
        if args.action == "list":
            text = campaigns_table(store.list_campaigns(args.dag, args.limit))
        else:
            text = campaign_text(store.campaign(args.run, args.dag), units=args.units, transitions=args.transitions)
    except LedgerError as e:
        print(f"batchsite campaigns: {e}", file=sys.stderr)
        return 1
    print(f"ledger: {store.describe()}\n")
    print(text)
    return 0


def _add_campaigns(sub: Any) -> None:
    c = sub.add_parser("campaigns", help="the campaign ledger: campaigns, rounds, units and decisions")
    actions = c.add_subparsers(dest="action", required=True)
    for name, helptext in (("list", "campaigns, newest first"),
                           ("show", "one campaign: its rounds (counts, exit codes, timestamps) and decisions")):
        a = actions.add_parser(name, help=helptext)
        if name == "show":
            a.add_argument("run", help="the DAG run id of the campaign")
            a.add_argument("--units", action="store_true", help="also every unit: state, exit code, usage")
            a.add_argument("--transitions", action="store_true", help="also every status change the polls saw")
        else:
            a.add_argument("--limit", type=int, default=50, help="at most this many campaigns (default 50)")
        a.add_argument("--dag", default=None, help="only this DAG id")
        a.add_argument("--ledger", default=None, metavar="SQLITE_FILE",
                       help="read this SQLite ledger (default: the batchsite_ledger connection, else "
                            "$BATCHSITE_LEDGER_PATH, else $AIRFLOW_HOME/batchsite_ledger.sqlite)")
        a.set_defaults(func=_campaigns)


# ---------------------------------------------------------------------------- report

def _report_params(args: argparse.Namespace) -> tuple[str, dict[str, Any], str | None]:
    """(campaign, its Params, the run id asked for or None) from the ledger or ``--conf``.
    Raises LedgerError / ValueError with the message to print."""
    from batchsite.report.model import CAMPAIGN_OF_DAG

    if args.run is None:
        if args.campaign is None or args.conf is None:
            raise ValueError("name a DAG run (batchsite report RUN_ID), or give --campaign rg|faser and --conf JSON")
        try:
            conf = json.loads(args.conf)
        except json.JSONDecodeError as e:
            raise ValueError(f"--conf is not valid JSON ({e.msg}, line {e.lineno} column {e.colno})") from None
        if not isinstance(conf, dict):
            raise ValueError("--conf must be a JSON object: the campaign's Params, as given to dags test -c")
        return args.campaign, conf, None
    if args.conf is not None or args.campaign is not None:
        raise ValueError("give either a run id (found in the ledger) or --campaign with --conf, not both")
    c = _open_ledger(args.ledger).campaign(args.run, args.dag).campaign
    if c.dag_id not in CAMPAIGN_OF_DAG:
        raise ValueError(f"run {c.run_id!r} is of DAG {c.dag_id!r}, which writes no campaign report (those that do: "
                         f"{', '.join(sorted(CAMPAIGN_OF_DAG))})")
    if not c.params:
        raise ValueError(f"the ledger holds no Params for run {c.run_id!r}: use --campaign "
                         f"{CAMPAIGN_OF_DAG[c.dag_id]} --conf '<its Params>'")
    return CAMPAIGN_OF_DAG[c.dag_id], c.params, c.run_id


def _report(args: argparse.Namespace) -> int:
    from batchsite.config import SiteConfigError
    from batchsite.hooks.connection import load_site_config, site_for_conn
    from batchsite.ledger.store import LedgerError
    from batchsite.report.locate import campaign_params, outputs_dir
    from batchsite.report.model import REPORT_JSON
    from batchsite.report.publish import ReportNotFound, fetch_report, read_report
    from batchsite.staging.paths import StagingError

    prog = "batchsite report"
    try:
        campaign, raw, run_id = _report_params(args)
        params = campaign_params(campaign, raw)
        cfg = load_site_config(params.site_conn_id)
    except LedgerError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    except (ValueError, SiteConfigError) as e:  # bad input (CampaignConfigError is a ValueError)
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    site = site_for_conn(cfg)
    try:
        report = read_report(site.transport, outputs_dir(params, cfg.remote_root))
        if run_id is not None and report.run_id != run_id:
            print(f"{prog}: the report at {report.report_dir} on site {params.site_conn_id} is of run "
                  f"{report.run_id!r} ({report.dag_id}), which wrote the same outputs after {run_id!r}: "
                  f"`batchsite report {report.run_id}` shows it", file=sys.stderr)
            return 1
        print(f"report of {report.dag_id} / {report.run_id}, written {report.created_at:%Y-%m-%d %H:%M:%S} UTC "
              f"on site {report.site_conn_id}\n")
        print(report.text)
        print(f"\nfiles on the site ({report.report_dir}):")
        for path in report.files:
            print(f"  {path}")
        print(f"Asset: {report.asset_uri}" + ("" if not report.empty else " (no event: nothing finished)"))
        if args.fetch:
            pulled = fetch_report(site.transport, report, args.fetch)
            print(f"fetched into {pulled.local_dir}: {pulled.files_received} file(s) received, "
                  f"{pulled.files_unchanged} unchanged")
            for name in [REPORT_JSON, *report.plots]:
                print(f"  {os.path.join(pulled.local_dir, name)}")
    except (ReportNotFound, StagingError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    finally:
        site.close()
    return 0


def _add_report(sub: Any) -> None:
    r = sub.add_parser(
        "report", help="a campaign's report (text, plots, Asset) as its report task wrote it on the site",
        description="Print the report a campaign's report task wrote next to its outputs on the site "
                    "(<outputs>/report/report.json and the PNG plots). The run is looked up in the campaign "
                    "ledger (its DAG, site and Params say where the outputs are); without a ledger record give "
                    "--campaign and --conf.")
    r.add_argument("run", nargs="?", default=None, help="the DAG run id of the campaign (see `batchsite campaigns list`)")
    r.add_argument("--dag", default=None, help="the DAG id, when two DAGs share the run id")
    r.add_argument("--ledger", default=None, metavar="SQLITE_FILE", help="read this SQLite ledger (as `campaigns`)")
    r.add_argument("--campaign", choices=("rg", "faser"), default=None,
                   help="without a run id: the campaign whose --conf Params locate the report")
    r.add_argument("--conf", default=None, metavar="JSON", help="without a run id: the campaign's Params as JSON")
    r.add_argument("--fetch", default=None, metavar="DIR", help="also copy report.json and the PNGs into DIR")
    r.set_defaults(func=_report)


# ---------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="batchsite")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("rg-summary", help="per-step z mean/std of an RG campaign and where its histograms are")
    s.add_argument("--conf", required=True, help="the campaign's Params as JSON (as given to dags test -c)")
    s.set_defaults(func=_rg_summary)

    f = sub.add_parser(
        "faser-align",
        help="FASER tracker alignment with dag_manager.py's flags: dry run (default) or trigger the DAG",
        description="Validate the FASER alignment Params as the faser_alignment DAG does. Dry run (default): "
                    "render iteration 1 locally under <out>/Y{year}_R{run}_F{range}/iter01/1reco/<key>/. "
                    "--submit: trigger the faser_alignment DAG (airflow dags trigger).",
    )
    f.add_argument("-y", "--year", type=int, required=True, help="year, e.g. 2023")
    f.add_argument("-r", "--run", required=True, help="run number, zero-padded to 6 digits (11705 -> 011705)")
    f.add_argument("-f", "--files", required=True,
                   help="raw files: N, START-END or START:END; END IS EXCLUSIVE (400-450 = 400..449)")
    f.add_argument("-i", "--iterations", type=int, default=None,
                   help="maximum iterations (default: config.json alignment.default_iterations, else 10)")
    f.add_argument("--fourst", action="store_true", help="4-station mode")
    f.add_argument("--threest", action="store_true", help="3-station mode (the default)")
    f.add_argument("--config", default=None, metavar="CONFIG_JSON",
                   help="the group's config.json (sections paths / htcondor / alignment / storage)")
    f.add_argument("--site", default="local", metavar="CONN_ID", help="Airflow connection of the site (default: local)")
    f.add_argument("--tolerance", type=float, default=None,
                   help="stop when the constants change less than this (relative; default 0.001)")
    f.add_argument("--max-rescues", type=int, default=None, help="rescue rounds per iteration (default 2)")
    f.add_argument("--start-iteration", type=int, default=None, metavar="N",
                   help="restart at iteration N: iteration N-1's constants must be on the site (main.py's -i N)")
    f.add_argument("--scheduler", choices=("htcondor", "slurm", "local"), default="htcondor",
                   help="dry run only: the backend to render with (default: htcondor)")
    f.add_argument("--out", default=".", metavar="DIR",
                   help="dry run only: where to write the rendered round (default: current directory)")
    f.add_argument("--submit", action="store_true",
                   help="trigger the faser_alignment Airflow DAG with these Params instead of a dry run")
    f.set_defaults(func=_faser_align)
    _add_campaigns(sub)
    _add_report(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
