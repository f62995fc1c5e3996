"""Reconstruction job of one raw file (stands in for Calypso's
``faser_reco_alignment.py``): tracks, residuals and derivatives for Millepede.

Usage (remote: the package is staged as ``faser_reference``)::

    python -m faser_reference.reco --raw-file N --year Y --run R --out DIR \\
        [--constants inputforalign.txt] [--tracks 2000] [--fourst]

What it does
------------
1. Simulates ``--tracks`` straight tracks (intercept uniform in a disk of
   radius 100 mm at ``z_ref`` = mean plane z, slopes Gaussian, sigma 2 mrad)
   through the MISALIGNED toy tracker (geometry.py: true misalignment from a
   fixed seed). Every track crosses every plane; each plane measures the hit
   in its local frame, smeared by 30 um in both coordinates. The random stream
   is ``default_rng(SeedSequence([TRACK_SEED_TAG, year, run, raw_file]))``:
   the same raw file gives the same hits in every iteration (like real data).
2. Reads the current alignment constants (``--constants``; option not given,
   file missing or empty = all zero = first iteration; format in
   constants.py), places every hit in the global frame with them and fits a
   straight line per track in x-z and y-z (least squares, equal weights):
   ``x = x0 + tx*(z - z_ref)``, ``y = y0 + ty*(z - z_ref)``.
3. Computes per hit the residual (measured minus predicted, in the plane's
   local frame) and its derivatives, and writes ``DIR/kfalignment_{N:05d}.npz``
   (temporary name, then ``os.replace``; a stale output of the same raw file is
   removed first, so a failed job never leaves one behind).
4. Prints one JSON line on stdout: raw_file, year, run, n_tracks, n_planes,
   mean_abs_residual_mm, chi2_ndf, constants_source, output.

Output ``kfalignment_NNNNN.npz`` (all float64 unless noted; T tracks, P planes)
---------------------------------------------------------------------------
* ``residuals`` (T, P, 2): local (u, v) residual = measured - predicted [mm];
* ``sigma`` (T, P, 2): measurement error [mm];
* ``dlocal`` (T, P, 2, 4): derivatives of the residual w.r.t. the track
  parameters (x0 [mm], tx [rad], y0 [mm], ty [rad]);
* ``dglobal`` (T, P, 2, 3): derivatives of the residual w.r.t. the alignment
  parameters (dx [mm], dy [mm], drz [mrad]) of the hit's own plane (zero for
  all other planes). NOTE: Mille's binary records store derivatives of the
  *prediction*, i.e. minus these;
* ``labels`` (P, 3) int64: pede labels of the plane parameters;
* ``station``, ``layer`` (P,) int64; ``z`` (P,) [mm]; ``z_ref`` () [mm];
* ``tracks`` (T, 4): fitted (x0, tx, y0, ty);
* ``constants`` (P, 3): the constants the reconstruction used;
* ``year``, ``run``, ``raw_file``, ``fourst``, ``format_version`` () int64.

Linearised model used by Millepede: residual(after corrections) =
``residuals + dlocal @ d_track + dglobal @ d_align``.

Exit codes: 0 success, 2 bad arguments / bad constants file (nothing
written), 1 I/O error while writing (no output left behind).
"""

import argparse
import json
import os
import sys

import numpy as np

from .constants import ConstantsError, atomic_write, read_constants, remove_if_exists
from .geometry import MRAD, TRACK_RADIUS, TRACK_SLOPE_SIGMA, Geometry, true_misalignment

EXIT_OK = 0
EXIT_IO = 1
EXIT_BAD_INPUT = 2

FORMAT_VERSION = 1
#: First element of the track SeedSequence (separates it from other streams).
TRACK_SEED_TAG = 0xFA5E

__all__ = [
    "output_name", "make_rng", "simulate_hits", "fit_tracks", "residuals_and_derivatives",
    "reconstruct", "main",
]


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(EXIT_BAD_INPUT, "%s: error: %s\n" % (self.prog, message))


def _nonneg_int(text):
    try:
        v = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a non-negative integer, got %r" % text) from None
    if v < 0:
        raise argparse.ArgumentTypeError("expected a non-negative integer, got %d" % v)
    return v


def _pos_int(text):
    v = _nonneg_int(text)
    if v == 0:
        raise argparse.ArgumentTypeError("expected a positive integer, got 0")
    return v


