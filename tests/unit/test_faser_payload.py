"""Tests of the FASER reference alignment payload (batchsite.include.faser_reference).

Pure numpy/stdlib, a few seconds. The payload is imported as
``batchsite.include.faser_reference``; one test stages it as a package named
``faser_reference`` and runs ``python -m faser_reference.reco/millepede``
exactly as on the batch site (with this interpreter and, if present, Debian's
``/usr/bin/python3``). Run with ``-s`` to see the convergence table.
"""

import io
import json
import os
import shutil
import subprocess
import sys
from contextlib import redirect_stdout

import numpy as np
import pytest

from batchsite.include import faser_reference
from batchsite.include.faser_reference import constants as fc
from batchsite.include.faser_reference import geometry as fg
from batchsite.include.faser_reference import millepede as mp
from batchsite.include.faser_reference import reco

YEAR, RUN = 2023, 11705
FILES = (400, 401, 402, 403, 404, 405)


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def _reco(out, raw_file, constants=None, tracks=None, fourst=False):
    argv = ["--raw-file", str(raw_file), "--year", str(YEAR), "--run", "%06d" % RUN, "--out", str(out)]
    if constants is not None:
        argv += ["--constants", str(constants)]
    if tracks is not None:
        argv += ["--tracks", str(tracks)]
    if fourst:
        argv += ["--fourst"]
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = reco.main(argv)
    return rc, (json.loads(buf.getvalue()) if rc == 0 else None)


def _mille(in_dir, out, constants=None, fourst=False):
    argv = ["-i", str(in_dir), "--out", str(out)]
    if constants is not None:
        argv += ["--constants", str(constants)]
    if fourst:
        argv += ["--fourst"]
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = mp.main(argv)
    return rc, (json.loads(buf.getvalue()) if rc == 0 else None)


def _iterate(root, n_iter, files=FILES, tracks=None, fourst=False):
    """The campaign's loop: per iteration reco per file, then one millepede. Returns rows."""
    prev = None
    rows = []
    for it in range(1, n_iter + 1):
        d = root / ("iter%02d" % it)
        kf = d / "2kfalignment"
        summaries = []
        for f in files:
            rc, s = _reco(kf, f, constants=prev, tracks=tracks, fourst=fourst)
            assert rc == 0
            summaries.append(s)
        rc, doc = _mille(kf, d / "3millepede", constants=prev, fourst=fourst)
        assert rc == 0
        assert doc == json.loads((d / "3millepede" / "alignment.json").read_text())
        rows.append({
            "iteration": it,
            "mean_abs_residual_mm": float(np.mean([s["mean_abs_residual_mm"] for s in summaries])),
            "doc": doc,
        })
        prev = d / "3millepede" / "inputforalign.txt"
    return rows


def _no_temp_files(*dirs):
    for d in dirs:
        for name in os.listdir(str(d)):
            assert not name.startswith("."), "temporary file left behind: %s/%s" % (d, name)


# ---------------------------------------------------------------------------
# geometry
# ---------------------------------------------------------------------------
def test_geometry_layout_and_labels():
    g3, g4 = fg.Geometry(), fg.Geometry(fourst=True)
    assert g3.n_planes == 9 and g4.n_planes == 12
    assert g3.stations == (1, 2, 3) and g4.stations == (0, 1, 2, 3)
    assert np.all(np.diff(g3.z) > 0) and np.all(np.diff(g4.z) > 0)
    assert np.allclose(np.diff(g3.z)[:2], 50.0) and np.isclose(g3.z[3] - g3.z[0], 1000.0)
    assert g3.labels[0].tolist() == [101, 102, 106] and g3.labels[-1].tolist() == [321, 322, 326]
    assert g4.labels[0].tolist() == [1, 2, 6]
    assert len(set(g4.labels.ravel().tolist())) == 36


