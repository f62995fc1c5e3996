"""``batchsite`` command line: summaries of campaign outputs (and, later, dry runs)."""

from __future__ import annotations

import argparse
import json
import sys


def _rg_summary(args: argparse.Namespace) -> int:
    from batchsite.campaign.collect import format_stats, step_stats
    from batchsite.campaign.common import CampaignConfigError
    from batchsite.campaign.rg import output_dirs, parse_params
    from batchsite.hooks.site import site_from_conn_id

    try:
        p = parse_params(json.loads(args.conf))
    except (CampaignConfigError, json.JSONDecodeError) as e:
        print(f"batchsite rg-summary: {e}", file=sys.stderr)
        return 2
    site = site_from_conn_id(p.site_conn_id)
    try:
        found = False
        for d in output_dirs(site.remote_root, p):
            rows = step_stats(site.transport, d)
            found = found or bool(rows)
            print(format_stats(d, rows))
    finally:
        site.close()
    return 0 if found else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="batchsite")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("rg-summary", help="per-step z mean/std of an RG campaign and where its histograms are")
    s.add_argument("--conf", required=True, help="the campaign's Params as JSON (as given to dags test -c)")
    s.set_defaults(func=_rg_summary)
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
