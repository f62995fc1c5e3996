"""Tests of the issue-12 stand-ins (tests/site/standins): contract checks and physics.

The stand-ins are installed under a temporary prefix (``install.sh <tmp> <me>``) and run
locally with the environment HTCondor / Slurm would give them (``_CONDOR_SCRATCH_DIR``,
``SLURM_ARRAY_TASK_ID`` ...). ``BATCHSITE_STANDIN_PREFIX`` points the stand-ins at the
temporary /cvmfs and /eos. About 20 s.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

STANDINS = Path(__file__).resolve().parents[1] / "site" / "standins"
sys.path.insert(0, str(STANDINS / "faser"))
import faser_toy as toy  # noqa: E402

YEAR, RUN, FILES = "2022", "008023", ["00000", "00001", "00002", "00003"]
CONTRACT_EXIT = 64


@pytest.fixture(scope="module")
def inst(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("standin-root")
    env = {**os.environ, "BATCHSITE_STANDIN_PYTHON": sys.executable}
    r = subprocess.run(["bash", str(STANDINS / "install.sh"), str(root), getpass.getuser()],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    paths = dict(line.strip().split("=", 1) for line in r.stdout.splitlines() if "=" in line)
    return {"root": root, **{k: Path(v) for k, v in paths.items()}}


def base_env(inst: dict[str, Path], tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "BATCHSITE_STANDIN", "Atlas"))}
    env.pop("_CONDOR_SCRATCH_DIR", None)
    env["BATCHSITE_STANDIN_PREFIX"] = str(inst["root"])
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    env["HOME"] = str(tmp)
    return env


def run(argv: list[str], env: dict[str, str], cwd: Path | None = None, stdin: str | None = None
        ) -> subprocess.CompletedProcess:
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, input=stdin, timeout=300)


def violated(r: subprocess.CompletedProcess, *words: str) -> None:
    assert r.returncode == CONTRACT_EXIT, (r.returncode, r.stdout, r.stderr)
    assert "STANDIN CONTRACT VIOLATION" in r.stderr, r.stderr
    for w in words:
        assert w in r.stderr, (w, r.stderr)


# ============================================================================ FASER

def iteration_dirs(base: Path, it: int) -> dict[str, Path]:
    d = base / f"iter{it:02d}"
    out = {"iter": d, "reco": d / "1reco", "kf": d / "2kfalignment", "mp": d / "3millepede"}
    for p in out.values():
        p.mkdir(parents=True, exist_ok=True)
    return out


def reco_argv(inst: dict[str, Path], dirs: dict[str, Path], file: str = "00000", stations: str = "3",
              run_: str = RUN, extra: list[str] | None = None) -> list[str]:
    return ["bash", str(inst["SRC_DIR"] / "templates" / "runAlignment.sh"), YEAR, run_, stations, file,
            str(dirs["reco"]), str(dirs["kf"]), str(inst["SRC_DIR"]), str(inst["CALYPSO_ASETUP"]),
            str(inst["CALYPSO_SETUP"]), *(extra or [])]


def reco_env(inst: dict[str, Path], tmp: Path, file: str = "00000") -> dict[str, str]:
    env = base_env(inst, tmp)
    scratch = tmp / f"scratch_{file}"
    scratch.mkdir(exist_ok=True)
    env["_CONDOR_SCRATCH_DIR"] = str(scratch)
    return env


def mille_argv(inst: dict[str, Path], dirs: dict[str, Path], nxt: dict[str, Path] | None) -> list[str]:
    head = ["bash", str(inst["SRC_DIR"] / "templates" / "runMillepede.sh")]
    if nxt is None:
        return [*head, "False", str(inst["SRC_DIR"]), str(dirs["kf"]), str(inst["ENV_PEDE"]), str(inst["ENV_ROOT"])]
    return [*head, "True", str(inst["SRC_DIR"]), str(dirs["kf"]), str(nxt["reco"]), str(inst["ENV_PEDE"]),
            str(inst["ENV_ROOT"])]


def start_campaign(inst: dict[str, Path], base: Path, template: str = "inputforalign.txt") -> dict[str, Path]:
    d1 = iteration_dirs(base, 1)
    (d1["reco"] / "inputforalign.txt").write_text((inst["SRC_DIR"] / "templates" / template).read_text())
    return d1


def read_calls(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_faser_reco_job_succeeds_and_logs(inst, tmp_path):
    d = start_campaign(inst, tmp_path / "Y2022_R008023_F0-4_ST3")
    env = reco_env(inst, tmp_path)
    r = run(reco_argv(inst, d), env)
    assert r.returncode == 0, r.stderr + r.stdout
    out = d["kf"] / f"kfalignment_{RUN}_00000.root"
    assert out.is_file() and not list(d["kf"].glob("*xAOD*"))
    assert not (tmp_path / "scratch_00000" / f"work_{RUN}_00000").exists()  # work dir cleaned
    calls = read_calls(d["kf"] / "calls.log")
    programs = [c["program"] for c in calls]
    assert programs == ["WriteAlignmentConfig_Faser04.py", "AtlCoolConsole.py", "faser_reco_alignment.py"]
    reco = calls[-1]
    assert reco["argv"][1:] == ["--alignment", "--noBackward", "--noIFT", "--output_level", "INFO"]
    assert reco["cwd"].endswith(f"work_{RUN}_00000") and reco["ift_included"] is False
    assert reco["applied_constants"] == toy.zero_constants(toy.STATIONS_3)
    with np.load(out) as kf:
        assert kf["residual"].shape[1:] == (9, 2)


def test_faser_reco_4_stations_and_verbosity(inst, tmp_path):
    d = start_campaign(inst, tmp_path / "ST4", template="align_2022_4ST_local.txt")
    r = run(reco_argv(inst, d, stations="4", extra=["DEBUG"]), reco_env(inst, tmp_path))
    assert r.returncode == 0, r.stderr
    reco = read_calls(d["kf"] / "calls.log")[-1]
    assert reco["argv"][1:] == ["--alignment", "--noBackward", "--output_level", "DEBUG"] and reco["ift_included"]


@pytest.mark.parametrize("case,words", [
    ("argcount", ["expected 9 or 10 arguments"]),
    ("run5", ["RUN='08023'", "6-digit"]),
    ("run_int", ["RUN='8023'"]),
    ("file4", ["FILE='0000'", "5-digit"]),
    ("stations", ["STATIONS='5'"]),
    ("verbosity", ["VERBOSITY='loud'"]),
    ("no_scratch", ["_CONDOR_SCRATCH_DIR"]),
    ("no_constants", ["RECO_DIR=", "inputforalign.txt"]),
    ("bad_asetup", ["CALYPSO_ASETUP="]),
])
def test_faser_reco_job_contract_violations(inst, tmp_path, case, words):
    d = start_campaign(inst, tmp_path / "c")
    env = reco_env(inst, tmp_path)
    argv = reco_argv(inst, d)
    if case == "argcount":
        argv = argv[:-1]
    elif case == "run5":
        argv[3] = "08023"
    elif case == "run_int":
        argv[3] = "8023"
    elif case == "file4":
        argv[5] = "0000"
    elif case == "stations":
        argv[4] = "5"
    elif case == "verbosity":
        argv.append("loud")
    elif case == "no_scratch":
        env.pop("_CONDOR_SCRATCH_DIR")
    elif case == "no_constants":
        (d["reco"] / "inputforalign.txt").unlink()
    elif case == "bad_asetup":
        argv[9] = str(tmp_path / "nope")
    violated(run(argv, env), *words)


def _calypso_env(inst, tmp_path, stations="3"):
    """The environment runAlignment.sh gives the reco program, in a prepared work dir."""
    env = reco_env(inst, tmp_path)
    work = Path(env["_CONDOR_SCRATCH_DIR"]) / f"work_{RUN}_00000"
    (work / "data" / "sqlite200").mkdir(parents=True)
    db = inst["root"] / "cvmfs/faser.cern.ch/repo/sw/database/DBRelease/current/sqlite200/ALLP200.db"
    (work / "data" / "sqlite200" / "ALLP200.db").write_bytes(db.read_bytes())
    env.update(AtlasProject="Athena", AtlasVersion="24.0.41", CALYPSO_STANDIN_INSTALL="x",
               EOS_MGM_URL="root://eosuser.cern.ch", ATLAS_POOLCOND_PATH=str(work / "data"),
               BATCHSITE_STANDIN_STATIONS=stations, BATCHSITE_STANDIN_CALLS=str(tmp_path / "calls.log"))
    consts = toy.format_constants(toy.zero_constants(toy.STATIONS_3))
    w = run([sys.executable, str(inst["CALYPSO_SETUP"].parent / "bin" / "WriteAlignmentConfig_Faser04.py"),
             "AlignDbTool.AlignmentConstants={" + consts + "}"], env, cwd=work)
    assert w.returncode == 0, w.stderr
    return env, work


RAW = f"/eos/experiment/faser/raw/{YEAR}/{RUN}/Faser-Physics-{RUN}-00000.raw"


@pytest.mark.parametrize("args,stations,words", [
    ([RAW, "--alignment", "--noBackward", "--noIFT", "--output_level", "INFO"], "3", None),
    ([RAW, "--alignment", "--noBackward", "--fourst", "--output_level", "INFO"], "3", ["--fourst"]),
    ([RAW, "--alignment", "--noBackward", "--output_level", "INFO"], "3", ["--noIFT missing", "3-station"]),
    ([RAW, "--alignment", "--noBackward", "--noIFT", "--output_level", "INFO"], "4", ["--noIFT given"]),
    ([RAW, "--noBackward", "--noIFT", "--output_level", "INFO"], "3", ["--alignment missing"]),
    ([RAW, "--alignment", "--noIFT", "--output_level", "INFO"], "3", ["--noBackward missing"]),
    ([RAW, "--alignment", "--noBackward", "--noIFT"], "3", ["--output_level missing"]),
    ([RAW.replace(RUN, "8023"), "--alignment", "--noBackward", "--noIFT", "--output_level", "INFO"], "3",
     ["Faser-Physics-<RUN>-<FILE 5 digits>.raw"]),
])
def test_faser_reco_program_contract(inst, tmp_path, args, stations, words):
    env, work = _calypso_env(inst, tmp_path, stations)
    r = run([sys.executable, str(inst["SRC_DIR"] / "faser_reco_alignment.py"), *args], env, cwd=work)
    if words is None:
        assert r.returncode == 0, r.stderr
        assert len(list(work.glob("Faser-Physics-*kfalignment.root"))) == 1
    else:
        violated(r, *words)


def test_faser_reco_program_needs_environment(inst, tmp_path):
    env, work = _calypso_env(inst, tmp_path)
    argv = [sys.executable, str(inst["SRC_DIR"] / "faser_reco_alignment.py"), RAW, "--alignment", "--noBackward",
            "--noIFT", "--output_level", "INFO"]
    for var, word in (("EOS_MGM_URL", "EOS_MGM_URL"), ("ATLAS_POOLCOND_PATH", "ATLAS_POOLCOND_PATH"),
                      ("AtlasVersion", "asetup"), ("CALYPSO_STANDIN_INSTALL", "CALYPSO_SETUP")):
        violated(run(argv, {k: v for k, v in env.items() if k != var}, cwd=work), word)


def test_calypso_programs_contract(inst, tmp_path):
    env, work = _calypso_env(inst, tmp_path)
    writer = [sys.executable, str(inst["CALYPSO_SETUP"].parent / "bin" / "WriteAlignmentConfig_Faser04.py")]
    violated(run([*writer, "AlignDbTool.AlignmentConstants={\"10\": [0, 0, 0]}"], env, cwd=work), "6 numbers")
    violated(run([*writer, "AlignDbTool.AlignmentConstants={\"47\": [0, 0, 0, 0, 0, 0]}"], env, cwd=work), "station 4")
    violated(run([*writer, "AlignDbTool.Constants={}"], env, cwd=work), "AlignDbTool.AlignmentConstants")
    console = [sys.executable, str(inst["CALYPSO_SETUP"].parent / "bin" / "AtlCoolConsole.py")]
    ok = run([*console, "sqlite://;schema=data/sqlite200/ALLP200.db;dbname=CONDBR3"], env, cwd=work,
             stdin="more /Tracker/Align\nexit\n")
    assert ok.returncode == 0 and "/Tracker/Align" in ok.stdout, ok.stderr
    violated(run([*console, "data/sqlite200/ALLP200.db"], env, cwd=work), "connect string")


def test_asetup_contract(inst, tmp_path):
    setup = inst["root"] / "cvmfs/atlas.cern.ch/repo/ATLASLocalRootBase/user/atlasLocalSetup.sh"
    env = base_env(inst, tmp_path)
    good = f"export ATLAS_LOCAL_ROOT_BASE=/cvmfs/atlas.cern.ch/repo/ATLASLocalRootBase; source {setup}; "
    r = run(["bash", "-c", good + f"asetup --input={inst['CALYPSO_ASETUP']} Athena,24.0.41 && echo $AtlasVersion"], env)
    assert r.returncode == 0 and r.stdout.strip().endswith("24.0.41"), r.stderr
    r = run(["bash", "-c", good + f"asetup --input={inst['CALYPSO_ASETUP']} Athena,25.0.1"], env)
    assert r.returncode == CONTRACT_EXIT and "Athena,24.0.41" in r.stderr
    r = run(["bash", "-c", good + f"asetup --input={tmp_path}/missing Athena,24.0.41"], env)
    assert r.returncode == CONTRACT_EXIT and "does not exist" in r.stderr
    r = run(["bash", "-c", f"source {setup}"], env)
    assert r.returncode == CONTRACT_EXIT and "ATLAS_LOCAL_ROOT_BASE" in r.stderr


@pytest.mark.parametrize("case,words", [
    ("count_true", ["TO_NEXT_ITER=True: expected 6 arguments"]),
    ("count_false", ["TO_NEXT_ITER=False: expected 5 arguments"]),
    ("flag", ["TO_NEXT_ITER='true'"]),
    ("pede", ["ENV_PEDE="]),
])
def test_faser_millepede_job_contract(inst, tmp_path, case, words):
    d = start_campaign(inst, tmp_path / "m")
    d2 = iteration_dirs(tmp_path / "m", 2)
    env = base_env(inst, tmp_path)
    argv = mille_argv(inst, d, d2)
    if case == "count_true":
        argv.pop(5)  # NEXT_RECO_DIR missing
    elif case == "count_false":
        argv = mille_argv(inst, d, None)
        argv.insert(5, str(d2["reco"]))
    elif case == "flag":
        argv[2] = "true"
    elif case == "pede":
        argv[6] = str(tmp_path)
    violated(run(argv, env), *words)


def test_faser_millepede_refuses_constants_reco_did_not_apply(inst, tmp_path):
    base = tmp_path / "Y2022_R008023_F0-1_ST3"
    d = start_campaign(inst, base)
    assert run(reco_argv(inst, d), reco_env(inst, tmp_path)).returncode == 0
    changed = toy.zero_constants(toy.STATIONS_3)
    changed["11"][0] = 0.05
    (d["reco"] / "inputforalign.txt").write_text(toy.format_constants(changed))
    violated(run(mille_argv(inst, d, None), base_env(inst, tmp_path)), "not the ones reconstruction applied")


def test_faser_three_iterations_converge(inst, tmp_path):
    """Iterations driven by hand: reco x 4 files -> millepede -> next iteration's 1reco."""
    base = tmp_path / "Y2022_R008023_F0-4_ST3"
    dirs = [start_campaign(inst, base)]
    n_iter = 3
    residuals, changes, chi2 = [], [], []
    previous = toy.plane_constants(toy.zero_constants(toy.STATIONS_3), toy.planes_of(toy.STATIONS_3))
    for it in range(1, n_iter + 1):
        d = dirs[-1]
        (tmp_path / f"it{it}").mkdir()
        for f in FILES:
            r = run(reco_argv(inst, d, file=f), reco_env(inst, tmp_path / f"it{it}", file=f))
            assert r.returncode == 0, r.stderr
        nxt = iteration_dirs(base, it + 1) if it < n_iter else None
        r = run(mille_argv(inst, d, nxt), base_env(inst, tmp_path))
        assert r.returncode == 0, r.stderr + r.stdout
        assert (d["mp"] / "millepede.res").is_file() and (d["mp"] / "millepede.his").is_file()
        res_lines = (d["mp"] / "millepede.res").read_text().splitlines()
        chi2.append(float(res_lines[-1].split("=")[-1]))
        reco_calls = [c for c in read_calls(d["kf"] / "calls.log") if c["program"] == "faser_reco_alignment.py"]
        residuals.append(float(np.mean([c["mean_abs_residual_mm"] for c in reco_calls])))
        new = toy.parse_constants((d["iter"] / "inputforalign.txt").read_text())
        new_planes = toy.plane_constants(new, toy.planes_of(toy.STATIONS_3))
        floors = np.array([0.01, 0.01, 5e-5])
        changes.append(float(np.max(np.abs(new_planes - previous) / np.maximum(np.abs(new_planes), floors))))
        previous = new_planes
        if nxt is not None:
            # the constants of iteration k are the ones reconstruction k+1 applies
            assert (nxt["reco"] / "inputforalign.txt").read_text() == (d["iter"] / "inputforalign.txt").read_text()
            dirs.append(nxt)
    # every reconstruction of iteration k+1 applied the constants millepede wrote in iteration k
    for k in range(1, n_iter):
        written = toy.parse_constants((dirs[k - 1]["iter"] / "inputforalign.txt").read_text())
        applied = [c["applied_constants"] for c in read_calls(dirs[k]["kf"] / "calls.log")
                   if c["program"] == "faser_reco_alignment.py"]
        assert len(applied) == len(FILES) and all(a == written for a in applied)
    print("\nFASER stand-in iterations: residual", residuals, "max rel change", changes, "chi2/ndf", chi2)
    assert residuals[0] > residuals[1] >= residuals[2] * 0.999
    assert changes[-1] < 1e-3
    assert chi2[-1] < 1.5
    truth = toy.truth_for(toy.STATIONS_3)
    assert np.max(np.abs(previous[:, :2] - truth[:, :2])) < 0.01  # mm, statistical error ~ 1 um


