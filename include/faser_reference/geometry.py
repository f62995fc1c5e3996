"""Toy FASER tracker: plane layout, true misalignments and the global modes.

Units: lengths in mm, angles of the *alignment parameters* in mrad, track
slopes in rad. Global frame: z along the beam, x/y transverse, origin on the
beam axis.

Layout
------
Stations 1, 2, 3 (3-station mode, the default, FASER's ``--noIFT``) or
0, 1, 2, 3 (4-station mode, ``fourst=True``: station 0 stands for the
interface tracker IFT). Station ``s`` is centred at ``z = STATION_PITCH * s``
(1 m apart); each station has 3 layers at ``LAYER_OFFSETS`` = -50, 0, +50 mm
from its centre. So 9 planes (3 stations) or 12 planes (4 stations), ordered
by (station, layer) = by z.

Each plane measures the hit position (u, v) in its local frame with Gaussian
resolution ``SIGMA`` = 0.030 mm in both coordinates. The local frame of plane
p with misalignment (dx, dy, drz) is the global transverse frame translated by
(dx, dy) and rotated by drz about the z axis (the beam axis, which is the
nominal plane centre)::

    (u, v) = R(-drz) [(x, y) - (dx, dy)],   R(a) = [[cos a, -sin a], [sin a, cos a]]

and conversely a local measurement m maps to the global point
``R(drz) m + (dx, dy)``. Alignment constants use the same parametrisation: the
reconstruction places hits with the constants, the truth places them with the
true misalignment.

Alignment parameters and labels
-------------------------------
Per plane three parameters: ``dx`` [mm], ``dy`` [mm], ``drz`` [mrad]. The
pede-style label of a parameter is ``100*station + 10*layer + dof`` with
``dof`` = 1 (dx), 2 (dy), 6 (drz) (ATLAS/FASER DoF numbering x, y, z, rx, ry,
rz = 1..6); e.g. 326 = station 3, layer 2, rotation about z.

Global modes
------------
Straight tracks cannot see (exactly or to first order) six global
deformations of the tracker; per parameter kind k in {dx, dy, drz} the two
modes ``const`` and ``linear in z``:

* dx, dy constant: overall translation (absorbed by the track intercepts);
* dx, dy linear in z: shear (absorbed by the track slopes);
* drz constant: overall rotation about the beam axis;
* drz linear in z: twist (visible only through the tiny track slopes).

:func:`remove_global_modes` projects them out (per column, subtract the
least-squares fit ``a + b*z``). The truth is generated with them removed, and
the Millepede job fixes them with the linear constraints of
:func:`constraint_matrix` (sum of corrections and z-weighted sum of
corrections zero per kind), so the truth is recoverable.

True misalignment
-----------------
:func:`true_misalignment` draws, with ``numpy.random.default_rng(TRUTH_SEED)``
(``TRUTH_SEED`` = 20231705, the same for every job), for all 12 planes of the
4-station layout: ``|dx|, |dy|`` uniform in [0.1, 0.5] mm and ``|drz|``
uniform in [0.5, 2.0] mrad, each with a random sign; then keeps the planes of
the requested layout and removes the global modes over those planes (so the
values after removal are of that size but not bounded by those ranges).

This module uses only numpy (>= 1.24) and the standard library.
"""

import numpy as np

#: Hit resolution of every plane, both local coordinates [mm].
SIGMA = 0.030
#: Distance between station centres [mm]; station s sits at z = STATION_PITCH * s.
STATION_PITCH = 1000.0
#: Layer z offsets within a station [mm].
LAYER_OFFSETS = (-50.0, 0.0, 50.0)
#: Stations of the two modes.
STATIONS_3 = (1, 2, 3)
STATIONS_4 = (0, 1, 2, 3)
#: Parameter kinds per plane, their units and pede DoF codes.
PARAM_NAMES = ("dx", "dy", "drz")
PARAM_UNITS = ("mm", "mm", "mrad")
DOF_CODES = (1, 2, 6)
#: mrad -> rad
MRAD = 1.0e-3

#: Seed of the injected misalignment (fixed: every job sees the same detector).
TRUTH_SEED = 20231705
TRUTH_DXY_RANGE = (0.1, 0.5)  # mm
TRUTH_DRZ_RANGE = (0.5, 2.0)  # mrad

#: Track generation (see reco.py): intercepts uniform in a disk of this
#: radius at z_ref [mm], slopes Gaussian with this width [rad].
TRACK_RADIUS = 100.0
TRACK_SLOPE_SIGMA = 2.0e-3