def build_parser():
    p = _ArgumentParser(
        prog="python -m faser_reference.reco",
        description="Toy FASER reconstruction of one raw file: track residuals and derivatives for Millepede.",
    )
    p.add_argument(
        "--raw-file", required=True, type=_nonneg_int, help="raw file number N (output kfalignment_{N:05d}.npz)"
    )
    p.add_argument("--year", required=True, type=_nonneg_int, help="year of data taking, e.g. 2023")
    p.add_argument("--run", required=True, type=_nonneg_int, help="run number, e.g. 011705")
    p.add_argument("--out", required=True, help="output directory (the iteration's 2kfalignment/)")
    p.add_argument(
        "--constants", default=None,
        help="alignment constants inputforalign.txt (absent or empty = all zero = first iteration)",
    )
    p.add_argument("--tracks", default=2000, type=_pos_int, help="number of tracks (default 2000)")
    p.add_argument("--fourst", action="store_true", help="4-station mode (IFT + 3 stations, 12 planes)")
    return p


def output_name(raw_file):
    return "kfalignment_%05d.npz" % int(raw_file)


def make_rng(year, run, raw_file):
    return np.random.default_rng(np.random.SeedSequence([TRACK_SEED_TAG, int(year), int(run), int(raw_file)]))


def _rot_cs(angles_mrad):
    a = np.asarray(angles_mrad, dtype=np.float64) * MRAD
    return np.cos(a), np.sin(a)


def simulate_hits(geom, truth, n_tracks, rng):
    """Measured local hits (T, P, 2) of ``n_tracks`` tracks; also the true tracks (T, 4)."""
    r = TRACK_RADIUS * np.sqrt(rng.random(n_tracks))
    phi = 2.0 * np.pi * rng.random(n_tracks)
    slopes = TRACK_SLOPE_SIGMA * rng.standard_normal((n_tracks, 2))
    noise = geom.sigma * rng.standard_normal((n_tracks, geom.n_planes, 2))
    x0, y0 = r * np.cos(phi), r * np.sin(phi)
    tx, ty = slopes[:, 0], slopes[:, 1]
    dz = geom.z - geom.z_ref
    gx = x0[:, None] + tx[:, None] * dz[None, :] - truth[None, :, 0]
    gy = y0[:, None] + ty[:, None] * dz[None, :] - truth[None, :, 1]
    c, s = _rot_cs(truth[:, 2])
    hits = np.empty((n_tracks, geom.n_planes, 2), dtype=np.float64)
    hits[:, :, 0] = c * gx + s * gy
    hits[:, :, 1] = -s * gx + c * gy
    hits += noise
    return hits, np.stack([x0, tx, y0, ty], axis=1)


def hits_to_global(geom, hits, constants):
    """Global (x, y) (T, P) of local hits placed with ``constants``."""
    c, s = _rot_cs(constants[:, 2])
    gx = c * hits[:, :, 0] - s * hits[:, :, 1] + constants[None, :, 0]
    gy = s * hits[:, :, 0] + c * hits[:, :, 1] + constants[None, :, 1]
    return gx, gy


def fit_tracks(geom, hits, constants):
    """Straight-line LS fit per track of the hits placed with ``constants``: (T, 4) (x0, tx, y0, ty)."""
    gx, gy = hits_to_global(geom, hits, constants)
    design = np.stack([np.ones(geom.n_planes), geom.z - geom.z_ref], axis=1)
    pinv = np.linalg.pinv(design)  # (2, P)
    cx = gx @ pinv.T
    cy = gy @ pinv.T
    return np.stack([cx[:, 0], cx[:, 1], cy[:, 0], cy[:, 1]], axis=1)


