"""Aggregation job of one RG step: histogram t' and z over all batches.

Usage (remote: the package is staged as ``source``)::

    python -m source.aggregate --in-dir DIR --out-dir OUT --step K --batches NB \\
        --type FP|EXP [--bins 1000] [--zrange 25]

Checks that ``DIR/batch_000 .. DIR/batch_{NB-1}`` each hold ``READY`` (for
step K) and ``t_RG{K}.npy``; otherwise exits with code 3 naming the missing
batches. Then concatenates t', computes z = ln(1/t'^2 - 1) and writes
(each file under a temporary name, then ``os.replace``):

* ``OUT/hist/t/t_hist_RG{K}.npz``         t' density, ``bins`` bins on [0, 1]
* ``OUT/hist/z/z_hist_RG{K}.npz``         z density, ``bins`` bins on [-zrange, zrange]
* ``OUT/hist/sym_z/sym_z_hist_RG{K}.npz`` (FP only) density of concat(z, -z)
* ``OUT/stats/DONE_RG{K}.json`` and finally ``DIR/DONE.json`` (the same
  document, as a single line of JSON)

Every ``.npz`` holds ``histval`` (density, ``np.histogram(..., density=True)``)
and ``binedges``. z values outside [-zrange, zrange] are not histogrammed;
their number is reported as ``z_out_of_range``.

The input of the next step (``next_input`` in DONE.json) is the symmetrised
``sym_z`` histogram for FP runs (the critical fixed point is symmetric under
z -> -z, symmetrising halves the noise and removes drift) and the plain ``z``
histogram for EXP runs (which must keep their asymmetry). All paths in the
JSON documents are relative to OUT (``out_dir`` records OUT as absolute path).

Exit codes: 0 success, 2 bad arguments / unreadable batch data, 3 missing or
not-READY batches, 1 I/O error while writing.
"""

import argparse
import io
import json
import os
import sys

import numpy as np

from ._cli import EXIT_BAD_INPUT, EXIT_IO, EXIT_OK, ArgumentParser, finite_float, nonneg_int, pos_float, pos_int  # noqa: F401
from .rg_unit import hist_distance, t_to_z  # noqa: F401  (hist_distance re-exported)

EXIT_MISSING = 3

__all__ = ["hist_distance", "main", "check_batches", "aggregate"]


def build_parser():
    p = ArgumentParser(
        prog="python -m source.aggregate",
        description="Aggregate the batches of one RG step into t, z (and symmetric z) histograms.",
    )
    p.add_argument("--in-dir", required=True, help="step directory holding batch_000 .. batch_{NB-1}")
    p.add_argument("--out-dir", required=True, help="campaign output root (hist/ and stats/ below it)")
    p.add_argument("--step", required=True, type=nonneg_int, help="RG step K")
    p.add_argument("--batches", required=True, type=pos_int, help="number NB of batches expected")
    p.add_argument("--type", required=True, choices=("FP", "EXP"), help="FP (fixed point) or EXP (exponent) run")
    p.add_argument("--bins", default=1000, type=pos_int, help="number of histogram bins (default 1000)")
    p.add_argument("--zrange", default=25.0, type=pos_float, help="z histogram range [-Z, Z] (default 25)")
    return p


def _ready_for_step(ready_path, step):
    """READY exists and (if it is our JSON) was written for this step."""
    try:
        with open(ready_path, "rb") as f:
            raw = f.read()
    except OSError:
        return False
    try:
        doc = json.loads(raw.decode("utf-8") or "{}")
    except ValueError:
        return True  # a foreign, non-JSON marker: its presence is what counts
    if isinstance(doc, dict) and "step" in doc:
        return doc["step"] == step
    return True


def check_batches(in_dir, step, nb):
    """Return the names of batches that are missing or not READY for ``step``."""
    missing = []
    for b in range(nb):
        name = "batch_%03d" % b
        bdir = os.path.join(in_dir, name)
        ok = (
            os.path.isdir(bdir)
            and _ready_for_step(os.path.join(bdir, "READY"), step)
            and os.path.isfile(os.path.join(bdir, "t_RG%d.npy" % step))
        )
        if not ok:
            missing.append(name)
    return missing


def _load_batch(path):
    arr = np.load(path, allow_pickle=False)
    if not isinstance(arr, np.ndarray) or arr.ndim != 1 or arr.size == 0:
        raise ValueError("expected a non-empty 1-D array")
    if arr.dtype.kind != "f":
        raise ValueError("expected floating point values, got dtype %s" % arr.dtype)
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)) or arr.min() < 0.0 or arr.max() > 1.0:
        raise ValueError("values must be finite and in [0, 1]")
    return arr