@pytest.mark.parametrize("fourst", [False, True])
def test_truth_is_fixed_and_free_of_global_modes(fourst):
    g = fg.Geometry(fourst=fourst)
    t1, t2 = fg.true_misalignment(g), fg.true_misalignment(g)
    assert np.array_equal(t1, t2)
    assert t1.shape == (g.n_planes, 3)
    # the global modes (translation, shear, rotation, twist) are removed
    assert np.allclose(fg.constraint_matrix(g) @ t1.ravel(), 0.0, atol=1e-12)
    assert np.allclose(fg.remove_global_modes(t1, g.z), t1, atol=1e-12)
    # sizes as documented (after the removal of the modes): ~0.1-0.5 mm, ~0.5-2 mrad
    assert 0.1 < np.sqrt(np.mean(t1[:, :2] ** 2)) < 0.5
    assert 0.5 < np.sqrt(np.mean(t1[:, 2] ** 2)) < 2.0
    assert np.max(np.abs(t1[:, :2])) < 1.0 and np.max(np.abs(t1[:, 2])) < 4.0


def test_global_modes_removed_by_projection():
    g = fg.Geometry()
    zc = (g.z - g.z.mean()) / 1000.0
    modes = np.stack([0.3 + 0.2 * zc, -0.1 + 0.05 * zc, 1.5 - 0.7 * zc], axis=1)
    assert np.allclose(fg.remove_global_modes(modes, g.z), 0.0, atol=1e-12)
    t, r = fg.rms_modulo_global_modes(modes, g.z)
    assert t < 1e-12 and r < 1e-12


# ---------------------------------------------------------------------------
# reconstruction
# ---------------------------------------------------------------------------
def test_derivatives_match_finite_differences():
    g = fg.Geometry()
    rng = np.random.default_rng(5)
    truth = fg.true_misalignment(g)
    hits, _ = reco.simulate_hits(g, truth, 20, rng)
    consts = 0.5 * truth + rng.normal(0.0, 0.05, truth.shape)
    tracks = reco.fit_tracks(g, hits, consts)
    res, dl, dg = reco.residuals_and_derivatives(g, hits, tracks, consts)
    for a in range(4):
        h = 1e-4 if a in (0, 2) else 1e-7
        tp = tracks.copy()
        tp[:, a] += h
        tm = tracks.copy()
        tm[:, a] -= h
        num = (reco.residuals_and_derivatives(g, hits, tp, consts)[0]
               - reco.residuals_and_derivatives(g, hits, tm, consts)[0]) / (2 * h)
        assert np.allclose(num, dl[..., a], atol=1e-6)
    for p in (0, 4, 8):
        for k in range(3):
            cp = consts.copy()
            cp[p, k] += 1e-4
            cm = consts.copy()
            cm[p, k] -= 1e-4
            num = (reco.residuals_and_derivatives(g, hits, tracks, cp)[0]
                   - reco.residuals_and_derivatives(g, hits, tracks, cm)[0]) / 2e-4
            assert np.allclose(num[:, p], dg[:, p, :, k], atol=1e-7)
            others = [q for q in range(g.n_planes) if q != p]
            assert np.allclose(num[:, others], 0.0, atol=1e-12)


def test_perfect_constants_give_pure_noise():
    g = fg.Geometry()
    truth = fg.true_misalignment(g)
    data = reco.reconstruct(g, YEAR, RUN, 1, 3000, truth)
    pull = data["residuals"] / data["sigma"]
    ndf = pull.size - 4 * 3000
    assert abs(np.sum(pull ** 2) / ndf - 1.0) < 0.03


