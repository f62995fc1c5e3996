"""The report's plots: pure functions from numbers to matplotlib figures, and PNG bytes.

Figures are built with ``matplotlib.figure.Figure`` on the Agg canvas, never through pyplot:
no global figure registry, no GUI backend, safe in a worker or a thread. Each series is one
``Line2D`` carrying its label, so a test reads the plotted data back from the figure.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from batchsite.campaign.rg import coarsen, normalised
from batchsite.report.model import CampaignReport

#: bins the overlaid z histograms are merged to (the group's have 50,000: unreadable as lines)
PLOT_BINS = 200
#: the z range shown holds all but this fraction of every step's mass (the tails are empty bins)
TAIL_MASS = 1e-3
DPI = 100

Histogram = tuple[np.ndarray, np.ndarray]  # (values, bin edges), counts or densities


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    return buf.getvalue()


def _figure(title: str, xlabel: str, ylabel: str) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(7.0, 4.5), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def z_histograms_figure(title: str, steps: Sequence[tuple[int, Histogram]]) -> Figure:
    """The z distributions of every step overlaid, each normalised to unit mass (one line a step)."""
    fig, ax = _figure(title, "z", "P(z)")
    lo, hi = np.inf, -np.inf
    for step, (vals, edges) in steps:
        dens, e = coarsen(normalised(vals, edges), np.asarray(edges, float), PLOT_BINS)
        dens = normalised(dens, e)  # coarsen drops the last len % factor bins: unit mass again
        centres = 0.5 * (e[:-1] + e[1:])
        ax.plot(centres, dens, label=f"RG step {step}", linewidth=1.2)
        cum = np.cumsum(dens * np.diff(e))
        lo = min(lo, float(centres[np.searchsorted(cum, TAIL_MASS / 2)]))
        hi = max(hi, float(centres[min(len(centres) - 1, np.searchsorted(cum, 1 - TAIL_MASS / 2))]))
    if steps:
        ax.set_xlim(lo, hi)
        ax.legend(fontsize="small")
    return fig


def series_figure(title: str, xlabel: str, ylabel: str, series: dict[str, tuple[list[float], list[float | None]]],
                  *, logy: bool = False, dashed: frozenset[str] = frozenset(),
                  threshold: tuple[str, float] | None = None) -> Figure:
    """One line per series (points with a value of None are left out; a series without any
    point is not drawn), plus an optional horizontal threshold line."""
    fig, ax = _figure(title, xlabel, ylabel)
    for label, (xs, ys) in series.items():
        pts = [(x, y) for x, y in zip(xs, ys) if y is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "--" if label in dashed else "-", marker="o",
                    label=label, linewidth=1.2, markersize=4)
    if threshold is not None:
        ax.axhline(threshold[1], color="black", linestyle=":", label=threshold[0])
    if logy:
        ax.set_yscale("log")
    ax.xaxis.get_major_locator().set_params(integer=True)
    if ax.get_lines():
        ax.legend(fontsize="small")
    else:
        ax.text(0.5, 0.5, "nothing to show yet", transform=ax.transAxes, ha="center")
    return fig


def rg_figures(report: CampaignReport, hists: dict[str, list[tuple[int, Histogram]]]) -> dict[str, Figure]:
    """RG: ``z_histograms[_shift<i>].png`` (per output dir, the steps overlaid), ``z_std.png``
    (z std against the step, one line per output dir) and ``convergence.png`` (the L1 distance
    to the previous step with its noise floor; FP: the tolerance)."""
    labels = list(dict.fromkeys(s.label for s in report.rg_steps))
    figures: dict[str, Figure] = {}
    for i, label in enumerate(labels):
        name = "z_histograms.png" if label == "FP" else f"z_histograms_shift{i}.png"
        figures[name] = z_histograms_figure(f"{report.title}\nz distribution per RG step ({label})",
                                            hists.get(label, []))

    def per_label(attr: str, suffix: str = "") -> dict[str, tuple[list[float], list[float | None]]]:
        return {f"{label}{suffix}": ([s.step for s in report.rg_steps if s.label == label],
                                     [getattr(s, attr) for s in report.rg_steps if s.label == label])
                for label in labels}

    figures["z_std.png"] = series_figure(f"{report.title}\nz std per RG step", "RG step", "std of z",
                                         per_label("z_std"))
    noise = per_label("noise", " noise")
    figures["convergence.png"] = series_figure(
        f"{report.title}\nL1 distance to the previous step", "RG step", "L1 distance",
        {**per_label("distance", " L1"), **noise}, logy=True, dashed=frozenset(noise),
        threshold=None if report.converged is None else ("tolerance", report.tolerance))
    return figures


def faser_figures(report: CampaignReport) -> dict[str, Figure]:
    """FASER: ``max_rel_change.png`` (the largest relative change of the constants per
    iteration, log scale, with the tolerance) and ``chi2_ndf.png`` (pede's chi2/ndf)."""
    its = report.faser_iterations
    x = [r.iteration for r in its]
    return {
        "max_rel_change.png": series_figure(
            f"{report.title}\nlargest relative change of the constants", "iteration", "largest relative change",
            {"largest relative change": (x, [r.max_rel_change for r in its])}, logy=True,
            threshold=("tolerance", report.tolerance)),
        "chi2_ndf.png": series_figure(f"{report.title}\nMillepede chi2/ndf", "iteration", "chi2 / ndf",
                                      {"chi2/ndf": (x, [r.chi2_ndf for r in its])}),
    }