def _atomic_write_bytes(final_path, data):
    d, base = os.path.split(final_path)
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, ".%s.tmp.%d" % (base, os.getpid()))
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final_path)
    except BaseException:
        try:
            os.remove(tmp)
        except FileNotFoundError:
            pass
        raise


def _npz_bytes(histval, binedges):
    buf = io.BytesIO()
    np.savez(buf, histval=histval, binedges=binedges)
    return buf.getvalue()


def _json_bytes(doc):
    # one line: consumers read several DONE_RG*.json files as JSON lines
    return (json.dumps(doc, sort_keys=True) + "\n").encode("utf-8")


def aggregate(t, step, run_type, nbatches, out_dir, bins=1000, zrange=25.0):
    """Histogram ``t`` (all batches) and write the npz files; return the stats dict.

    Writes the histograms and ``OUT/stats/DONE_RG{K}.json``; the caller writes
    ``DIR/DONE.json`` (same document) last.
    """
    fp = run_type == "FP"
    z = t_to_z(t)
    rel = {
        "t": "hist/t/t_hist_RG%d.npz" % step,
        "z": "hist/z/z_hist_RG%d.npz" % step,
    }
    th, te = np.histogram(t, bins=bins, range=(0.0, 1.0), density=True)
    zh, ze = np.histogram(z, bins=bins, range=(-zrange, zrange), density=True)
    hists = {"t": (th, te), "z": (zh, ze)}
    if fp:
        rel["sym_z"] = "hist/sym_z/sym_z_hist_RG%d.npz" % step
        sh, se = np.histogram(np.concatenate((z, -z)), bins=bins, range=(-zrange, zrange), density=True)
        hists["sym_z"] = (sh, se)
    for key, (h, e) in hists.items():
        _atomic_write_bytes(os.path.join(out_dir, rel[key]), _npz_bytes(h, e))

    stats = {
        "step": step,
        "type": run_type,
        "samples": int(t.size),
        "batches": nbatches,
        "z_mean": float(np.mean(z)),
        "z_std": float(np.std(z)),
        "t_mean": float(np.mean(t)),
        "sym": fp,
        "hist_path": rel["z"],
        "next_input": rel["sym_z"] if fp else rel["z"],
        "hist_paths": rel,
        "bins": bins,
        "zrange": zrange,
        "z_out_of_range": int(np.count_nonzero(np.abs(z) > zrange)),
        "out_dir": os.path.abspath(out_dir),
        "paths_relative_to": "out_dir",
    }
    _atomic_write_bytes(os.path.join(out_dir, "stats", "DONE_RG%d.json" % step), _json_bytes(stats))
    return stats


def main(argv=None):
    args = build_parser().parse_args(argv)
    if not os.path.isdir(args.in_dir):
        print("aggregate: error: --in-dir %s is not a directory" % args.in_dir, file=sys.stderr)
        return EXIT_MISSING

    # A rerun recomputes the step: drop a stale completion marker first.
    try:
        os.remove(os.path.join(args.in_dir, "DONE.json"))
    except FileNotFoundError:
        pass
    except OSError as exc:
        print("aggregate: error: cannot remove stale DONE.json in %s: %s" % (args.in_dir, exc), file=sys.stderr)
        return EXIT_IO

    missing = check_batches(args.in_dir, args.step, args.batches)
    if missing:
        print(
            "aggregate: error: step %d: %d of %d batches missing or not READY in %s: %s"
            % (args.step, len(missing), args.batches, args.in_dir, ", ".join(missing)),
            file=sys.stderr,
        )
        return EXIT_MISSING

    parts = []
    for b in range(args.batches):
        path = os.path.join(args.in_dir, "batch_%03d" % b, "t_RG%d.npy" % args.step)
        try:
            parts.append(_load_batch(path))
        except (OSError, ValueError, EOFError) as exc:
            print("aggregate: error: bad batch data %s: %s" % (path, exc), file=sys.stderr)
            return EXIT_BAD_INPUT
    t = np.concatenate(parts)

    try:
        stats = aggregate(t, args.step, args.type, args.batches, args.out_dir, args.bins, args.zrange)
        _atomic_write_bytes(os.path.join(args.in_dir, "DONE.json"), _json_bytes(stats))
    except OSError as exc:
        print("aggregate: error writing results of step %d: %s" % (args.step, exc), file=sys.stderr)
        return EXIT_IO
    print(
        "aggregate RG%d %s: batches=%d samples=%d z_mean=%+.4f z_std=%.4f t_mean=%.4f next_input=%s"
        % (
            args.step,
            args.type,
            args.batches,
            stats["samples"],
            stats["z_mean"],
            stats["z_std"],
            stats["t_mean"],
            stats["next_input"],
        )
    )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