def test_reco_deterministic_and_first_iteration_from_zero(tmp_path, capsys):
    rc, s1 = _reco(tmp_path / "a", 400)
    assert rc == 0
    rc, s2 = _reco(tmp_path / "b", 400)
    assert rc == 0
    rc, s3 = _reco(tmp_path / "c", 401)
    assert rc == 0
    empty = tmp_path / "inputforalign.txt"
    empty.write_text("")
    rc, s4 = _reco(tmp_path / "d", 400, constants=empty)
    assert rc == 0
    rc, s5 = _reco(tmp_path / "e", 400, constants=tmp_path / "does-not-exist.txt")
    assert rc == 0
    assert "does not exist" in capsys.readouterr().err
    assert (s1["constants_source"], s4["constants_source"], s5["constants_source"]) == ("none", "empty", "missing")
    assert s1["n_tracks"] == 2000 and s1["n_planes"] == 9 and s1["raw_file"] == 400 and s1["run"] == RUN
    assert s1["output"].endswith("kfalignment_00400.npz")
    # misaligned detector seen with zero constants: residuals far above the 30 um resolution
    assert s1["mean_abs_residual_mm"] > 0.1 and s1["chi2_ndf"] > 20
    files = {k: tmp_path / k / "kfalignment_00400.npz" for k in "abde"}
    with np.load(str(files["a"])) as a:
        ref = {k: a[k] for k in a.files}
    assert ref["residuals"].shape == (2000, 9, 2)
    assert ref["dlocal"].shape == (2000, 9, 2, 4) and ref["dglobal"].shape == (2000, 9, 2, 3)
    assert np.all(ref["constants"] == 0.0) and int(ref["raw_file"]) == 400 and int(ref["fourst"]) == 0
    for k in "bde":
        with np.load(str(files[k])) as b:
            assert set(b.files) == set(ref)
            for name in ref:
                assert np.array_equal(b[name], ref[name]), name
    with np.load(str(tmp_path / "c" / "kfalignment_00401.npz")) as c:
        assert not np.array_equal(c["residuals"], ref["residuals"])
    for k in "abcde":
        _no_temp_files(tmp_path / k)


def test_reco_bad_arguments_and_constants(tmp_path, capsys):
    with pytest.raises(SystemExit) as ei:
        reco.main(["--raw-file", "x", "--year", "2023", "--run", "1", "--out", str(tmp_path)])
    assert ei.value.code == 2 and "--raw-file" in capsys.readouterr().err
    bad = tmp_path / "bad.txt"
    bad.write_text("0 0 0.1 0.2 0.3\n")  # station 0 is not in the 3-station geometry
    rc, _ = _reco(tmp_path / "o", 1, constants=bad)
    assert rc == 2 and "not in the 3-station geometry" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    rc, _ = _reco(tmp_path / "o4", 1, constants=bad, tracks=10, fourst=True)
    assert rc == 0


def test_reco_write_failure_leaves_nothing(tmp_path, monkeypatch, capsys):
    out = tmp_path / "kf"
    rc, _ = _reco(out, 3, tracks=50)
    assert rc == 0 and (out / "kfalignment_00003.npz").exists()

    def boom(f, **kw):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(reco.np, "savez", boom)
    rc, _ = _reco(out, 3, tracks=50)
    assert rc == 1 and "disk full" in capsys.readouterr().err
    assert os.listdir(str(out)) == []  # stale output removed, temp file removed


# ---------------------------------------------------------------------------
# constants files
# ---------------------------------------------------------------------------
def test_constants_roundtrip_full_precision(tmp_path):
    g = fg.Geometry(fourst=True)
    c = np.random.default_rng(1).normal(0.0, 0.3, (g.n_planes, 3)) / 3.0
    path = tmp_path / "inputforalign.txt"
    fc.write_constants(str(path), g, c)
    back, src = fc.read_constants(str(path), g)
    assert src == "file" and np.array_equal(back, c)
    lines = path.read_text().splitlines()
    assert lines[0].startswith("#") and len(lines) == 13
    assert lines[1].split()[:2] == ["0", "0"] and len(lines[1].split()) == 5
    _no_temp_files(tmp_path)


