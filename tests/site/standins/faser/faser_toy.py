"""Toy FASER tracker shared by the FASER stand-ins (reco, millepede.py, pede, raw files).

Written from the contract in issue 12, not from the group's code.

Geometry: stations 0 (IFT) .. 3, 3 layers each; station ``s`` at z = 1000*s mm, layer ``l``
50*l mm behind it. A plane measures (x, y). The toy aligns, per plane, dx, dy (mm) and rz
(rad, rotation about the beam axis); dz, rx, ry are carried through unchanged.

Alignment constants (the group's ``inputforalign.txt``): a comma-separated list of
``"<id>": [dx, dy, dz, rx, ry, rz]`` entries (mm, rad), ids as strings in Calypso's
TrackerAlignDBTool convention: ``"<station>"`` (station), ``"<station><layer>"`` (layer),
``"<station><layer><module>"`` (module 0..7). An empty file means all zero. The constant a
plane gets is station + layer + the mean of its 8 module entries (missing = 0).

Pede labels: ``100*station + 10*layer + dof`` with dof 1 = dx, 2 = dy, 6 = rz.
"""

from __future__ import annotations

import io
import json
import math
import re
from typing import Iterable

import numpy as np

STATIONS_4 = (0, 1, 2, 3)
STATIONS_3 = (1, 2, 3)
LAYERS = (0, 1, 2)
MODULES = tuple(range(8))
STATION_PITCH_MM = 1000.0
LAYER_PITCH_MM = 50.0
HIT_SIGMA_MM = 0.02
TRUTH_SEED = 0xFA5E12
DOF_INDEX = {1: 0, 2: 1, 6: 5}  # pede dof -> index in [dx, dy, dz, rx, ry, rz]
ALIGNED_DOFS = (1, 2, 6)
RAW_NAME = re.compile(r"^/eos/experiment/faser/raw/([0-9]{4})/([0-9]{6})/Faser-Physics-([0-9]{6})-([0-9]{5})\.raw$")

Constants = dict[str, list[float]]


class ConstantsFormatError(ValueError):
    """An inputforalign.txt that a real Calypso job would not parse."""


def planes_of(stations: Iterable[int]) -> list[tuple[int, int]]:
    return [(s, l) for s in stations for l in LAYERS]


def plane_z(planes: list[tuple[int, int]]) -> np.ndarray:
    return np.array([STATION_PITCH_MM * s + LAYER_PITCH_MM * l for s, l in planes], dtype=np.float64)


def check_id(ident: str) -> None:
    if not re.fullmatch(r"[0-9]{1,3}", ident):
        raise ConstantsFormatError(f"id {ident!r}: expected 1-3 digits <station>[<layer>[<module>]]")
    station = int(ident[0])
    if station not in STATIONS_4:
        raise ConstantsFormatError(f"id {ident!r}: station {station} is not one of 0-3")
    if len(ident) >= 2 and int(ident[1]) not in LAYERS:
        raise ConstantsFormatError(f"id {ident!r}: layer {ident[1]} is not one of 0-2")
    if len(ident) == 3 and int(ident[2]) not in MODULES:
        raise ConstantsFormatError(f"id {ident!r}: module {ident[2]} is not one of 0-7")


