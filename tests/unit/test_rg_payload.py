"""Tests of the reference RG payload (batchsite.include.rg_reference).

Pure numpy/stdlib; runs in a few seconds. The payload is imported as
``batchsite.include.rg_reference``; one test additionally stages it as a
package named ``source`` and runs ``python -m source.generate/aggregate``
exactly as on the batch site.
"""

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from batchsite.include import rg_reference
from batchsite.include.rg_reference import aggregate as agg
from batchsite.include.rg_reference import generate as gen
from batchsite.include.rg_reference import rg_unit as ru


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def _gen(out_dir, step, batch, samples, seed, input_hist=None, shift=None):
    argv = [
        "--out-dir", str(out_dir), "--step", str(step), "--batch", str(batch),
        "--samples", str(samples), "--seed", str(seed),
    ]
    if input_hist is not None:
        argv += ["--input-hist", str(input_hist)]
    if shift is not None:
        argv += ["--shift", str(shift)]
    return gen.main(argv)


def _agg(in_dir, out_dir, step, nb, run_type="FP", bins=None, zrange=None):
    argv = ["--in-dir", str(in_dir), "--out-dir", str(out_dir), "--step", str(step),
            "--batches", str(nb), "--type", run_type]
    if bins is not None:
        argv += ["--bins", str(bins)]
    if zrange is not None:
        argv += ["--zrange", str(zrange)]
    return agg.main(argv)


def _hist_mean(path):
    with np.load(path) as d:
        h, e = d["histval"], d["binedges"]
    c = 0.5 * (e[:-1] + e[1:])
    w = np.diff(e)
    return float(np.sum(c * h * w) / np.sum(h * w))


def _run_campaign(root, run_type, steps, nb, n, seed, bins=None, shift=None):
    """Steps 0..steps-1 in-process; returns the list of DONE documents."""
    out = root / "out"
    docs = []
    prev = None
    for k in range(steps):
        step_dir = root / ("RG%d" % k)
        for b in range(nb):
            sh = shift if (k == 0 and shift is not None) else None
            assert _gen(step_dir, k, b, n, seed, input_hist=prev, shift=sh) == 0
        assert _agg(step_dir, out, k, nb, run_type, bins=bins) == 0
        doc = json.loads((step_dir / "DONE.json").read_text())
        docs.append(doc)
        prev = out / doc["next_input"]
    return docs


# ---------------------------------------------------------------------------
# RG unit: physics checks of the formula
# ---------------------------------------------------------------------------
def test_rg_unit_in_unit_interval_and_unitary():
    rng = np.random.default_rng(11)
    n = 200_000
    # broad inputs incl. values very close to 0 and 1
    t = rng.random((5, n)) ** rng.choice([0.05, 1.0, 20.0], size=(5, n))
    phi = ru.draw_phases(rng, n)
    raw = ru.rg_transform(t, phi, clip=False)
    assert np.all(np.isfinite(raw))
    # unitarity of the 5-saddle-point unit: |t'| <= 1 up to round-off
    assert raw.max() <= 1.0 + 1e-9
    tp = ru.rg_transform(t, phi)
    assert tp.shape == (n,)
    assert np.all((tp >= 0.0) & (tp <= 1.0))
    assert np.all(phi >= 0.0) and np.all(phi < 2 * math.pi)


def test_rg_unit_trivial_limits():
    rng = np.random.default_rng(3)
    n = 1000
    phi = ru.draw_phases(rng, n)
    # all saddle points fully transmitting -> block fully transmitting
    assert np.allclose(ru.rg_transform(np.ones((5, n)), phi), 1.0, atol=1e-9)
    # all fully reflecting -> block fully reflecting
    assert np.allclose(ru.rg_transform(np.zeros((5, n)), phi), 0.0)