def test_constants_reader_rules(tmp_path):
    g = fg.Geometry()
    p = tmp_path / "c.txt"
    p.write_text("# only a comment\n\n")
    c, src = fc.read_constants(str(p), g)
    assert src == "empty" and np.all(c == 0)
    p.write_text("2 1 0.5 -0.25 1.5\n")
    c, src = fc.read_constants(str(p), g)
    assert src == "file" and c[4].tolist() == [0.5, -0.25, 1.5] and np.count_nonzero(c) == 3
    for text, msg in [
        ("2 1 0.5 -0.25\n", "expected 5 fields"),
        ("2 1 0.5 -0.25 x\n", "cannot parse"),
        ("2 1 0.5 -0.25 nan\n", "non-finite"),
        ("2 1 0 0 0\n2 1 0 0 0\n", "duplicate"),
        ("4 0 0 0 0\n", "not in the 3-station geometry"),
    ]:
        p.write_text(text)
        with pytest.raises(fc.ConstantsError, match=msg):
            fc.read_constants(str(p), g)


# ---------------------------------------------------------------------------
# millepede
# ---------------------------------------------------------------------------
def test_millepede_no_input_exits_3_and_removes_stale_outputs(tmp_path, capsys):
    empty = tmp_path / "iter01" / "2kfalignment"
    empty.mkdir(parents=True)
    (empty / "notes.txt").write_text("x")
    out = tmp_path / "iter01" / "3millepede"
    out.mkdir()
    for name in mp.OUTPUT_NAMES:
        (out / name).write_text("stale")
    rc, _ = _mille(empty, out)
    err = capsys.readouterr().err
    assert rc == 3
    assert "no kfalignment_*.npz files in %s" % empty in err
    assert os.listdir(str(out)) == []
    rc, _ = _mille(tmp_path / "missing", out)
    assert rc == 3 and str(tmp_path / "missing") in capsys.readouterr().err


def test_millepede_inconsistent_inputs_exit_2(tmp_path, capsys):
    kf = tmp_path / "kf"
    assert _reco(kf, 1, tracks=100)[0] == 0
    rc, _ = _mille(kf, tmp_path / "m4", fourst=True)
    assert rc == 2 and "different geometry" in capsys.readouterr().err
    other = tmp_path / "other.txt"
    fc.write_constants(str(other), fg.Geometry(), np.full((9, 3), 0.01))
    rc, _ = _mille(kf, tmp_path / "m", constants=other)
    assert rc == 2 and "differ from the constants the reconstruction used" in capsys.readouterr().err
    assert _reco(kf, 2, constants=other, tracks=100)[0] == 0
    rc, _ = _mille(kf, tmp_path / "m")
    assert rc == 2 and "mixed iterations" in capsys.readouterr().err
    assert os.listdir(str(tmp_path / "m")) == []
    (kf / "kfalignment_00002.npz").write_bytes(b"garbage")
    rc, _ = _mille(kf, tmp_path / "m")
    assert rc == 2 and "kfalignment_00002.npz" in capsys.readouterr().err


def test_millepede_outputs_formats_and_atomicity(tmp_path, monkeypatch, capsys):
    g = fg.Geometry()
    kf, out = tmp_path / "kf", tmp_path / "mp"
    for f in (1, 2):
        assert _reco(kf, f, tracks=500)[0] == 0
    rc, doc = _mille(kf, out)
    assert rc == 0
    assert sorted(os.listdir(str(out))) == ["alignment.json", "inputforalign.txt", "millepede.res"]
    _no_temp_files(kf, out)
    assert doc["n_files"] == 2 and doc["n_tracks"] == 1000 and doc["n_parameters"] == 27
    assert doc["n_constraints"] == 6 and doc["max_rel_change"] == pytest.approx(1.0)
    assert doc["converged"] is False and doc["constants_source"] == "recorded"
    res_lines = (out / "millepede.res").read_text().splitlines()
    assert res_lines[0].split()[0] == "Parameter" and "first 3 elements per line" in res_lines[0]
    assert len(res_lines) == 1 + 27
    res = fc.read_res(str(out / "millepede.res"))
    assert sorted(res) == sorted(g.labels.ravel().tolist())
    new, _ = fc.read_constants(str(out / "inputforalign.txt"), g)
    corr = np.array([[res[lab][0] for lab in row] for row in g.labels])
    err = np.array([[res[lab][2] for lab in row] for row in g.labels])
    assert np.allclose(new, corr, rtol=1e-9, atol=1e-13)  # previous constants were zero
    assert all(res[lab][1] == 0.0 for lab in res) and np.all(err > 0)
    assert np.allclose(fg.constraint_matrix(g) @ new.ravel(), 0.0, atol=1e-10)

    # a failure while moving the outputs in place leaves none of them (and no temp files)
    real_replace = os.replace

    def flaky_replace(src, dst):
        if str(dst).endswith("alignment.json"):
            raise OSError("EOS hiccup")
        return real_replace(src, dst)

    monkeypatch.setattr(mp.os, "replace", flaky_replace)
    rc, _ = _mille(kf, out)
    assert rc == 1 and "EOS hiccup" in capsys.readouterr().err
    assert os.listdir(str(out)) == []