# ============================================================================ RG

@pytest.fixture()
def rg_clean(inst: dict[str, Path]) -> None:
    shutil.rmtree(inst["RG_REPO"] / "job_outputs", ignore_errors=True)


def rg_env(inst: dict[str, Path], tmp: Path, cfg: Path, task: int | None = None, task_max: int = 3) -> dict[str, str]:
    env = base_env(inst, tmp)
    repo = inst["RG_REPO"]
    env.update(PATH=f"{inst['RG_ENV'].parent / 'bin'}:{env['PATH']}", PYTHONPATH=str(repo), RG_CONFIG=str(cfg),
               DATA_DIR=str(tmp / "data"), LOCAL_DIR=str(tmp / "local"), ROOT_DIR=str(repo),
               TASKFARM_DIR=str(repo / "Taskfarm"), HOST="taskfarm", REMOTE_DIR=str(repo),
               CONFIG_FILE="updated_config.yaml", SLURM_JOB_ID="4242", SLURM_ARRAY_JOB_ID="4241")
    if task is not None:
        env.update(SLURM_ARRAY_TASK_ID=str(task), SLURM_ARRAY_TASK_MAX=str(task_max))
    return env


def rg_cfg(tmp: Path) -> Path:
    cfg = tmp / "updated_config.yaml"
    cfg.write_text("rg_settings:\n  steps: 2\n  samples: 4000\nengine:\n  method: numerical\n")
    return cfg


