"""Alignment job of one iteration (stands in for ``millepede/bin/millepede.py``:
Mille + pede): solve for the alignment corrections from all reco outputs.

Usage (remote: the package is staged as ``faser_reference``)::

    python -m faser_reference.millepede -i DIR --out OUTDIR \\
        [--constants inputforalign.txt] [--fourst]

``DIR`` is the iteration's ``2kfalignment/`` directory; every
``kfalignment_*.npz`` in it is used (format in reco.py). No such file (or no
such directory): exit code 3 with a message naming DIR.

Method (Millepede-II's global fit)
----------------------------------
For track t with residuals r (2P), weights W = 1/sigma^2, local derivatives
L (2P x 4) and global derivatives G (2P x 3P), the linearised chi^2 is
``sum_t (r + L dq + G dp)^T W (r + L dq + G dp)``. The track corrections dq
are eliminated per track (Schur complement, Millepede's reduction)::

    C = sum_t [G^T W G - G^T W L (L^T W L)^-1 L^T W G]
    b = -sum_t [G^T W r - G^T W L (L^T W L)^-1 L^T W r]

and ``C dp = b`` is solved with the six global-mode constraints of
geometry.constraint_matrix (``A dp = 0``: the corrections have no overall
translation, shear, rotation or twist) by Lagrange multipliers, as pede does:
``[[C, A^T], [A, 0]] [dp, lambda] = [b, 0]``. The errors are the square roots
of the diagonal of the top-left block of the inverse bordered matrix.

Previous constants: ``--constants`` if given (a missing or empty file means
zero); they must equal the constants recorded in the npz files (the ones the
reconstruction used; otherwise exit 2). Without ``--constants`` the recorded
ones are used (all files must agree). New constants = previous + corrections.

Outputs (in OUTDIR, each written atomically; stale ones removed first, so
after a failure none of them exists; ``alignment.json`` is written LAST)
------------------------------------------------------------------------
* ``millepede.res``: pede format (constants.py), the corrections and errors;
* ``inputforalign.txt``: the new constants (constants.py format);
* ``alignment.json`` (also printed as one line on stdout)::

    n_files, files, n_tracks, n_measurements, n_parameters, n_constraints,
    fourst, n_planes,
    chi2_ndf_before, chi2_ndf       chi^2/ndf at the previous constants and
                                    after the corrections (linearised);
                                    ndf = measurements - 4 * tracks
    mean_abs_residual_mm            mean |residual| of the input
    max_abs_correction              {"translation_mm", "rotation_mrad"}
    max_rel_change, max_rel_change_label
        max over parameters of |correction| / max(|new constant|, floor),
        floor = REL_FLOOR_MM (0.01 mm) for dx, dy and REL_FLOOR_MRAD
        (0.05 mrad) for drz
    converged                       max_rel_change < CONVERGENCE (1e-3)
    residual_to_truth               {"translation_mm", "rotation_mrad"}: RMS of
        (new constants - true misalignment) after removing the global modes
        (translation: over all dx and dy; rotation: over all drz)
    residual_to_truth_before        the same for the previous constants
    stat_error                      {"translation_mm", "rotation_mrad"}: RMS
        of the parameter errors (what residual_to_truth converges to)
    truth_seed, constants_source

Exit codes: 0 success, 3 no input files, 2 bad arguments or inconsistent /
unreadable input, 1 I/O error while writing (no output left behind).
"""

import argparse
import glob
import json
import os
import re
import sys
import zipfile

import numpy as np

from .constants import (
    ConstantsError,
    format_constants,
    format_res,
    read_constants,
    remove_if_exists,
    write_tmp,
)
from .geometry import TRUTH_SEED, Geometry, constraint_matrix, rms_modulo_global_modes, true_misalignment

EXIT_OK = 0
EXIT_IO = 1
EXIT_BAD_INPUT = 2
EXIT_NO_INPUT = 3

#: Floors of the relative change (so parameters near zero do not blow it up).
REL_FLOOR_MM = 0.01
REL_FLOOR_MRAD = 0.05
#: Convergence threshold on max_rel_change (0.1 %).
CONVERGENCE = 1.0e-3
#: Tracks per chunk when building the normal equations.
CHUNK = 4096