def test_millepede_constants_in_outdir_are_not_lost(tmp_path):
    """--constants OUTDIR/inputforalign.txt (read first, then replaced)."""
    g = fg.Geometry()
    out = tmp_path / "mp"
    out.mkdir()
    start = 0.5 * fg.true_misalignment(g)
    fc.write_constants(str(out / "inputforalign.txt"), g, start)
    assert _reco(tmp_path / "kf", 1, constants=out / "inputforalign.txt", tracks=300)[0] == 0
    rc, doc = _mille(tmp_path / "kf", out, constants=out / "inputforalign.txt")
    assert rc == 0 and doc["constants_source"] == "file"
    new, _ = fc.read_constants(str(out / "inputforalign.txt"), g)
    res = fc.read_res(str(out / "millepede.res"))
    corr = np.array([[res[lab][0] for lab in row] for row in g.labels])
    assert np.allclose(new, start + corr, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------
# the iteration loop converges to the truth
# ---------------------------------------------------------------------------
def test_iterations_converge_to_truth(tmp_path):
    rows = _iterate(tmp_path, 5)
    print("\n3-station, %d files x 2000 tracks" % len(FILES))
    print("iter  mean|res|[mm]  chi2/ndf  max_rel_change  rtt_transl[mm]  rtt_rot[mrad]")
    for r in rows:
        d = r["doc"]
        print("%4d  %13.5f  %8.4f  %14.3e  %14.3e  %13.3e" % (
            r["iteration"], r["mean_abs_residual_mm"], d["chi2_ndf_before"], d["max_rel_change"],
            d["residual_to_truth"]["translation_mm"], d["residual_to_truth"]["rotation_mrad"]))
    stat = rows[-1]["doc"]["stat_error"]
    print("stat_error: %.3e mm, %.3e mrad" % (stat["translation_mm"], stat["rotation_mrad"]))

    first, last = rows[0]["doc"], rows[-1]["doc"]
    assert first["n_tracks"] == 12000 and first["n_files"] == 6
    # before: the full misalignment; after one iteration: within a few sigma of the truth
    assert first["residual_to_truth_before"]["translation_mm"] > 0.1
    assert first["residual_to_truth_before"]["rotation_mrad"] > 0.5
    assert first["residual_to_truth"]["translation_mm"] < 0.01 * first["residual_to_truth_before"]["translation_mm"]
    # converged: residual to truth at the statistical error, chi2/ndf ~ 1, tiny changes
    assert last["residual_to_truth"]["translation_mm"] < 2.0 * stat["translation_mm"]
    assert last["residual_to_truth"]["rotation_mrad"] < 2.0 * stat["rotation_mrad"]
    assert stat["translation_mm"] < 1e-3 and stat["rotation_mrad"] < 1e-2
    assert abs(last["chi2_ndf"] - 1.0) < 0.02 and first["chi2_ndf_before"] > 20
    rel = [r["doc"]["max_rel_change"] for r in rows]
    assert rel[0] == pytest.approx(1.0) and rel[1] < 0.05
    first_conv = next(i for i, r in enumerate(rows, 1) if r["doc"]["converged"])
    assert first_conv <= 5 and all(x < 1e-3 for x in rel[first_conv - 1:])
    mres = [r["mean_abs_residual_mm"] for r in rows]
    assert mres[0] > 0.1 and all(m < 0.03 for m in mres[1:])


def test_four_station_mode(tmp_path):
    rows = _iterate(tmp_path, 2, files=(1, 2), tracks=1000, fourst=True)
    d1, d2 = rows[0]["doc"], rows[1]["doc"]
    assert d1["n_planes"] == 12 and d1["n_parameters"] == 36 and d1["fourst"] is True
    g = fg.Geometry(fourst=True)
    c, src = fc.read_constants(str(tmp_path / "iter02" / "3millepede" / "inputforalign.txt"), g)
    assert src == "file" and c.shape == (12, 3)
    assert len((tmp_path / "iter02" / "3millepede" / "millepede.res").read_text().splitlines()) == 37
    assert d2["residual_to_truth"]["translation_mm"] < 3.0 * d2["stat_error"]["translation_mm"]
    assert d2["residual_to_truth"]["rotation_mrad"] < 3.0 * d2["stat_error"]["rotation_mrad"]
    with np.load(str(tmp_path / "iter01" / "2kfalignment" / "kfalignment_00001.npz")) as z:
        assert z["residuals"].shape == (1000, 12, 2) and int(z["fourst"]) == 1
        assert z["station"].tolist()[:3] == [0, 0, 0]


# ---------------------------------------------------------------------------
# staged as `faser_reference` and run with `python -m`, like on the batch site
# ---------------------------------------------------------------------------
def _interpreters():
    out = [sys.executable]
    deb = "/usr/bin/python3"
    if os.path.exists(deb):
        try:
            ok = subprocess.run([deb, "-c", "import numpy"], capture_output=True, timeout=30).returncode == 0
        except (OSError, subprocess.SubprocessError):
            ok = False
        if ok:
            out.append(deb)
    return out


@pytest.mark.parametrize("python", _interpreters())
def test_cli_staged_as_faser_reference_package(tmp_path, python):
    pkg_dir = os.path.dirname(faser_reference.__file__)
    stage = tmp_path / "code"
    shutil.copytree(pkg_dir, str(stage / "faser_reference"), ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    env = dict(os.environ, PYTHONPATH=str(stage), PYTHONWARNINGS="error")
    work = tmp_path / "w"

    def run(*args):
        return subprocess.run([python, "-m", *args], cwd=str(tmp_path), env=env,
                              capture_output=True, text=True, timeout=120)

    kf1, mp1 = work / "iter01" / "2kfalignment", work / "iter01" / "3millepede"
    p = run("faser_reference.millepede", "-i", str(kf1), "--out", str(mp1))
    assert p.returncode == 3 and str(kf1) in p.stderr
    for f in (400, 401):
        p = run("faser_reference.reco", "--raw-file", str(f), "--year", "2023", "--run", "011705",
                "--out", str(kf1), "--tracks", "500")
        assert p.returncode == 0, p.stderr
        assert p.stderr == ""
        s = json.loads(p.stdout)
        assert s["raw_file"] == f and s["run"] == 11705
    p = run("faser_reference.millepede", "-i", str(kf1), "--out", str(mp1))
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["n_tracks"] == 1000 and doc["max_rel_change"] == pytest.approx(1.0)
    consts = mp1 / "inputforalign.txt"
    kf2, mp2 = work / "iter02" / "2kfalignment", work / "iter02" / "3millepede"
    for f in (400, 401):
        p = run("faser_reference.reco", "--raw-file", str(f), "--year", "2023", "--run", "011705",
                "--out", str(kf2), "--tracks", "500", "--constants", str(consts))
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["mean_abs_residual_mm"] < 0.03
    p = run("faser_reference.millepede", "-i", str(kf2), "--out", str(mp2), "--constants", str(consts))
    assert p.returncode == 0, p.stderr
    doc2 = json.loads(p.stdout)
    assert doc2["max_rel_change"] < 0.05 and doc2["constants_source"] == "file"
    p = run("faser_reference.reco", "--raw-file", "-1", "--year", "2023", "--run", "1", "--out", str(kf2))
    assert p.returncode == 2 and "--raw-file" in p.stderr