def parse_constants(text: str, where: str = "inputforalign.txt") -> Constants:
    """Parse the group's constants text (the body of ``AlignDbTool.AlignmentConstants={...}``)."""
    body = text.strip()
    if not body:
        return {}
    if body.endswith(","):
        body = body[:-1]

    def no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
        seen: dict[str, object] = {}
        for key, value in pairs:
            if key in seen:
                raise ConstantsFormatError(f"{where}: id {key!r} appears twice")
            seen[key] = value
        return seen

    try:
        raw = json.loads("{" + body + "}", object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as exc:
        raise ConstantsFormatError(
            f'{where}: not a comma-separated list of "<id>": [dx, dy, dz, rx, ry, rz] entries ({exc})') from None
    out: Constants = {}
    for ident, values in raw.items():
        try:
            check_id(ident)
        except ConstantsFormatError as exc:
            raise ConstantsFormatError(f"{where}: {exc}") from None
        if not (isinstance(values, list) and len(values) == 6
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
            raise ConstantsFormatError(f"{where}: id {ident!r}: expected a list of 6 numbers [dx, dy, dz, rx, ry, rz]")
        floats = [float(v) for v in values]
        if not all(math.isfinite(v) for v in floats):
            raise ConstantsFormatError(f"{where}: id {ident!r}: non-finite value")
        out[ident] = floats
    return out


def format_constants(constants: Constants) -> str:
    """One entry per line, comma-separated, floats in full precision (repr)."""
    def order(ident: str) -> tuple[int, str]:
        return (len(ident), ident)

    lines = ['"%s": [%s]' % (i, ", ".join(repr(float(v)) for v in constants[i])) for i in sorted(constants, key=order)]
    return ",\n".join(lines) + "\n"


def zero_constants(stations: Iterable[int]) -> Constants:
    return {f"{s}{l}": [0.0] * 6 for s, l in planes_of(stations)}


def plane_constants(constants: Constants, planes: list[tuple[int, int]]) -> np.ndarray:
    """(P, 3) effective [dx, dy, rz] of each plane (station + layer + mean of modules)."""
    out = np.zeros((len(planes), 3), dtype=np.float64)
    for p, (s, l) in enumerate(planes):
        total = np.zeros(6)
        total += np.asarray(constants.get(f"{s}", [0.0] * 6))
        total += np.asarray(constants.get(f"{s}{l}", [0.0] * 6))
        total += sum((np.asarray(constants.get(f"{s}{l}{m}", [0.0] * 6)) for m in MODULES), np.zeros(6)) / len(MODULES)
        out[p] = total[[0, 1, 5]]
    return out


def labels_of(planes: list[tuple[int, int]]) -> list[int]:
    return [100 * s + 10 * l + dof for s, l in planes for dof in ALIGNED_DOFS]


def add_corrections(constants: Constants, corrections: dict[int, float]) -> Constants:
    """Old constants + pede corrections (per label) on the layer-level entries."""
    out = {k: list(v) for k, v in constants.items()}
    for label, value in corrections.items():
        s, l, dof = label // 100, (label // 10) % 10, label % 10
        entry = out.setdefault(f"{s}{l}", [0.0] * 6)
        entry[DOF_INDEX[dof]] += value
    return out


# ---------------------------------------------------------------------------- truth and raw files

def _remove_modes(values: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Remove the constant and the part linear in z (weak modes a track fit cannot see)."""
    basis = np.stack([np.ones_like(z), z - z.mean()], axis=1)
    coef, *_ = np.linalg.lstsq(basis, values, rcond=None)
    return values - basis @ coef


def hidden_truth() -> np.ndarray:
    """(12, 3) true [dx mm, dy mm, rz rad] of the 4-station planes (station-major order).

    The weak modes are removed separately on the IFT (station 0) and on stations 1-3, so
    the truth lies in the constrained space of both the 3- and the 4-station alignment.
    """
    planes = planes_of(STATIONS_4)
    z = plane_z(planes)
    rng = np.random.default_rng(TRUTH_SEED)
    truth = np.stack([rng.normal(0, 0.1, 12), rng.normal(0, 0.1, 12), rng.normal(0, 1e-3, 12)], axis=1)
    ift = np.arange(3)
    main = np.arange(3, 12)
    for group in (ift, main):
        for dof in range(3):
            truth[group, dof] = _remove_modes(truth[group, dof], z[group])
    return truth


def truth_for(stations: Iterable[int]) -> np.ndarray:
    planes = planes_of(stations)
    index = {p: i for i, p in enumerate(planes_of(STATIONS_4))}
    return hidden_truth()[[index[p] for p in planes]]


def rotate(xy: np.ndarray, angle: np.ndarray) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([c * xy[..., 0] - s * xy[..., 1], s * xy[..., 0] + c * xy[..., 1]], axis=-1)


def make_raw_bytes(year: int, run: int, file: int, tracks: int = 400) -> bytes:
    """Synthetic hits of one raw file: what the misaligned sensors read (npz bytes)."""
    planes = planes_of(STATIONS_4)
    z = plane_z(planes)
    truth = hidden_truth()
    rng = np.random.default_rng(np.random.SeedSequence([0xFA5E, year, run, file]))
    x0 = rng.uniform(-60, 60, tracks)
    y0 = rng.uniform(-60, 60, tracks)
    tx = rng.normal(0, 2e-3, tracks)
    ty = rng.normal(0, 2e-3, tracks)
    glob = np.stack([x0[:, None] + tx[:, None] * z[None, :], y0[:, None] + ty[:, None] * z[None, :]], axis=-1)
    local = rotate(glob - truth[None, :, :2], -truth[None, :, 2])
    local = local + rng.normal(0, HIT_SIGMA_MM, local.shape)
    buf = io.BytesIO()
    np.savez(buf, year=year, run=run, raw_file=file, planes=np.array(planes), z=z, local=local, sigma=HIT_SIGMA_MM)
    return buf.getvalue()


# ---------------------------------------------------------------------------- reconstruction

def line_fit_residuals(hits: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Residuals of straight-line fits x(z), y(z) per track. hits (T, P, 2) -> (T, P, 2)."""
    design = np.stack([np.ones_like(z), z], axis=1)  # (P, 2)
    proj = design @ np.linalg.solve(design.T @ design, design.T)  # (P, P) hat matrix
    fitted = np.einsum("pq,tqk->tpk", proj, hits)
    return hits - fitted


def reconstruct(local: np.ndarray, applied: np.ndarray) -> np.ndarray:
    """Global hit positions from sensor readings with the applied plane constants (P, 3)."""
    return rotate(local, applied[None, :, 2]) + applied[None, :, :2]
