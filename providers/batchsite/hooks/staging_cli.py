"""``python -m batchsite.hooks.staging_cli``: stage code/scripts to a site and pull outputs
back, with the flags of the group's ``file_management.py``. An adapter: ``--conn`` is a site
connection id (``local`` needs no Airflow connection), turned into a ``Site`` by
``batchsite.hooks.connection``; the core package ``batchsite.staging`` does the work.

``--site-config FILE`` gives the connection as a plain JSON file instead (the shape of an
``AIRFLOW_CONN_*`` value: host, port, login, extra): Airflow is never imported, so a push
starts in ~0.2 s instead of ~2 s. Its transport must be ``openssh`` or ``local`` (``ssh`` takes
its credentials from Airflow's SSH hook). Pushes use rsync where both ends have it; the summary
line says "via rsync" or "via tar (why)".

    python -m batchsite.hooks.staging_cli --action push --code source --scripts Taskfarm/scripts
    python -m batchsite.hooks.staging_cli --action pull --pull hist --version v1 --type FP --sys linux
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from batchsite.campaign.rg_layout import PULL_KINDS, RUN_TYPES, LayoutInputError, check_version
from batchsite.config import SiteConfigError, site_config_from_connection
from batchsite.hooks.connection import site_from_conn_id  # `local` needs no Airflow
from batchsite.site import Site
from batchsite.sitebuild import site_from_config
from batchsite.staging import Staging, StagingError, StagingInputError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m batchsite.hooks.staging_cli",
        description="Stage code/scripts to a batch site and pull outputs back (file_management.py compatible).",
    )
    parser.add_argument("--action", required=True, choices=["push", "pull"])
    parser.add_argument("--pull", dest="kind", choices=list(PULL_KINDS), help="what to pull (with --action pull)")
    parser.add_argument("--version", help="run version, e.g. v1 (with --action pull)")
    parser.add_argument("--type", dest="run_type", choices=list(RUN_TYPES), help="run type (with --action pull)")
    parser.add_argument("--code", help="local code dir -> <remote_root>/code/source")
    parser.add_argument("--scripts", action="append", default=[],
                        help="local scripts/configs dir -> <remote_root>/scripts (may be repeated)")
    parser.add_argument("--dest", default=".", help="local root for pulled files (default: current dir)")
    parser.add_argument("--delete", action="store_true", help="push: also remove remote files missing locally")
    parser.add_argument("--conn", default=os.environ.get("BATCHSITE_CONN") or "local",
                        help="site connection id (default: $BATCHSITE_CONN or 'local')")
    parser.add_argument("--site-config", metavar="FILE",
                        help="the site connection as a JSON file ({host, port, login, extra}), read without "
                             "Airflow; transport openssh or local. Overrides --conn")
    parser.add_argument("--sys", default="linux", help="accepted for compatibility with file_management.py; ignored")
    return parser


def site_from_plain_config(path: str) -> Site:
    """A site from a JSON file shaped like an ``AIRFLOW_CONN_*`` value, without Airflow."""
    try:
        conn = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise SiteConfigError(f"--site-config {path}: cannot read it as JSON ({e})") from None
    if not isinstance(conn, dict) or not isinstance(conn.get("extra", {}), dict):
        raise SiteConfigError(f"--site-config {path}: give a JSON object {{host, port, login, extra: {{...}}}}")
    cfg = site_config_from_connection(Path(path).stem, conn.get("host"), conn.get("port"), conn.get("login"),
                                      conn.get("extra", {}))
    if cfg.transport == "ssh":
        raise SiteConfigError(
            f"--site-config {path}: transport 'ssh' takes its credentials from Airflow's SSH hook; set extra "
            "transport 'openssh' (with key_file and known_hosts) or use --conn with an Airflow connection")
    return site_from_config(cfg)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.action == "push":
            if not args.code and not args.scripts:
                parser.error("--action push needs --code DIR and/or --scripts DIR")
            for local_dir in [args.code, *args.scripts]:
                if local_dir and not Path(local_dir).is_dir():
                    parser.error(f"{local_dir!r} is not a local directory")
        else:
            missing = [flag for flag, value in (("--pull", args.kind), ("--version", args.version),
                                                ("--type", args.run_type)) if not value]
            if missing:
                parser.error(f"--action pull needs {', '.join(missing)} (e.g. --pull hist --version v1 --type FP)")
            check_version(args.version)
    except LayoutInputError as e:
        parser.error(str(e))

    try:
        site = site_from_plain_config(args.site_config) if args.site_config else site_from_conn_id(args.conn)
    except Exception as e:  # SiteConfigError and friends: a usage problem
        print(f"batchsite.staging: site {args.site_config or args.conn!r}: {e}", file=sys.stderr)
        return 2
    staging = Staging(site)
    try:
        if args.action == "push":
            if args.code:
                print("push code:", staging.push_code(args.code).summary())
            for scripts_dir in args.scripts:
                print("push scripts:", staging.push_scripts(scripts_dir).summary())
        else:
            report = staging.pull(args.kind, args.version, args.run_type, args.dest)
            print(f"pull {args.kind}:", report.summary())
    except (StagingInputError, LayoutInputError) as e:
        print(f"batchsite.staging: {e}", file=sys.stderr)
        return 2
    except (StagingError, FileNotFoundError) as e:
        print(f"batchsite.staging: {e}", file=sys.stderr)
        return 1
    finally:
        site.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
