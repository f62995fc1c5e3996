#!/usr/bin/env python3
"""Stand-in of the group's ``millepede/bin/millepede.py`` (one Millepede step per iteration).

Contract checked (issue 12; exit 64 naming the difference):

    python3 <SRC_DIR>/millepede/bin/millepede.py -i <KFALIGN_DIR>

* ``KFALIGN_DIR`` holds ``kfalignment_<RUN 6>_<FILE 5>.root`` files of one run, all
  reconstructed on the same planes with the same constants;
* the iteration's ``<KFALIGN_DIR>/../1reco/inputforalign.txt`` exists, parses, and is what
  every reconstruction applied (else: "constants of this iteration are not the ones
  reconstruction applied");
* ``pede`` is on PATH (runMillepede.sh puts ENV_PEDE there) and ``ROOTSYS`` is set (ENV_ROOT
  was sourced).

Works in ``<KFALIGN_DIR>/../3millepede/``: writes the Mille data (``mp2data.npz``, the
normal equations with the track parameters eliminated) and the steering file ``mp2str.txt``,
runs ``pede mp2str.txt`` there (its stdout goes to ``millepede.out``; pede writes
``millepede.res`` with a chi2 line, ``millepede.his``, ``millepede.log``), then writes
``<KFALIGN_DIR>/../inputforalign.txt`` = old constants + pede's corrections.
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import os
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import faser_toy as toy  # noqa: E402
from standin_calls import contract_error, log_call  # noqa: E402

PROGRAM = "millepede.py"
KF_NAME = re.compile(r"^kfalignment_([0-9]{6})_([0-9]{5})\.root$")


class ContractParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        contract_error(PROGRAM, f"arguments: {message} (expected -i <KFALIGN_DIR>)")


def read_res(path: str) -> tuple[dict[int, float], str]:
    corrections: dict[int, float] = {}
    chi2_line = ""
    with open(path) as f:
        lines = f.read().splitlines()
    if not lines or not lines[0].strip().startswith("Parameter"):
        contract_error(PROGRAM, f"{path}: no 'Parameter' header (pede did not write a result)")
    for line in lines[1:]:
        if line.lstrip().startswith("!"):
            chi2_line = line.strip()
            continue
        fields = line.split()
        if fields:
            corrections[int(fields[0])] = float(fields[1])
    return corrections, chi2_line


def main() -> int:
    parser = ContractParser(prog=PROGRAM, add_help=False)
    parser.add_argument("-i", dest="kfalign_dir", required=True)
    args = parser.parse_args()
    kf_dir = os.path.abspath(args.kfalign_dir)
    if not os.path.isdir(kf_dir):
        contract_error(PROGRAM, f"-i {kf_dir}: not a directory")
    iter_dir = os.path.dirname(kf_dir)
    constants_in = os.path.join(iter_dir, "1reco", "inputforalign.txt")
    if not os.path.isfile(constants_in):
        contract_error(PROGRAM, f"{constants_in} missing: the iteration's 1reco/inputforalign.txt "
                                "(next to -i's parent) holds the constants reconstruction applied")
    if shutil.which("pede") is None:
        contract_error(PROGRAM, "pede not on PATH (runMillepede.sh must put ENV_PEDE on PATH)")
    if not os.environ.get("ROOTSYS"):
        contract_error(PROGRAM, "ROOTSYS not set (runMillepede.sh must source ENV_ROOT)")
    try:
        with open(constants_in) as f:
            old = toy.parse_constants(f.read(), where=constants_in)
    except toy.ConstantsFormatError as exc:
        contract_error(PROGRAM, str(exc))

    names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(kf_dir, "kfalignment_*.root")))
    if not names:
        contract_error(PROGRAM, f"no kfalignment_*.root in {kf_dir}")
    bad = [n for n in names if not KF_NAME.match(n)]
    if bad:
        contract_error(PROGRAM, f"{kf_dir}: {bad[0]}: expected kfalignment_<RUN 6 digits>_<FILE 5 digits>.root")
    runs = {KF_NAME.match(n).group(1) for n in names}
    if len(runs) != 1:
        contract_error(PROGRAM, f"{kf_dir}: files of several runs {sorted(runs)}")

    planes: list[tuple[int, int]] | None = None
    blocks = []
    for name in names:
        with np.load(os.path.join(kf_dir, name), allow_pickle=False) as d:
            p = [tuple(int(v) for v in row) for row in d["planes"]]
            applied = json.loads(str(d["applied_json"]))
            if planes is None:
                planes = p
            elif p != planes:
                contract_error(PROGRAM, f"{name}: reconstructed on other planes than the other files "
                                        "(3- and 4-station outputs mixed in one iteration)")
            if not np.allclose(toy.plane_constants(applied, p), toy.plane_constants(old, p), rtol=0, atol=1e-12):
                contract_error(PROGRAM, f"{name}: the constants of this iteration ({constants_in}) are not the "
                                        "ones reconstruction applied")
            blocks.append((d["hits"].copy(), d["residual"].copy(), float(d["sigma"])))
    assert planes is not None
    z = toy.plane_z(planes)
    n_planes = len(planes)
    n_par = 3 * n_planes
    normal = np.zeros((n_par, n_par))
    rhs = np.zeros(n_par)
    chi2_before = 0.0
    n_meas = 0
    n_tracks = 0
    design = np.stack([np.ones_like(z), z], axis=1)
    proj = np.eye(n_planes) - design @ np.linalg.solve(design.T @ design, design.T)  # residual maker
    for hits, residual, sigma in blocks:
        w = 1.0 / sigma ** 2
        for t in range(hits.shape[0]):
            # derivatives of the reconstructed (x, y) of each plane w.r.t. (ddx, ddy, drz)
            g_x = np.zeros((n_planes, n_par))
            g_y = np.zeros((n_planes, n_par))
            idx = np.arange(n_planes)
            g_x[idx, 3 * idx] = 1.0
            g_x[idx, 3 * idx + 2] = -hits[t, :, 1]
            g_y[idx, 3 * idx + 1] = 1.0
            g_y[idx, 3 * idx + 2] = hits[t, :, 0]
            mg_x, mg_y = proj @ g_x, proj @ g_y
            normal += w * (g_x.T @ mg_x + g_y.T @ mg_y)
            rhs -= w * (mg_x.T @ residual[t, :, 0] + mg_y.T @ residual[t, :, 1])
            chi2_before += w * float(np.sum(residual[t] ** 2))
        n_meas += hits.shape[0] * n_planes * 2
        n_tracks += hits.shape[0]
    # weak modes: translation and shear in x and y, rotation and twist about z
    constraints = np.zeros((6, n_par))
    zc = z - z.mean()
    for k, dof in enumerate(range(3)):
        constraints[2 * k, dof::3] = 1.0
        constraints[2 * k + 1, dof::3] = zc
    ndf = n_meas - 4 * n_tracks - (n_par - constraints.shape[0])

    mp_dir = os.path.join(iter_dir, "3millepede")
    os.makedirs(mp_dir, exist_ok=True)
    for stale in ("millepede.res", "millepede.his", "millepede.log", "millepede.out"):
        try:
            os.remove(os.path.join(mp_dir, stale))
        except FileNotFoundError:
            pass
    buf = io.BytesIO()
    np.savez(buf, normal=normal, rhs=rhs, constraints=constraints, labels=np.array(toy.labels_of(planes)),
             chi2_before=chi2_before, ndf=ndf)
    with open(os.path.join(mp_dir, "mp2data.npz"), "wb") as f:
        f.write(buf.getvalue())
    with open(os.path.join(mp_dir, "mp2str.txt"), "w") as f:
        f.write("Cfiles\nmp2data.npz\n\n! weak modes fixed by 6 linear constraints stored with the data\n"
                "method inversion 1 0.001\nend\n")
    with open(os.path.join(mp_dir, "millepede.out"), "w") as out:
        rc = subprocess.run(["pede", "mp2str.txt"], cwd=mp_dir, stdout=out, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        contract_error(PROGRAM, f"pede exited {rc}; see {mp_dir}/millepede.out")
    corrections, chi2_line = read_res(os.path.join(mp_dir, "millepede.res"))
    new = toy.add_corrections(old, corrections)
    constants_out = os.path.join(iter_dir, "inputforalign.txt")
    tmp = constants_out + f".tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(toy.format_constants(new))
    os.replace(tmp, constants_out)
    log_call(PROGRAM, True, kfalign_dir=kf_dir, files=names, constants_in=old, constants_out=new, chi2=chi2_line)
    print(f"{PROGRAM}: {len(names)} files, {n_tracks} tracks; {chi2_line}; wrote {constants_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