@pytest.mark.parametrize("pair,phase", [((0, 4), 0), ((1, 3), 1)])
def test_rg_unit_series_fabry_perot_limit(pair, phase):
    """Only two saddle points in series transmit (t3 = 0, the other side
    closed): the unit is a double barrier with one loop phase,
    t' = ta tb / |1 - ra rb e^{i phi}|."""
    rng = np.random.default_rng(5)
    n = 5000
    t = np.zeros((5, n))
    a, b = pair
    t[a] = rng.random(n)
    t[b] = rng.random(n)
    phi = ru.draw_phases(rng, n)
    ra, rb = np.sqrt(1 - t[a] ** 2), np.sqrt(1 - t[b] ** 2)
    expected = t[a] * t[b] / np.abs(1 - ra * rb * np.exp(1j * phi[phase]))
    assert np.allclose(ru.rg_transform(t, phi), expected, rtol=1e-10, atol=1e-12)


def test_rg_unit_t_r_duality():
    """Self-duality of the unit: with i.i.d. inputs, t'(r_1..r_5) is
    distributed like r'(t_1..t_5) = sqrt(1 - t'^2), i.e. z' -> -z'. Inputs
    are deliberately asymmetric (t uniform), so this is a real check."""
    rng = np.random.default_rng(7)
    n = 200_000
    t = rng.random((5, n))
    r = np.sqrt(1 - t * t)
    z_direct = ru.t_to_z(ru.rg_step(t, rng, r=r))
    z_dual = ru.t_to_z(ru.rg_step(r, rng, r=t))
    q = [0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95]
    assert np.allclose(np.quantile(z_dual, q), np.quantile(-z_direct, q), atol=0.06)
    # and the input asymmetry is visible (the check is not trivially satisfied)
    assert abs(np.median(z_direct)) > 1.0


def test_t_z_conversion_roundtrip_and_clipping():
    z = np.linspace(-20, 20, 401)
    t, r = ru.z_to_tr(z)
    assert np.allclose(t * t + r * r, 1.0)
    assert np.allclose(ru.t_to_z(t), z, atol=1e-6)
    assert np.allclose(ru.z_to_t(z), t)
    ends = ru.t_to_z(np.array([0.0, 1.0]))
    assert np.all(np.isfinite(ends))
    assert ends[0] == ru.Z_CLIP and ends[1] == -ru.Z_CLIP
    assert np.all(np.isfinite(ru.z_to_t(np.array([-1e6, 1e6]))))
    # z = 0 is t^2 = 1/2
    assert ru.z_to_t(0.0) == pytest.approx(math.sqrt(0.5))


def test_hist_sampler_inverse_cdf():
    edges = np.array([-2.0, -1.0, 0.0, 1.0, 3.0])
    dens = np.array([0.1, 0.0, 0.3, 0.2])  # masses 0.1, 0, 0.3, 0.4 (sum 0.8)
    rng = np.random.default_rng(1)
    z = ru.sample_z_from_hist(dens, edges, 400_000, rng)
    assert z.min() >= -2.0 and z.max() <= 3.0
    assert not np.any((z > -1.0) & (z < 0.0))  # empty bin never sampled
    counts = np.histogram(z, bins=edges)[0] / z.size
    assert np.allclose(counts, [0.125, 0.0, 0.375, 0.5], atol=0.005)
    # uniform within a bin
    inner = z[z > 1.0]
    assert np.mean(inner) == pytest.approx(2.0, abs=0.01)
    # explicit Generator -> reproducible
    a = ru.sample_z_from_hist(dens, edges, 100, np.random.default_rng(9))
    b = ru.sample_z_from_hist(dens, edges, 100, np.random.default_rng(9))
    assert np.array_equal(a, b)
    with pytest.raises(ValueError):
        ru.sample_z_from_hist(np.zeros(4), edges, 10, rng)


