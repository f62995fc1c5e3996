"""Real-space RG unit of the Chalker-Coddington (CC) network model.

The RG unit
-----------
Galstyan & Raikh, Phys. Rev. B 56, 1422 (1997) replace a block of the CC
network made of five saddle points (nodes) by a single "super" saddle point.
Saddle point ``i`` (i = 1..5) has a real transmission amplitude ``t_i`` and
reflection amplitude ``r_i = sqrt(1 - t_i**2)``. Four independent phases
``phi_1..phi_4``, uniform in [0, 2*pi), are picked up by the electron along
the four closed equipotential loops inside the block. Solving the
Kirchhoff-type scattering equations of the block gives the transmission
amplitude of the super saddle point (here in the notation of
Cain, Roemer & Raikh, Phys. Rev. B 67, 075307 (2003), Eq. (2), and
Shaw & Roemer, arXiv:2404.00660 (2024), Eq. (3))::

           | t1 t5 (r2 r3 r4 e^{i phi2} - 1)
           |   + t2 t4 e^{i(phi3 + phi4)} (r1 r3 r5 e^{-i phi1} - 1)
           |   + t3 (t2 t5 e^{i phi3} + t1 t4 e^{i phi4})
    t'  =  | -----------------------------------------------------------
           | (r3 - r2 r4 e^{i phi2}) (r3 - r1 r5 e^{i phi1})
           |   + (t3 - t4 t5 e^{i phi4}) (t3 - t1 t2 e^{i phi3})

(the absolute value of the ratio).  Saddle point 3 is the central one,
1, 2 / 4, 5 sit on the two sides of the block.

Properties used as checks (see tests/unit/test_rg_payload.py):

* unitarity: 0 <= t' <= 1 for all inputs;
* all t_i = 1 gives t' = 1, all t_i = 0 gives t' = 0;
* with t3 = 0 and t2 = t4 = 0 (r3 = r2 = r4 = 1) the unit reduces to two
  saddle points 1 and 5 in series with one loop (Fabry-Perot):
  t' = t1 t5 / |1 - r1 r5 e^{i phi1}|; analogously for 2 and 4 with phi2;
* t <-> r duality: the unit is self-dual under a 90 degree rotation, so for
  i.i.d. inputs t'(r_1..r_5) is distributed as r'(t_1..t_5) =
  sqrt(1 - t'(t_1..t_5)**2).  In the variable z = ln(1/t^2 - 1) this is
  z -> -z, which is why the critical fixed-point distribution P_c(z) is
  symmetric about z = 0.

Variables
---------
z = ln(1/t^2 - 1) = ln(r^2 / t^2),   t = 1/sqrt(1 + e^z),   r = 1/sqrt(1 + e^-z).

This module uses only numpy (>= 1.24 APIs) and the standard library.
"""

import math
import zipfile

import numpy as np

__all__ = [
    "Z_CLIP",
    "rg_transform",
    "draw_phases",
    "rg_step",
    "t_to_z",
    "z_to_t",
    "z_to_tr",
    "initial_z",
    "validate_hist",
    "load_hist",
    "sample_z_from_hist",
    "sample_t_from_hist",
    "hist_distance",
]

#: |z| is clipped to this value. For t -> 1 the reflection 1 - t^2 underflows
#: double precision near z ~ -36.7, so +-35 keeps both tails representable
#: and symmetric.
Z_CLIP = 35.0

TWO_PI = 2.0 * math.pi