def residuals_and_derivatives(geom, hits, tracks, constants):
    """Residuals (T,P,2), d residual / d track (T,P,2,4), d residual / d alignment (T,P,2,3)."""
    T, P = hits.shape[0], geom.n_planes
    dz = geom.z - geom.z_ref
    px = tracks[:, 0:1] + tracks[:, 1:2] * dz[None, :]  # predicted global x (T, P)
    py = tracks[:, 2:3] + tracks[:, 3:4] * dz[None, :]
    c, s = _rot_cs(constants[:, 2])  # (P,)
    ex = px - constants[None, :, 0]  # track minus plane position, global frame
    ey = py - constants[None, :, 1]
    # prediction in the local frame: R(-theta) (track - d)
    res = np.empty((T, P, 2), dtype=np.float64)
    res[:, :, 0] = hits[:, :, 0] - (c * ex + s * ey)
    res[:, :, 1] = hits[:, :, 1] - (-s * ex + c * ey)

    dl = np.zeros((T, P, 2, 4), dtype=np.float64)
    # d res / d x0 = -R(-theta) e_x = (-c, s); d/dy0 = -R(-theta) e_y = (-s, -c)
    dl[:, :, 0, 0] = -c
    dl[:, :, 1, 0] = s
    dl[:, :, 0, 2] = -s
    dl[:, :, 1, 2] = -c
    dl[:, :, :, 1] = dl[:, :, :, 0] * dz[None, :, None]
    dl[:, :, :, 3] = dl[:, :, :, 2] * dz[None, :, None]

    dg = np.zeros((T, P, 2, 3), dtype=np.float64)
    # d res / d dx = R(-theta) e_x = (c, -s); d / d dy = R(-theta) e_y = (s, c)
    dg[:, :, 0, 0] = c
    dg[:, :, 1, 0] = -s
    dg[:, :, 0, 1] = s
    dg[:, :, 1, 1] = c
    # d res / d theta = -dR(-theta)/dtheta (track - d) = [[s, -c], [c, s]] (track - d); per mrad
    dg[:, :, 0, 2] = (s * ex - c * ey) * MRAD
    dg[:, :, 1, 2] = (c * ex + s * ey) * MRAD
    return res, dl, dg


def reconstruct(geom, year, run, raw_file, n_tracks, constants):
    """Run the toy reconstruction in memory; return the dict of arrays of the .npz."""
    truth = true_misalignment(geom)
    hits, _ = simulate_hits(geom, truth, n_tracks, make_rng(year, run, raw_file))
    tracks = fit_tracks(geom, hits, constants)
    res, dl, dg = residuals_and_derivatives(geom, hits, tracks, constants)
    return {
        "format_version": np.int64(FORMAT_VERSION),
        "residuals": res,
        "sigma": np.full(res.shape, geom.sigma, dtype=np.float64),
        "dlocal": dl,
        "dglobal": dg,
        "labels": geom.labels.copy(),
        "station": geom.station.copy(),
        "layer": geom.layer.copy(),
        "z": geom.z.copy(),
        "z_ref": np.float64(geom.z_ref),
        "tracks": tracks,
        "constants": np.asarray(constants, dtype=np.float64).copy(),
        "year": np.int64(year),
        "run": np.int64(run),
        "raw_file": np.int64(raw_file),
        "fourst": np.int64(1 if geom.fourst else 0),
    }


def main(argv=None):
    args = build_parser().parse_args(argv)
    geom = Geometry(fourst=args.fourst)
    try:
        constants, source = read_constants(args.constants, geom)
    except (ConstantsError, OSError) as exc:
        print("reco: error: bad --constants: %s" % exc, file=sys.stderr)
        return EXIT_BAD_INPUT
    if source == "missing":
        print("reco: note: constants file %s does not exist: using zero constants" % args.constants, file=sys.stderr)
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        print("reco: error: --out %s exists and is not a directory" % args.out, file=sys.stderr)
        return EXIT_BAD_INPUT

    final = os.path.join(args.out, output_name(args.raw_file))
    try:
        os.makedirs(args.out, exist_ok=True)
        remove_if_exists(final)  # a failed run must not leave a stale output behind
    except OSError as exc:
        print("reco: error preparing %s: %s" % (args.out, exc), file=sys.stderr)
        return EXIT_IO

    data = reconstruct(geom, args.year, args.run, args.raw_file, args.tracks, constants)
    try:
        atomic_write(final, lambda f: np.savez(f, **data))
    except OSError as exc:
        print("reco: error writing %s: %s" % (final, exc), file=sys.stderr)
        return EXIT_IO

    res = data["residuals"]
    ndf = res.size - 4 * args.tracks
    summary = {
        "raw_file": args.raw_file,
        "year": args.year,
        "run": args.run,
        "n_tracks": args.tracks,
        "n_planes": geom.n_planes,
        "fourst": bool(args.fourst),
        "mean_abs_residual_mm": float(np.mean(np.abs(res))),
        "chi2_ndf": float(np.sum((res / data["sigma"]) ** 2) / ndf),
        "constants_source": source,
        "output": os.path.abspath(final),
    }
    print(json.dumps(summary, sort_keys=True))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