def test_hist_distance():
    e = np.linspace(-1, 1, 5)
    a = (np.array([0.5, 0.5, 0.5, 0.5]), e)
    assert agg.hist_distance(a, a) == 0.0
    b = (np.array([1.0, 1.0, 0.0, 0.0]), e)
    c = (np.array([0.0, 0.0, 1.0, 1.0]), e)
    assert agg.hist_distance(b, c) == pytest.approx(2.0)
    # same density, different binning -> 0; evaluated on the union of edges
    fine = (np.full(8, 0.5), np.linspace(-1, 1, 9))
    assert agg.hist_distance(a, fine) == pytest.approx(0.0, abs=1e-12)
    shifted = (np.array([1.0]), np.array([0.0, 1.0]))
    unit = (np.array([1.0]), np.array([0.5, 1.5]))
    assert agg.hist_distance(shifted, unit) == pytest.approx(1.0)
    assert rg_reference.hist_distance is ru.hist_distance


# ---------------------------------------------------------------------------
# generate
# ---------------------------------------------------------------------------
def test_generate_deterministic_per_seed_step_batch(tmp_path):
    def run(d, step, batch, seed):
        assert _gen(tmp_path / d, step, batch, 3000, seed) == 0
        return np.load(tmp_path / d / ("batch_%03d" % batch) / ("t_RG%d.npy" % step))

    a = run("a", 1, 4, 42)
    b = run("b", 1, 4, 42)
    assert np.array_equal(a, b)
    assert a.shape == (3000,) and a.dtype == np.float64
    assert np.all((a >= 0) & (a <= 1))
    assert not np.array_equal(a, run("c", 1, 5, 42))  # other batch
    assert not np.array_equal(a, run("d", 2, 4, 42))  # other step
    assert not np.array_equal(a, run("e", 1, 4, 43))  # other seed
    ready = json.loads((tmp_path / "a" / "batch_004" / "READY").read_text())
    assert ready["step"] == 1 and ready["batch"] == 4 and ready["samples"] == 3000


def test_generate_ready_written_last(tmp_path, monkeypatch):
    finals = []
    real_replace = os.replace

    def recording_replace(src, dst):
        real_replace(src, dst)
        finals.append(os.path.basename(dst))

    monkeypatch.setattr(os, "replace", recording_replace)
    assert _gen(tmp_path, 2, 0, 500, 1) == 0
    assert finals == ["t_RG2.npy", "READY"]
    assert sorted(os.listdir(tmp_path / "batch_000")) == ["READY", "t_RG2.npy"]