# ---------------------------------------------------------------------------
# The RG transformation
# ---------------------------------------------------------------------------
def rg_transform(t, phi, r=None, clip=True):
    """Apply the CC RG unit to N independent sets of 5 saddle points.

    Parameters
    ----------
    t : array_like, shape (5, N)
        Transmission amplitudes t_1..t_5 (rows) in [0, 1].
    phi : array_like, shape (4, N)
        Phases phi_1..phi_4 (rows), normally uniform in [0, 2*pi).
    r : array_like, shape (5, N), optional
        Reflection amplitudes. Default ``sqrt(1 - t**2)``; pass them when they
        are known more accurately (e.g. from z, see :func:`z_to_tr`).
    clip : bool
        Clip the result to [0, 1] (removes round-off only; unitarity
        guarantees |t'| <= 1). ``False`` returns the raw ratio (for checks).

    Returns
    -------
    numpy.ndarray, shape (N,)
        t' in [0, 1] (the formula in the module docstring). The measure-zero
        case of a vanishing denominator returns 0.
    """
    t = np.asarray(t, dtype=np.float64)
    phi = np.asarray(phi, dtype=np.float64)
    if t.ndim != 2 or t.shape[0] != 5:
        raise ValueError("t must have shape (5, N), got %r" % (t.shape,))
    if phi.ndim != 2 or phi.shape[0] != 4 or phi.shape[1] != t.shape[1]:
        raise ValueError("phi must have shape (4, N) matching t, got %r" % (phi.shape,))
    if r is None:
        r = np.sqrt(np.clip(1.0 - t * t, 0.0, 1.0))
    else:
        r = np.asarray(r, dtype=np.float64)
        if r.shape != t.shape:
            raise ValueError("r must have the same shape as t")

    t1, t2, t3, t4, t5 = t
    r1, r2, r3, r4, r5 = r
    e1, e2, e3, e4 = np.exp(1j * phi)

    num = (
        t1 * t5 * (r2 * r3 * r4 * e2 - 1.0)
        + t2 * t4 * e3 * e4 * (r1 * r3 * r5 * np.conj(e1) - 1.0)
        + t3 * (t2 * t5 * e3 + t1 * t4 * e4)
    )
    den = (r3 - r2 * r4 * e2) * (r3 - r1 * r5 * e1) + (t3 - t4 * t5 * e4) * (t3 - t1 * t2 * e3)

    num_abs = np.abs(num)
    den_abs = np.abs(den)
    out = np.zeros_like(num_abs)
    np.divide(num_abs, den_abs, out=out, where=den_abs > 0.0)
    # |t'| <= 1 exactly; clip round-off only.
    return np.clip(out, 0.0, 1.0) if clip else out


def draw_phases(rng, n):
    """Four independent phases per sample, uniform in [0, 2*pi); shape (4, n)."""
    return rng.random((4, n)) * TWO_PI


def rg_step(t, rng, r=None):
    """Draw random phases with ``rng`` and apply :func:`rg_transform`."""
    t = np.asarray(t, dtype=np.float64)
    return rg_transform(t, draw_phases(rng, t.shape[1]), r=r)