OUTPUT_NAMES = ("millepede.res", "inputforalign.txt", "alignment.json")
_INPUT_RE = re.compile(r"^kfalignment_\d+\.npz$")
_REQUIRED = ("residuals", "sigma", "dlocal", "dglobal", "labels", "z", "constants", "fourst")

__all__ = ["InputError", "NoInputError", "find_inputs", "load_input", "Accumulator", "solve", "run", "main"]


class InputError(ValueError):
    """Unreadable or inconsistent input."""


class NoInputError(Exception):
    """No kfalignment_*.npz in the input directory (exit code 3)."""


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(EXIT_BAD_INPUT, "%s: error: %s\n" % (self.prog, message))


def build_parser():
    p = _ArgumentParser(
        prog="python -m faser_reference.millepede",
        description="Toy Millepede: alignment corrections from all kfalignment_*.npz of one iteration.",
    )
    p.add_argument(
        "-i", "--input", required=True, dest="input", help="directory with kfalignment_*.npz (2kfalignment/)"
    )
    p.add_argument("--out", required=True, help="output directory (3millepede/)")
    p.add_argument(
        "--constants", default=None,
        help="previous constants inputforalign.txt (default: the ones recorded by the reconstruction)",
    )
    p.add_argument("--fourst", action="store_true", help="4-station mode (12 planes)")
    return p


def find_inputs(directory):
    """Sorted list of ``kfalignment_*.npz`` paths in ``directory`` (empty if none / no dir)."""
    if not os.path.isdir(directory):
        return []
    names = [os.path.basename(p) for p in glob.glob(os.path.join(directory, "kfalignment_*.npz"))]
    return [os.path.join(directory, n) for n in sorted(names) if _INPUT_RE.match(n)]


def load_input(path, geom):
    """Load and check one reco output against ``geom``; return a dict of arrays."""
    try:
        with np.load(path, allow_pickle=False) as d:
            missing = [k for k in _REQUIRED if k not in d.files]
            if missing:
                raise InputError("%s: missing arrays %s" % (path, ", ".join(missing)))
            data = {k: d[k] for k in d.files}
    except InputError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError("%s: cannot read: %s" % (path, exc)) from None
    P = geom.n_planes
    if bool(int(data["fourst"])) != geom.fourst or data["labels"].shape != (P, 3) or not np.array_equal(
        data["labels"], geom.labels
    ):
        raise InputError(
            "%s: written for a different geometry (%d planes, fourst=%d); this job is %d-station (%d planes)%s"
            % (path, data["labels"].shape[0], int(data["fourst"]), len(geom.stations), P,
               "" if geom.fourst else " -- pass --fourst?")
        )
    res = data["residuals"]
    if res.ndim != 3 or res.shape[1:] != (P, 2):
        raise InputError("%s: residuals have shape %r, expected (T, %d, 2)" % (path, res.shape, P))
    T = res.shape[0]
    for key, shape in (("sigma", (T, P, 2)), ("dlocal", (T, P, 2, 4)), ("dglobal", (T, P, 2, 3)),
                       ("constants", (P, 3))):
        if data[key].shape != shape:
            raise InputError("%s: %s has shape %r, expected %r" % (path, key, data[key].shape, shape))
    for key in ("residuals", "sigma", "dlocal", "dglobal", "constants"):
        if not np.all(np.isfinite(data[key])):
            raise InputError("%s: non-finite values in %s" % (path, key))
    if T > 0 and not np.all(data["sigma"] > 0):
        raise InputError("%s: non-positive sigma" % path)
    return data