VERSIONSTR = "t1_numerical_shaw"


def gen_argv(inst, cfg: Path, k: int, n: int = 4000, typ: str = "FP", initial: str = "1", existing: str = "None",
             shift: str | None = None, seed: int = 100) -> list[str]:
    argv = ["bash", str(inst["RG_REPO"] / "Taskfarm" / "rg_gen_batch.sh"), str(cfg), typ, VERSIONSTR, str(n),
            str(k), str(seed), "numerical", "shaw", initial, existing]
    return argv + ([shift] if shift is not None else [])


def hist_argv(inst, cfg: Path, k: int, n: int = 4000, typ: str = "FP", sym: str = "1", shift: str | None = None
              ) -> list[str]:
    argv = ["bash", str(inst["RG_REPO"] / "Taskfarm" / "rg_hist_manager.sh"), str(cfg), typ, VERSIONSTR, str(n),
            str(k), "100", sym]
    return argv + ([shift] if shift is not None else [])


def test_rg_fp_then_exp_layout_and_seeds(inst, rg_clean, tmp_path):
    cfg = rg_cfg(tmp_path)
    out = inst["RG_REPO"] / "job_outputs" / VERSIONSTR
    fp = out / "FP"
    for k in range(2):
        for t in range(4):
            initial, existing = ("1", "None") if k == 0 else ("0", str(fp / "data" / f"RG{k - 1}" / "laundered"))
            r = run(gen_argv(inst, cfg, k, initial=initial, existing=existing), rg_env(inst, tmp_path, cfg, t))
            assert r.returncode == 0, r.stderr + r.stdout
        step = fp / "data" / f"RG{k}"
        batches = [np.load(step / "batches" / f"batch_{t}" / f"t_data_RG{k}_1000_samples.npy") for t in range(4)]
        assert all((step / "batches" / f"batch_{t}" / "READY").read_text() == "OK" for t in range(4))
        assert all((step / "batches" / f"batch_{t}" / f"z_data_RG{k}_batch_{t}.npy").is_file() for t in range(4))
        assert len({b.tobytes() for b in batches}) == 4  # a seed per batch
        r = run(hist_argv(inst, cfg, k), rg_env(inst, tmp_path, cfg))
        assert r.returncode == 0, r.stderr + r.stdout
        for kind in ("t", "z", "sym_z", "input_t"):
            with np.load(step / "hist" / kind / f"{kind}_hist_RG{k}.npz") as h:
                assert sorted(h.files) == ["bincenters", "binedges", "histval"]
                assert h["histval"].dtype.kind == "i"  # raw counts
                assert h["histval"].sum() == (8000 if kind == "sym_z" else 4000) or kind == "z"
        done = json.loads((step / "DONE.json").read_text())
        assert set(done) == {"rg_step", "n_total", "num_batches", "batch_size", "job_id", "created", "config"}
        assert (done["rg_step"], done["n_total"], done["num_batches"], done["batch_size"]) == (k, 4000, 4, 1000)
        assert len(list((step / "laundered").glob(f"t_laundered_RG{k}_batch_*.npy"))) == 4
    assert (fp / "config" / "updated_config.yaml").read_text() == cfg.read_text()
    assert not (fp / "data" / "RG0" / "batches").exists() and not (fp / "data" / "RG0" / "laundered").exists()
    assert (fp / "data" / "RG0" / "hist").is_dir()
    with np.load(fp / "data" / "RG1" / "hist" / "z" / "z_hist_RG1.npz") as h:
        c = h["bincenters"]
        p = h["histval"] / h["histval"].sum()
        z_std = float(np.sqrt(np.sum(p * c ** 2) - np.sum(p * c) ** 2))
    assert 1.5 < z_std < 4.0  # the CC RG unit narrows nothing below ~2 at these sizes

    # EXP: shifted start from the FP's last sym_z, then step 0 with the shift at every call
    sym = fp / "data" / "RG1" / "hist" / "sym_z" / "sym_z_hist_RG1.npz"
    means = {}
    for shift in ("0.0", "0.3"):
        for t in range(4):
            r = run(["bash", str(inst["RG_REPO"] / "Taskfarm" / "gen_shifted_data.sh"), str(cfg), VERSIONSTR, "4000",
                     str(sym), "Initial", "100", shift], rg_env(inst, tmp_path, cfg, t))
            assert r.returncode == 0, r.stderr + r.stdout
        init = out / "EXP" / f"shift_{shift}" / "data" / "Initial"
        assert len(list(init.glob(f"perturbed_t_shift_{shift}_batch_*.npy"))) == 4
        for t in range(4):
            r = run(gen_argv(inst, cfg, 0, typ="EXP", initial="0", existing=str(init), shift=shift),
                    rg_env(inst, tmp_path, cfg, t))
            assert r.returncode == 0, r.stderr + r.stdout
        r = run(hist_argv(inst, cfg, 0, typ="EXP", sym="0", shift=shift), rg_env(inst, tmp_path, cfg))
        assert r.returncode == 0, r.stderr + r.stdout
        z = np.concatenate([np.load(p) for p in
                            (out / "EXP" / f"shift_{shift}" / "data" / "RG0" / "batches").glob("batch_*/z_data_*.npy")])
        means[shift] = float(np.mean(z))
    assert means["0.3"] > means["0.0"] + 0.1  # the shift survives one RG step (outputs depend on it)


