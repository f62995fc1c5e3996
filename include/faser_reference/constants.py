"""Alignment-constant files and atomic writes.

``inputforalign.txt`` (alignment constants, input of the reconstruction)
------------------------------------------------------------------------
Plain text, one line per plane::

    # faser_reference alignment constants: station layer dx[mm] dy[mm] drz[mrad]
    1 0 0.30118140612468957 -0.11749016262591873 1.0832205870000912
    1 1 ...

* fields: ``station layer dx dy drz`` separated by blanks; station and layer
  are integers, dx and dy in mm, drz (rotation about the beam axis) in mrad,
  written with ``repr(float)`` (shortest string that round-trips the float64
  exactly, "full precision");
* lines starting with ``#`` and blank lines are ignored;
* an EMPTY file (or one with only comments), or no file at all, means all
  constants zero: the first iteration (FASER's workflow ``touch``-es an empty
  ``inputforalign.txt`` for iteration 1);
* a plane of the geometry that has no line gets zero constants; a line for a
  plane that is not in the geometry (e.g. station 0 in 3-station mode), a
  duplicate plane, a malformed or non-finite number are errors
  (:class:`ConstantsError`).

The writer (:func:`write_constants`) writes every plane of the geometry in
(station, layer) order.

``millepede.res`` (pede's result file)
--------------------------------------
::

     Parameter   ! first 3 elements per line are significant (if used as input)
           101   1.2345678901e-02  0.00000e+00  2.34567e-04
           ...

One line per global parameter after the header: the pede label
(``100*station + 10*layer + dof``, dof 1 = dx, 2 = dy, 6 = drz; see
geometry.py), the solution (the CORRECTION of this iteration, mm or mrad), the
pre-sigma (0.0 = free parameter, as pede writes it) and the error of the
correction (sqrt of the diagonal of the constrained covariance, mm or mrad).

Atomic writes
-------------
Every output file is written under a temporary name ``.<name>.tmp.<pid>`` in
the destination directory, flushed and fsync-ed, then moved in place with
``os.replace``; on failure the temporary file is removed.

This module uses only numpy (>= 1.24) and the standard library.
"""

import math
import os

import numpy as np

CONSTANTS_HEADER = "# faser_reference alignment constants: station layer dx[mm] dy[mm] drz[mrad]"
RES_HEADER = " Parameter   ! first 3 elements per line are significant (if used as input)"

__all__ = [
    "ConstantsError", "read_constants", "format_constants", "write_constants",
    "format_res", "read_res", "atomic_write", "write_tmp", "remove_if_exists", "tmp_name",
]


class ConstantsError(ValueError):
    """A malformed or inconsistent constants / result file."""


def read_constants(path, geom):
    """Read ``inputforalign.txt`` for ``geom``.

    Returns ``(constants, source)``: constants is a float64 array (P, 3)
    [dx mm, dy mm, drz mrad] in geometry plane order; source is ``"none"``
    (path is None), ``"missing"`` (no such file), ``"empty"`` (no data lines)
    or ``"file"``. Raises :class:`ConstantsError` on bad content.
    """
    out = np.zeros((geom.n_planes, 3), dtype=np.float64)
    if path is None:
        return out, "none"
    try:
        with open(path, "r") as f:
            text = f.read()
    except FileNotFoundError:
        return out, "missing"
    index = geom.plane_index()
    seen = set()
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        where = "%s:%d" % (path, lineno)
        if len(fields) != 5:
            raise ConstantsError("%s: expected 5 fields 'station layer dx dy drz', got %d" % (where, len(fields)))
        try:
            station, layer = int(fields[0]), int(fields[1])
            vals = [float(v) for v in fields[2:]]
        except ValueError:
            raise ConstantsError("%s: cannot parse %r" % (where, line)) from None
        if not all(math.isfinite(v) for v in vals):
            raise ConstantsError("%s: non-finite value in %r" % (where, line))
        key = (station, layer)
        if key not in index:
            raise ConstantsError(
                "%s: plane station %d layer %d is not in the %d-station geometry"
                % (where, station, layer, len(geom.stations))
            )
        if key in seen:
            raise ConstantsError("%s: duplicate plane station %d layer %d" % (where, station, layer))
        seen.add(key)
        out[index[key]] = vals
    return out, ("file" if seen else "empty")


def format_constants(geom, constants):
    """Text of ``inputforalign.txt`` for constants (P, 3)."""
    constants = np.asarray(constants, dtype=np.float64)
    if constants.shape != (geom.n_planes, 3):
        raise ValueError("constants must have shape (%d, 3), got %r" % (geom.n_planes, constants.shape))
    lines = [CONSTANTS_HEADER]
    for (s, l), row in zip(geom.planes, constants):
        lines.append("%d %d %s %s %s" % (s, l, repr(float(row[0])), repr(float(row[1])), repr(float(row[2]))))
    return "\n".join(lines) + "\n"


def write_constants(path, geom, constants):
    """Atomically write ``inputforalign.txt``."""
    text = format_constants(geom, constants)
    atomic_write(path, lambda f: f.write(text.encode("ascii")))


def format_res(geom, corrections, errors):
    """Text of ``millepede.res`` (corrections and errors (P, 3))."""
    corrections = np.asarray(corrections, dtype=np.float64)
    errors = np.asarray(errors, dtype=np.float64)
    lines = [RES_HEADER]
    for lab_row, c_row, e_row in zip(geom.labels, corrections, errors):
        for lab, c, e in zip(lab_row, c_row, e_row):
            lines.append("%10d %18.10e %12.5e %12.5e" % (int(lab), float(c), 0.0, float(e)))
    return "\n".join(lines) + "\n"


def read_res(path):
    """Parse ``millepede.res``: dict label -> (solution, presigma, error or None)."""
    out = {}
    with open(path, "r") as f:
        lines = f.read().splitlines()
    if not lines or not lines[0].strip().startswith("Parameter"):
        raise ConstantsError("%s: missing 'Parameter' header line" % path)
    for lineno, raw in enumerate(lines[1:], 2):
        fields = raw.split()
        if not fields:
            continue
        try:
            lab = int(fields[0])
            vals = [float(v) for v in fields[1:]]
        except ValueError:
            raise ConstantsError("%s:%d: cannot parse %r" % (path, lineno, raw)) from None
        if len(vals) < 2:
            raise ConstantsError("%s:%d: expected label, solution, presigma[, ...]" % (path, lineno))
        out[lab] = (vals[0], vals[1], vals[3] if len(vals) > 3 else (vals[2] if len(vals) == 3 else None))
    return out


# ---------------------------------------------------------------------------
# atomic writes
# ---------------------------------------------------------------------------
def tmp_name(final_path):
    d, base = os.path.split(final_path)
    return os.path.join(d, ".%s.tmp.%d" % (base, os.getpid()))


def remove_if_exists(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def write_tmp(final_path, write_fn):
    """Write via ``write_fn(binary file)`` to the temp name of ``final_path``; return it.

    The temp file is fsync-ed; on failure it is removed and the error re-raised.
    """
    tmp = tmp_name(final_path)
    try:
        with open(tmp, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        remove_if_exists(tmp)
        raise
    return tmp


def atomic_write(final_path, write_fn):
    """Write ``final_path`` atomically (temp name in the same directory + os.replace)."""
    tmp = write_tmp(final_path, write_fn)
    try:
        os.replace(tmp, final_path)
    except BaseException:
        remove_if_exists(tmp)
        raise