class Accumulator(object):
    """Global normal equations with the track parameters eliminated per track."""

    def __init__(self, n_params):
        self.n_params = n_params
        self.C = np.zeros((n_params, n_params), dtype=np.float64)
        self.b = np.zeros(n_params, dtype=np.float64)
        self.chi2_0 = 0.0  # chi^2 at dp = 0 with the tracks re-fitted (local minimum)
        self.n_tracks = 0
        self.n_meas = 0
        self.sum_abs_res = 0.0

    def add(self, data):
        """Add all tracks of one reco output (in chunks of CHUNK tracks: bounded memory)."""
        res, sigma, dl, dg = data["residuals"], data["sigma"], data["dlocal"], data["dglobal"]
        for start in range(0, res.shape[0], CHUNK):
            sl = slice(start, start + CHUNK)
            self._add(res[sl], sigma[sl], dl[sl], dg[sl])

    def _add(self, res, sigma, dl, dg):
        T, P = res.shape[0], res.shape[1]
        M = 2 * P
        r = res.reshape(T, M)
        w = 1.0 / sigma.reshape(T, M) ** 2
        L = dl.reshape(T, M, 4)
        G5 = np.zeros((T, P, 2, P, 3), dtype=np.float64)
        for p in range(P):
            G5[:, p, :, p, :] = dg[:, p]
        G = G5.reshape(T, M, 3 * P)
        n = 3 * P
        Gw = G * w[:, :, None]
        Lw = L * w[:, :, None]
        GWG = Gw.reshape(T * M, n).T @ G.reshape(T * M, n)
        GWL = np.matmul(Gw.transpose(0, 2, 1), L)  # (T, n, 4)
        LWL = np.matmul(Lw.transpose(0, 2, 1), L)  # (T, 4, 4)
        GWr = Gw.reshape(T * M, n).T @ r.reshape(T * M)
        LWr = np.einsum("tma,tm->ta", Lw, r)
        Minv = np.linalg.inv(LWL)
        MLWr = np.einsum("tab,tb->ta", Minv, LWr)
        X = np.matmul(GWL, Minv)  # (T, n, 4)
        self.C += GWG - X.transpose(1, 0, 2).reshape(n, T * 4) @ GWL.transpose(1, 0, 2).reshape(n, T * 4).T
        self.b -= GWr - np.einsum("tia,ta->i", GWL, MLWr)
        self.chi2_0 += float(np.sum(w * r * r) - np.sum(LWr * MLWr))
        self.n_tracks += T
        self.n_meas += T * M
        self.sum_abs_res += float(np.sum(np.abs(r)))

    def chi2(self, dp):
        """Linearised chi^2 (tracks re-fitted) after the corrections ``dp``."""
        return float(self.chi2_0 - 2.0 * self.b @ dp + dp @ self.C @ dp)


def solve(C, b, A):
    """Constrained solution of ``C x = b`` with ``A x = 0``: (x, covariance)."""
    n, k = C.shape[0], A.shape[0]
    scale = float(np.mean(np.abs(np.diag(C)))) or 1.0  # balance the bordered matrix
    As = A * scale
    K = np.zeros((n + k, n + k), dtype=np.float64)
    K[:n, :n] = C
    K[:n, n:] = As.T
    K[n:, :n] = As
    rhs = np.concatenate([b, np.zeros(k)])
    Kinv = np.linalg.inv(K)
    x = Kinv @ rhs
    cov = Kinv[:n, :n]
    cov = 0.5 * (cov + cov.T)
    return x[:n], cov


def _remove_outputs(finals, constants_path):
    """Remove the output files, except the --constants input itself if it is one of them."""
    for f in finals:
        if constants_path is not None and os.path.exists(f) and os.path.exists(constants_path) \
                and os.path.samefile(f, constants_path):
            continue  # never delete our own input (it is replaced at the end)
        remove_if_exists(f)


