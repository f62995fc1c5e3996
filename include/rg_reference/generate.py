"""Generation job of one RG step: one batch of renormalised amplitudes t'.

Usage (remote: the package is staged as ``source``)::

    python -m source.generate --out-dir DIR --step K --batch B --samples N \\
        --seed S [--input-hist Z_HIST.npz] [--shift X] [--init uniform_g|uniform_t]

Semantics
---------
* Source distribution of z = ln(1/t^2 - 1): the ``--input-hist`` z histogram
  (``.npz`` with ``histval`` = density and ``binedges``) if given, otherwise
  the initial distribution (``--init``, default ``uniform_g``: G = t^2 uniform
  in (0,1), i.e. z logistic and symmetric about 0; ``uniform_t``: t uniform in
  (0,1)). ``--shift X`` is added to every sampled z before converting to t
  (EXP runs: give it at the first step only; default 0).
* Step 0 is the starting distribution: N values of t are drawn from the
  source and written as they are (no RG unit).
* Step K >= 1: 5*N values of t are drawn from the source, grouped in fives and
  passed, with 4*N uniform random phases, through the RG unit
  (:func:`rg_unit.rg_transform`), giving N values t'.
* Output: ``DIR/batch_{B:03d}/t_RG{K}.npy`` (float64, shape (N,)), written
  under a temporary name and moved in place with ``os.replace``; then the
  ``READY`` marker (a small JSON document) is written LAST, also atomically.
  Before computing, a stale ``READY`` and ``t_RG{K}.npy`` of a previous run of
  the same (step, batch) are removed, so a failed run never leaves either file
  under its final name.
* Determinism: the numpy Generator is ``default_rng(SeedSequence([seed, step,
  batch]))``; results depend only on (seed, step, batch, samples, input).

Exit codes: 0 success, 2 bad arguments/input (nothing written), 1 I/O error
while writing (no final files left behind).
"""

import argparse
import json
import os
import sys

import numpy as np

from ._cli import EXIT_BAD_INPUT, EXIT_IO, EXIT_OK, ArgumentParser, finite_float, nonneg_int, pos_float, pos_int  # noqa: F401
from .rg_unit import (
    INITIAL_KINDS,
    initial_z,
    load_hist,
    rg_transform,
    sample_z_from_hist,
    t_to_z,
    z_to_tr,
)

#: Samples are produced in chunks of this size (bounded memory). It is part of
#: the random stream definition: changing it changes the output.
CHUNK = 1 << 18

def build_parser():
    p = ArgumentParser(
        prog="python -m source.generate",
        description="Generate one batch of RG-step samples t' of the Chalker-Coddington RG unit.",
    )
    p.add_argument("--out-dir", required=True, help="step directory; output goes to OUT_DIR/batch_BBB/")
    p.add_argument("--step", required=True, type=nonneg_int, help="RG step K (0 = starting distribution)")
    p.add_argument("--batch", required=True, type=nonneg_int, help="batch index B (directory batch_{B:03d})")
    p.add_argument("--samples", required=True, type=pos_int, help="number N of output values t'")
    p.add_argument("--seed", required=True, type=nonneg_int, help="campaign seed S")
    p.add_argument("--input-hist", default=None, help="z histogram .npz (keys histval, binedges) of the previous step")
    p.add_argument("--shift", default=0.0, type=finite_float, help="shift X added to sampled z (EXP runs)")
    p.add_argument(
        "--init",
        default="uniform_g",
        choices=INITIAL_KINDS,
        help="initial distribution when no --input-hist is given (default uniform_g: t^2 uniform)",
    )
    return p


def make_rng(seed, step, batch):
    """The Generator of (seed, step, batch)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(step), int(batch)]))


def generate_t(step, samples, rng, hist=None, shift=0.0, init="uniform_g"):
    """Return the N output values of t for one batch (see module docstring).

    ``hist`` is ``(histval, binedges)`` or None for the initial distribution.
    """

    def source_z(n):
        if hist is None:
            z = initial_z(n, rng, init)
        else:
            z = sample_z_from_hist(hist[0], hist[1], n, rng)
        return z + shift if shift else z

    out = np.empty(samples, dtype=np.float64)
    for start in range(0, samples, CHUNK):
        n = min(CHUNK, samples - start)
        if step == 0:
            out[start : start + n] = z_to_tr(source_z(n))[0]
        else:
            t, r = z_to_tr(source_z(5 * n).reshape(5, n))
            phi = rng.random((4, n)) * (2.0 * np.pi)
            out[start : start + n] = rg_transform(t, phi, r=r)
    return out


def _remove_if_exists(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _atomic_write(final_path, write_fn, mode="wb"):
    """Write via ``write_fn(fileobj)`` to a temp name in the same dir, fsync, os.replace."""
    d, base = os.path.split(final_path)
    tmp = os.path.join(d, ".%s.tmp.%d" % (base, os.getpid()))
    try:
        with open(tmp, mode) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final_path)
    except BaseException:
        _remove_if_exists(tmp)
        raise


def write_batch(out_dir, step, batch, t_out, meta):
    """Write t_RG{step}.npy then READY (last) into out_dir/batch_{batch:03d}."""
    bdir = os.path.join(out_dir, "batch_%03d" % batch)
    os.makedirs(bdir, exist_ok=True)
    npy_name = "t_RG%d.npy" % step
    npy = os.path.join(bdir, npy_name)
    ready = os.path.join(bdir, "READY")
    # Invalidate a previous run of this batch first: READY goes before the data.
    _remove_if_exists(ready)
    _remove_if_exists(npy)
    _atomic_write(npy, lambda f: np.save(f, t_out, allow_pickle=False))
    doc = dict(meta, file=npy_name)
    _atomic_write(ready, lambda f: f.write((json.dumps(doc, sort_keys=True) + "\n").encode("utf-8")))
    return bdir


def main(argv=None):
    args = build_parser().parse_args(argv)

    hist = None
    if args.input_hist is not None:
        try:
            hist = load_hist(args.input_hist)
        except ValueError as exc:
            print("generate: error: %s" % exc, file=sys.stderr)
            return EXIT_BAD_INPUT
    if os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
        print("generate: error: --out-dir %s exists and is not a directory" % args.out_dir, file=sys.stderr)
        return EXIT_BAD_INPUT

    rng = make_rng(args.seed, args.step, args.batch)
    t_out = generate_t(args.step, args.samples, rng, hist=hist, shift=args.shift, init=args.init)

    meta = {
        "step": args.step,
        "batch": args.batch,
        "seed": args.seed,
        "samples": int(t_out.size),
        "input_hist": os.path.abspath(args.input_hist) if args.input_hist else None,
        "init": None if hist is not None else args.init,
        "shift": args.shift,
    }
    try:
        bdir = write_batch(args.out_dir, args.step, args.batch, t_out, meta)
    except OSError as exc:
        print("generate: error writing batch %d of step %d: %s" % (args.batch, args.step, exc), file=sys.stderr)
        return EXIT_IO
    z = t_to_z(t_out)
    print(
        "generate RG%d batch_%03d: samples=%d z_mean=%+.4f z_std=%.4f -> %s"
        % (args.step, args.batch, t_out.size, float(np.mean(z)), float(np.std(z)), bdir)
    )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