__all__ = [
    "SIGMA", "STATION_PITCH", "LAYER_OFFSETS", "PARAM_NAMES", "PARAM_UNITS", "DOF_CODES",
    "TRUTH_SEED", "Geometry", "make_label", "remove_global_modes", "constraint_matrix",
    "true_misalignment", "rms_modulo_global_modes",
]


def make_label(station, layer, dof):
    """Pede label ``100*station + 10*layer + dof`` (dof in 1, 2, 6)."""
    return 100 * int(station) + 10 * int(layer) + int(dof)


class Geometry(object):
    """The toy tracker of one mode (3 or 4 stations).

    Attributes: ``fourst`` (bool), ``stations`` (tuple), ``planes`` (list of
    (station, layer) in z order), ``n_planes``, ``station``/``layer`` (int
    arrays), ``z`` (float array [mm]), ``z_ref`` (mean plane z [mm], the
    reference of the track intercepts), ``labels`` (int array (P, 3)),
    ``sigma`` [mm].
    """

    def __init__(self, fourst=False):
        self.fourst = bool(fourst)
        self.stations = STATIONS_4 if self.fourst else STATIONS_3
        self.planes = [(s, l) for s in self.stations for l in range(len(LAYER_OFFSETS))]
        self.n_planes = len(self.planes)
        self.station = np.array([p[0] for p in self.planes], dtype=np.int64)
        self.layer = np.array([p[1] for p in self.planes], dtype=np.int64)
        self.z = np.array([STATION_PITCH * s + LAYER_OFFSETS[l] for s, l in self.planes], dtype=np.float64)
        self.z_ref = float(np.mean(self.z))
        self.labels = np.array(
            [[make_label(s, l, d) for d in DOF_CODES] for s, l in self.planes], dtype=np.int64
        )
        self.sigma = SIGMA

    @property
    def n_params(self):
        return 3 * self.n_planes

    def plane_index(self):
        """Dict (station, layer) -> plane index."""
        return {p: i for i, p in enumerate(self.planes)}

    def __repr__(self):
        return "Geometry(fourst=%r, n_planes=%d)" % (self.fourst, self.n_planes)


def _mode_design(z):
    """(P, 2) design matrix [1, (z - mean z)/1000] of the two modes per kind."""
    z = np.asarray(z, dtype=np.float64)
    return np.stack([np.ones_like(z), (z - z.mean()) / 1000.0], axis=1)


def remove_global_modes(params, z):
    """Return ``params`` (P, 3) with, per column, the LS fit ``a + b*z`` removed."""
    params = np.asarray(params, dtype=np.float64)
    design = _mode_design(z)
    coef, _, _, _ = np.linalg.lstsq(design, params, rcond=None)
    return params - design @ coef


def constraint_matrix(geom):
    """(6, 3P) matrix A of the global-mode constraints ``A @ delta = 0``.

    ``delta`` is the flattened (P, 3) parameter vector (plane-major: dx, dy,
    drz of plane 0, then plane 1, ...). Rows: for each kind (dx, dy, drz) the
    sum over planes and the sum weighted with (z - mean z)/1 m.
    """
    design = _mode_design(geom.z)  # (P, 2)
    P = geom.n_planes
    a = np.zeros((6, 3 * P), dtype=np.float64)
    for k in range(3):
        for m in range(2):
            a[2 * k + m, k::3] = design[:, m]
    return a


def true_misalignment(geom):
    """The injected misalignment (P, 3) [mm, mm, mrad] of ``geom``'s planes."""
    rng = np.random.default_rng(TRUTH_SEED)
    full = Geometry(fourst=True)
    n = full.n_planes
    dxy = rng.uniform(TRUTH_DXY_RANGE[0], TRUTH_DXY_RANGE[1], size=(n, 2))
    drz = rng.uniform(TRUTH_DRZ_RANGE[0], TRUTH_DRZ_RANGE[1], size=(n, 1))
    signs = rng.choice(np.array([-1.0, 1.0]), size=(n, 3))
    raw = np.concatenate([dxy, drz], axis=1) * signs
    idx = full.plane_index()
    sel = raw[[idx[p] for p in geom.planes]]
    return remove_global_modes(sel, geom.z)


def rms_modulo_global_modes(diff, z):
    """RMS of ``diff`` (P, 3) after removing the global modes.

    Returns ``(translation_rms_mm, rotation_rms_mrad)``: RMS over all dx and
    dy entries, and over all drz entries.
    """
    d = remove_global_modes(diff, z)
    t = float(np.sqrt(np.mean(d[:, :2] ** 2)))
    r = float(np.sqrt(np.mean(d[:, 2] ** 2)))
    return t, r