def test_generate_failure_leaves_no_final_files(tmp_path, monkeypatch, capsys):
    bdir = tmp_path / "batch_000"
    # bad input: missing histogram -> exit 2, nothing created
    assert _gen(tmp_path, 1, 0, 100, 1, input_hist=tmp_path / "nope.npz") == 2
    assert "nope.npz" in capsys.readouterr().err
    assert not bdir.exists()
    # bad input: histogram with wrong keys
    bad = tmp_path / "bad.npz"
    np.savez(bad, foo=np.ones(3))
    assert _gen(tmp_path, 1, 0, 100, 1, input_hist=bad) == 2
    assert "histval" in capsys.readouterr().err
    assert not bdir.exists()
    # bad arguments -> argparse error, non-zero
    with pytest.raises(SystemExit) as exc:
        gen.main(["--out-dir", str(tmp_path), "--step", "-1", "--batch", "0", "--samples", "5", "--seed", "1"])
    assert exc.value.code != 0

    # a previous successful run, then a run that fails while writing
    assert _gen(tmp_path, 1, 0, 100, 1) == 0
    assert (bdir / "READY").exists()

    def failing_save(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(gen.np, "save", failing_save)
    assert _gen(tmp_path, 1, 0, 100, 1) == 1
    assert "disk full" in capsys.readouterr().err
    assert os.listdir(bdir) == []  # no READY, no t_RG1.npy, no temp file


# ---------------------------------------------------------------------------
# aggregate
# ---------------------------------------------------------------------------
def test_aggregate_refuses_missing_batches(tmp_path, capsys):
    step_dir = tmp_path / "RG1"
    for b in (0, 2, 4):
        assert _gen(step_dir, 1, b, 200, 1) == 0
    # batch_003 holds a READY of another step (0) -> not ready for step 1
    assert _gen(step_dir, 0, 3, 200, 1) == 0
    # batch_005 has data but no READY
    assert _gen(step_dir, 1, 5, 200, 1) == 0
    os.remove(step_dir / "batch_005" / "READY")
    capsys.readouterr()
    assert _agg(step_dir, tmp_path / "out", 1, 6) == 3
    err = capsys.readouterr().err
    for name in ("batch_001", "batch_003", "batch_005"):
        assert name in err
    for name in ("batch_000", "batch_002", "batch_004"):
        assert name not in err
    assert not (step_dir / "DONE.json").exists()
    assert not (tmp_path / "out").exists()


def test_fp_run_converges_and_is_symmetric(tmp_path):
    """6 RG generations (step 0 = initial, steps 1..5 RG) with 5e4 samples
    per step (5 x 1e4). Coarse bins (0.5 wide) keep the histogram noise floor
    of the L1 distance (~0.02) well below the early distances."""
    docs = _run_campaign(tmp_path, "FP", steps=6, nb=5, n=10_000, seed=2024, bins=100)
    out = tmp_path / "out"
    zstd = [d["z_std"] for d in docs]
    for k, d in enumerate(docs):
        assert d["step"] == k and d["type"] == "FP" and d["sym"] is True
        assert d["samples"] == 50_000 and d["batches"] == 5
        assert d["hist_path"] == "hist/z/z_hist_RG%d.npz" % k
        assert d["next_input"] == "hist/sym_z/sym_z_hist_RG%d.npz" % k
        for rel in ("hist/t/t_hist_RG%d.npz", "hist/z/z_hist_RG%d.npz", "hist/sym_z/sym_z_hist_RG%d.npz"):
            with np.load(out / (rel % k)) as h:
                assert set(h.files) == {"histval", "binedges"}
                assert h["binedges"].size == 101
                assert np.sum(h["histval"] * np.diff(h["binedges"])) == pytest.approx(1.0)
        stats_text = (out / "stats" / ("DONE_RG%d.json" % k)).read_text()
        assert stats_text.count("\n") == 1  # one JSON document per line
        assert json.loads(stats_text) == d
        # symmetric fixed point: sym hist centred exactly, raw z within noise
        assert abs(_hist_mean(out / d["next_input"])) < 1e-9
        assert abs(d["z_mean"]) < 5 * d["z_std"] / math.sqrt(d["samples"])
        assert abs(d["t_mean"] - 0.6) < 0.1
    dist = [
        agg.hist_distance(out / docs[k]["hist_path"], out / docs[k + 1]["hist_path"])
        for k in range(len(docs) - 1)
    ]
    # successive distances shrink and end at the statistical noise floor
    assert dist[0] > dist[1] > dist[-1]
    assert dist[-1] < 0.04 and dist[-2] < 0.04
    assert dist[0] > 2.5 * dist[-1]
    # the width grows from the logistic start (pi/sqrt(3) = 1.81) and saturates
    assert zstd[0] == pytest.approx(math.pi / math.sqrt(3), rel=0.02)
    assert zstd[-1] > zstd[0] * 1.1
    assert abs(zstd[-1] - zstd[-2]) / zstd[-1] < 0.03
    assert abs(zstd[-1] - zstd[-3]) / zstd[-1] < 0.03
    assert 2.0 < zstd[-1] < 2.35


def test_exp_run_keeps_shift_and_uses_plain_z(tmp_path):
    docs = _run_campaign(tmp_path, "EXP", steps=2, nb=2, n=10_000, seed=5, bins=200, shift=0.5)
    out = tmp_path / "out"
    assert docs[0]["z_mean"] == pytest.approx(0.5, abs=0.06)
    # a shift away from criticality is relevant: it grows under the RG
    assert docs[1]["z_mean"] > docs[0]["z_mean"] + 0.05
    for d in docs:
        assert d["sym"] is False and d["type"] == "EXP"
        assert d["next_input"] == d["hist_path"] == "hist/z/z_hist_RG%d.npz" % d["step"]
    assert not (out / "hist" / "sym_z").exists()


# ---------------------------------------------------------------------------
# staged as `source` and run with `python -m`, like on the batch site
# ---------------------------------------------------------------------------
def test_cli_staged_as_source_package(tmp_path):
    pkg_dir = os.path.dirname(rg_reference.__file__)
    stage = tmp_path / "stage"
    shutil.copytree(pkg_dir, stage / "source", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    env = dict(os.environ, PYTHONPATH=str(stage), PYTHONWARNINGS="error")
    work = tmp_path / "w"

    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", *args], cwd=str(stage), env=env, capture_output=True, text=True, timeout=60
        )

    for b in range(2):
        p = run("source.generate", "--out-dir", str(work / "RG0"), "--step", "0", "--batch", str(b),
                "--samples", "1000", "--seed", "3")
        assert p.returncode == 0, p.stderr
        assert p.stderr == ""
    p = run("source.aggregate", "--in-dir", str(work / "RG0"), "--out-dir", str(work / "out"),
            "--step", "0", "--batches", "3", "--type", "FP")
    assert p.returncode == 3 and "batch_002" in p.stderr
    p = run("source.aggregate", "--in-dir", str(work / "RG0"), "--out-dir", str(work / "out"),
            "--step", "0", "--batches", "2", "--type", "FP", "--bins", "50")
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 1 and "RG0" in lines[0] and "z_std=" in lines[0]
    nxt = work / "out" / json.loads((work / "RG0" / "DONE.json").read_text())["next_input"]
    p = run("source.generate", "--out-dir", str(work / "RG1"), "--step", "1", "--batch", "0",
            "--samples", "1000", "--seed", "3", "--input-hist", str(nxt))
    assert p.returncode == 0, p.stderr
    assert (work / "RG1" / "batch_000" / "READY").exists()
    p = run("source.generate", "--out-dir", str(work / "x"), "--step", "1", "--batch", "0",
            "--samples", "zero", "--seed", "3")
    assert p.returncode != 0 and "--samples" in p.stderr
    p = run("source.aggregate", "--in-dir", str(work / "RG0"), "--out-dir", str(work / "out"),
            "--step", "0", "--batches", "2", "--type", "XYZ")
    assert p.returncode != 0 and "--type" in p.stderr


# ---------------------------------------------------------------------------
# the critical exponent of the reference payload at CI size (bench/rg_nu.py)
# ---------------------------------------------------------------------------
def test_reference_payload_nu_at_ci_size(capsys):
    """FP (4 steps) then EXP (shifts 0, 0.3, 0.6; 3 steps) of 20000 samples per step, in
    process with the campaign's own functions: a shift grows under the RG, and nu from the
    z mean after n = 3 steps lands near the published 2.39 / 2.51 +/- 0.11 (CI size: a few
    percent of statistical error; bench/rg_nu.py runs the bench size)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / "rg_nu.py"
    spec = importlib.util.spec_from_file_location("rg_nu_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    text, rows = bench.run(samples=20_000, batches=4, fp_steps=4, exp_steps=3, shifts=[0.0, 0.3, 0.6], seed=2024,
                           workers=1)
    with capsys.disabled():
        print("\nreference payload at CI size:\n" + text)
    assert [(r.step, r.n) for r in rows] == [(1, 1), (2, 2), (3, 3)]
    assert all(r.slope_mean > 1 and r.slope_peak > 1 for r in rows)
    assert rows[-1].slope_mean > rows[0].slope_mean  # the shift keeps growing
    assert 1.8 < rows[-1].nu_mean < 3.2 and 1.5 < rows[-1].nu_peak < 3.5
    assert "published: 2.51 +/- 0.11" in text