# ---------------------------------------------------------------------------
# t <-> z
# ---------------------------------------------------------------------------
def t_to_z(t, zclip=Z_CLIP):
    """z = ln(1/t^2 - 1) = ln(1 - t^2) - ln(t^2), clipped to [-zclip, zclip].

    t = 0 maps to +zclip and t = 1 to -zclip (no infinities or NaNs).
    """
    t = np.asarray(t, dtype=np.float64)
    g = np.clip(t * t, 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.log1p(-g) - np.log(g)
    z = np.where(np.isnan(z), 0.0, z)  # cannot happen for g in [0, 1]; be safe
    return np.clip(z, -zclip, zclip)


def z_to_tr(z, zclip=Z_CLIP):
    """Return (t, r) = (1/sqrt(1+e^z), 1/sqrt(1+e^-z)), z clipped to +-zclip.

    Both amplitudes are computed directly from z, so r stays accurate when
    t -> 1 (z very negative) and vice versa.
    """
    z = np.clip(np.asarray(z, dtype=np.float64), -zclip, zclip)
    t = 1.0 / np.sqrt(1.0 + np.exp(z))
    r = 1.0 / np.sqrt(1.0 + np.exp(-z))
    return t, r


def z_to_t(z, zclip=Z_CLIP):
    """t = 1/sqrt(1 + e^z), with z clipped to +-zclip."""
    return z_to_tr(z, zclip)[0]


# ---------------------------------------------------------------------------
# Initial distribution and histogram sampling
# ---------------------------------------------------------------------------
INITIAL_KINDS = ("uniform_g", "uniform_t")


def initial_z(n, rng, kind="uniform_g"):
    """Draw n values of z from the initial (step-0) distribution.

    ``uniform_g`` (default): the conductance G = t^2 is uniform in (0, 1), so
    z = ln(1/G - 1) follows the standard logistic distribution, which is
    symmetric about 0 (mean 0, std pi/sqrt(3) ~ 1.81) -- a natural, broad
    start for a fixed-point (FP) run.
    ``uniform_t``: t uniform in (0, 1) (z not symmetric: median ln 3).
    """
    u = rng.random(n)
    if kind == "uniform_g":
        g = 1.0 - u  # in (0, 1]
        with np.errstate(divide="ignore"):
            z = np.log1p(-g) - np.log(g)
        return np.clip(z, -Z_CLIP, Z_CLIP)
    if kind == "uniform_t":
        return t_to_z(1.0 - u)
    raise ValueError("unknown initial distribution %r (choose from %s)" % (kind, ", ".join(INITIAL_KINDS)))


def validate_hist(histval, binedges):
    """Validate a (density, edges) histogram and return them as float arrays.

    Raises ValueError with a readable message on any problem.
    """
    h = np.asarray(histval, dtype=np.float64)
    e = np.asarray(binedges, dtype=np.float64)
    if h.ndim != 1 or e.ndim != 1:
        raise ValueError("histval and binedges must be 1-D arrays")
    if h.size < 1 or e.size != h.size + 1:
        raise ValueError(
            "binedges must have len(histval)+1 entries (got %d edges, %d values)" % (e.size, h.size)
        )
    if not (np.all(np.isfinite(h)) and np.all(np.isfinite(e))):
        raise ValueError("histogram contains non-finite values")
    if np.any(np.diff(e) <= 0.0):
        raise ValueError("binedges must be strictly increasing")
    if np.any(h < 0.0):
        raise ValueError("histval (density) must be non-negative")
    if not np.sum(h * np.diff(e)) > 0.0:
        raise ValueError("histogram has zero total mass")
    return h, e


def load_hist(path):
    """Load an ``.npz`` with keys ``histval`` (density) and ``binedges``.

    Raises ValueError (naming the file) if it is missing, unreadable, not an
    ``.npz`` archive, lacks a key or holds an invalid histogram.
    """
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        raise ValueError("cannot read histogram %s: %s" % (path, exc)) from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError("%s is not an .npz archive (keys histval, binedges expected)" % (path,))
    try:
        missing = [k for k in ("histval", "binedges") if k not in data.files]
        if missing:
            raise ValueError("%s: missing key(s) %s" % (path, ", ".join(missing)))
        h, e = data["histval"], data["binedges"]
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError("cannot read histogram %s: %s" % (path, exc)) from None
    finally:
        data.close()
    try:
        return validate_hist(h, e)
    except ValueError as exc:
        raise ValueError("%s: %s" % (path, exc)) from None


def sample_z_from_hist(histval, binedges, n, rng):
    """Draw n values of z from a piecewise-constant density (inverse CDF).

    The bin is chosen with probability proportional to its mass
    (density * width); the value is uniform inside the bin. Empty bins are
    never selected.
    """
    h, e = validate_hist(histval, binedges)
    mass = h * np.diff(e)
    cdf = np.concatenate(([0.0], np.cumsum(mass)))
    cdf /= cdf[-1]
    u = rng.random(n)
    idx = np.searchsorted(cdf, u, side="right") - 1
    idx = np.clip(idx, 0, h.size - 1)
    # u in [cdf[idx], cdf[idx+1]) and that bin has positive mass
    width_cdf = cdf[idx + 1] - cdf[idx]
    frac = np.zeros_like(u)
    np.divide(u - cdf[idx], width_cdf, out=frac, where=width_cdf > 0.0)
    frac = np.clip(frac, 0.0, 1.0)
    return e[idx] + frac * (e[idx + 1] - e[idx])


def sample_t_from_hist(histval, binedges, n, rng, shift=0.0):
    """Draw n (t, r) pairs from a z histogram, after z -> z + shift."""
    z = sample_z_from_hist(histval, binedges, n, rng) + float(shift)
    return z_to_tr(z)


# ---------------------------------------------------------------------------
# Distance between two z densities
# ---------------------------------------------------------------------------
def _as_hist(obj):
    if isinstance(obj, (str, bytes)) or hasattr(obj, "__fspath__"):
        return load_hist(obj)
    if isinstance(obj, tuple) and len(obj) == 2:
        return validate_hist(obj[0], obj[1])
    return validate_hist(obj["histval"], obj["binedges"])


def hist_distance(a_npz, b_npz):
    """L1 distance  int |P_a(z) - P_b(z)| dz  between two z densities.

    ``a_npz`` / ``b_npz``: path to an ``.npz`` (keys ``histval``,
    ``binedges``), a mapping with those keys (e.g. an open ``np.load``
    result) or a ``(histval, binedges)`` tuple.

    Each density is normalised to unit mass and treated as piecewise constant
    (zero outside its edges). The integral is evaluated exactly on the union
    of both edge sets ("common bins"), so histograms with different binnings
    can be compared. Result in [0, 2]; 0 for identical densities.
    """
    ha, ea = _as_hist(a_npz)
    hb, eb = _as_hist(b_npz)
    ha = ha / np.sum(ha * np.diff(ea))
    hb = hb / np.sum(hb * np.diff(eb))
    if ea.size == eb.size and np.array_equal(ea, eb):
        return float(np.sum(np.abs(ha - hb) * np.diff(ea)))
    edges = np.union1d(ea, eb)
    mids = 0.5 * (edges[:-1] + edges[1:])
    widths = np.diff(edges)

    def density_at(h, e, x):
        i = np.searchsorted(e, x, side="right") - 1
        inside = (i >= 0) & (i < h.size)
        out = np.zeros_like(x)
        out[inside] = h[i[inside]]
        return out

    fa = density_at(ha, ea, mids)
    fb = density_at(hb, eb, mids)
    return float(np.sum(np.abs(fa - fb) * widths))