def run(in_dir, out_dir, constants_path=None, fourst=False):
    """Whole job; returns the summary document. Raises InputError / ConstantsError / OSError.

    Raises :class:`NoInputError` (with a message naming ``in_dir``) if there are no inputs.
    """
    geom = Geometry(fourst=fourst)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise InputError("--out %s exists and is not a directory" % out_dir)
    os.makedirs(out_dir, exist_ok=True)
    finals = [os.path.join(out_dir, n) for n in OUTPUT_NAMES]
    _remove_outputs(finals, constants_path)  # stale outputs must not survive a failure

    prev = None
    source = "recorded"
    if constants_path is not None:
        prev, source = read_constants(constants_path, geom)

    paths = find_inputs(in_dir)
    if not paths:
        raise NoInputError(
            "no kfalignment_*.npz files in %s (did the reconstruction jobs of this iteration run?)"
            % os.path.abspath(in_dir)
        )

    acc = Accumulator(geom.n_params)
    recorded = None
    for path in paths:
        data = load_input(path, geom)
        if recorded is None:
            recorded = data["constants"]
        elif not np.allclose(data["constants"], recorded, rtol=0.0, atol=1e-12):
            raise InputError(
                "%s was reconstructed with different alignment constants than %s (mixed iterations?)"
                % (path, paths[0])
            )
        acc.add(data)
        del data
    if prev is None:
        prev = recorded
    elif not np.allclose(prev, recorded, rtol=0.0, atol=1e-12):
        raise InputError(
            "--constants %s differ from the constants the reconstruction used (recorded in %s)"
            % (constants_path, paths[0])
        )
    if acc.n_tracks == 0:
        raise InputError("the input files in %s hold no tracks" % in_dir)

    A = constraint_matrix(geom)
    dp, cov = solve(acc.C, acc.b, A)
    corr = dp.reshape(geom.n_planes, 3)
    err = np.sqrt(np.clip(np.diag(cov), 0.0, None)).reshape(geom.n_planes, 3)
    new = prev + corr

    truth = true_misalignment(geom)
    ndf = acc.n_meas - 4 * acc.n_tracks
    floors = np.array([REL_FLOOR_MM, REL_FLOOR_MM, REL_FLOOR_MRAD])
    rel = np.abs(corr) / np.maximum(np.abs(new), floors[None, :])
    imax = int(np.argmax(rel))
    t_res, r_res = rms_modulo_global_modes(new - truth, geom.z)
    t_before, r_before = rms_modulo_global_modes(prev - truth, geom.z)
    doc = {
        "n_files": len(paths),
        "files": [os.path.basename(p) for p in paths],
        "n_tracks": acc.n_tracks,
        "n_measurements": acc.n_meas,
        "n_parameters": geom.n_params,
        "n_constraints": int(A.shape[0]),
        "fourst": geom.fourst,
        "n_planes": geom.n_planes,
        "chi2_ndf_before": acc.chi2_0 / ndf if ndf > 0 else None,
        "chi2_ndf": acc.chi2(dp) / ndf if ndf > 0 else None,
        "mean_abs_residual_mm": acc.sum_abs_res / acc.n_meas,
        "max_abs_correction": {
            "translation_mm": float(np.max(np.abs(corr[:, :2]))),
            "rotation_mrad": float(np.max(np.abs(corr[:, 2]))),
        },
        "max_rel_change": float(rel.flat[imax]),
        "max_rel_change_label": int(geom.labels.flat[imax]),
        "rel_change_floor": {"translation_mm": REL_FLOOR_MM, "rotation_mrad": REL_FLOOR_MRAD},
        "converged": bool(rel.flat[imax] < CONVERGENCE),
        "convergence_threshold": CONVERGENCE,
        "residual_to_truth": {"translation_mm": t_res, "rotation_mrad": r_res},
        "residual_to_truth_before": {"translation_mm": t_before, "rotation_mrad": r_before},
        "stat_error": {
            "translation_mm": float(np.sqrt(np.mean(err[:, :2] ** 2))),
            "rotation_mrad": float(np.sqrt(np.mean(err[:, 2] ** 2))),
        },
        "truth_seed": TRUTH_SEED,
        "constants_source": source,
    }

    texts = [
        format_res(geom, corr, err).encode("ascii"),
        format_constants(geom, new).encode("ascii"),
        (json.dumps(doc, sort_keys=True) + "\n").encode("utf-8"),
    ]
    tmps = []
    try:
        for final, text in zip(finals, texts):
            tmps.append(write_tmp(final, lambda f, t=text: f.write(t)))
        for tmp, final in zip(tmps, finals):  # alignment.json last
            os.replace(tmp, final)
    except BaseException:
        for tmp in tmps:
            remove_if_exists(tmp)
        _remove_outputs(finals, constants_path)
        raise
    return doc


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        doc = run(args.input, args.out, constants_path=args.constants, fourst=args.fourst)
    except NoInputError as exc:
        print("millepede: error: %s" % exc, file=sys.stderr)
        return EXIT_NO_INPUT
    except (InputError, ConstantsError) as exc:
        print("millepede: error: %s" % exc, file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:
        print("millepede: error: %s" % exc, file=sys.stderr)
        return EXIT_IO
    print(json.dumps(doc, sort_keys=True))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
