"""A report on the site: write it next to the outputs, read it back, fetch its files.

Every file is written by ``staging.put_text`` (a temp name in the same dir, then a rename),
the plots first and ``report.json`` last, so a reader who finds ``report.json`` finds the
plots it lists. Paths are checked to stay inside the outputs dir (symlinks on the site
followed). One remote command per file written, one to read, one to fetch them all.
"""

from __future__ import annotations

import os

from matplotlib.figure import Figure

from batchsite.report.model import REPORT_JSON, CampaignReport, report_dir
from batchsite.report.plots import png_bytes
from batchsite.staging.transfer import PullReport, pull_tree, put_text, read_text
from batchsite.transport.base import Transport


class ReportNotFound(FileNotFoundError):
    """No ``report.json`` where the campaign's report should be."""


def write_report(transport: Transport, report: CampaignReport, figures: dict[str, Figure]) -> list[str]:
    """The PNGs, then ``report.json``; returns the paths written on the site."""
    if sorted(figures) != sorted(report.plots):
        raise ValueError(f"the figures {sorted(figures)} are not the report's plots {report.plots}")
    for name, fig in sorted(figures.items()):
        put_text(transport, f"{report.report_dir}/{name}", png_bytes(fig), remote_root=report.outputs_dir)
    put_text(transport, report.files[0], report.model_dump_json(indent=1) + "\n", remote_root=report.outputs_dir)
    return report.files


def read_report(transport: Transport, outputs_dir: str) -> CampaignReport:
    path = f"{report_dir(outputs_dir)}/{REPORT_JSON}"
    try:
        text = read_text(transport, path, remote_root=outputs_dir)
    except FileNotFoundError:
        raise ReportNotFound(f"no report at {path} on the site: the campaign's report task has not run "
                             "(or ran before reports were written)") from None
    return CampaignReport.model_validate_json(text)


def fetch_report(transport: Transport, report: CampaignReport, local_dir: str | os.PathLike) -> PullReport:
    """Copy ``report.json`` and the plots it lists into ``local_dir`` (only changed files travel)."""
    return pull_tree(transport, report.report_dir, local_dir, remote_root=report.outputs_dir,
                     patterns=[REPORT_JSON, *report.plots], cache_file=False)