@pytest.mark.parametrize("case,words", [
    ("argcount", ["expected 10 (FP) or 11 (EXP) arguments"]),
    ("not_divisible", ["N=4001 is not divisible by the batch count 4"]),
    ("no_task_max", ["SLURM_ARRAY_TASK_MAX"]),
    ("env_missing", ["HOST"]),
    ("rg_config", ["RG_CONFIG="]),
    ("no_pythonpath", ["PYTHONPATH"]),
    ("no_module", ["'module'"]),
    ("exp_no_shift", ["SHIFT"]),
    ("versionstr", ["VERSIONSTR='t1'"]),
    ("uppercase_cfg", ["lowercase"]),
    ("method", ["METHOD='exact'"]),
])
def test_rg_gen_contract_violations(inst, rg_clean, tmp_path, case, words):
    cfg = rg_cfg(tmp_path)
    env = rg_env(inst, tmp_path, cfg, task=0)
    argv = gen_argv(inst, cfg, 0)
    if case == "argcount":
        argv = argv[:-1]
    elif case == "not_divisible":
        argv = gen_argv(inst, cfg, 0, n=4001)
    elif case == "no_task_max":
        env.pop("SLURM_ARRAY_TASK_MAX")
    elif case == "env_missing":
        env.pop("HOST")
    elif case == "rg_config":
        other = tmp_path / "other.yaml"
        other.write_text("a: 1\n")
        env["RG_CONFIG"] = str(other)
    elif case == "no_pythonpath":
        env.pop("PYTHONPATH")
    elif case == "no_module":
        env["PATH"] = env["PATH"].replace(str(inst["RG_ENV"].parent / "bin") + ":", "")
    elif case == "exp_no_shift":
        argv[3] = "EXP"
    elif case == "versionstr":
        argv[4] = "t1"
    elif case == "uppercase_cfg":
        cfg.write_text("RG_Settings:\n  steps: 2\n")
    elif case == "method":
        argv[8] = "exact"
    violated(run(argv, env), *words)


def test_rg_hist_refuses_missing_batches(inst, rg_clean, tmp_path):
    cfg = rg_cfg(tmp_path)
    version_argv = gen_argv(inst, cfg, 0)
    for t in (0, 1, 3):  # batch 2 never ran
        assert run(version_argv, rg_env(inst, tmp_path, cfg, t)).returncode == 0
    r = run(hist_argv(inst, cfg, 0), rg_env(inst, tmp_path, cfg))
    violated(r, "batch_2")
    violated(run(hist_argv(inst, cfg, 0)[:-1], rg_env(inst, tmp_path, cfg)), "expected 7 (FP) or 8 (EXP)")
