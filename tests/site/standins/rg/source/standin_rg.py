"""Physics of the RG stand-in job scripts (real numpy; the CC RG unit of batchsite's reference).

Run by the Taskfarm stand-ins as ``python -m source.standin_rg <command> ...``:

    gen   OUT_DIR K BATCH_SIZE SEED TASK_ID INITIAL T_INPUT|-      one generation batch
    hist  STEP_DIR K N NUM_BATCHES BATCH_SIZE SEED TYPE SYMMETRISE  aggregation of step K
    shift OUT_FILE BATCH_SIZE INPUT_HIST SEED SHIFT                 perturbed FP samples (EXP start)

``gen`` draws 5*BATCH_SIZE input amplitudes (the initial distribution when INITIAL=1, else
resampled from T_INPUT) and applies the RG unit once; it writes
``t_data_RG{K}_{BATCH_SIZE}_samples.npy`` and ``z_data_RG{K}_batch_{TASK_ID}.npy``.
``hist`` writes raw-count histograms (keys ``histval``, ``binedges``, ``bincenters``) to
``hist/{t,z,sym_z,input_t}/<name>_hist_RG{K}.npz`` and the laundered input of the next step
``laundered/t_laundered_RG{K}_batch_{b}.npy``. Importing ``constants`` enforces the seven
environment variables. Every write is a temporary name then a rename.
"""

from __future__ import annotations

import io
import os
import sys

import numpy as np

import constants  # noqa: F401  (raises when the seven environment variables are missing)

from .rg_unit import initial_z, rg_transform, draw_phases, sample_z_from_hist, t_to_z, z_to_tr

Z_EDGES = np.linspace(-constants.Z_RANGE, constants.Z_RANGE, constants.Z_BINS + 1)
T_EDGES = np.linspace(0.0, 1.0, constants.T_BINS + 1)


def fail(message: str) -> None:
    print(f"STANDIN CONTRACT VIOLATION in source.standin_rg: {message}", file=sys.stderr)
    sys.exit(64)


def atomic_bytes(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp.{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def save_npy(path: str, arr: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    atomic_bytes(path, buf.getvalue())


def save_hist(path: str, values: np.ndarray, edges: np.ndarray) -> None:
    counts, _ = np.histogram(values, bins=edges)
    buf = io.BytesIO()
    np.savez(buf, histval=counts.astype(np.int64), binedges=edges, bincenters=0.5 * (edges[:-1] + edges[1:]))
    atomic_bytes(path, buf.getvalue())


def load_t(path: str) -> np.ndarray:
    if not os.path.isfile(path):
        fail(f"input t file {path} does not exist")
    t = np.load(path, allow_pickle=False)
    if t.ndim != 1 or t.size == 0 or not np.all((t >= 0) & (t <= 1)):
        fail(f"{path}: expected a non-empty 1-D array of amplitudes in [0, 1]")
    return t.astype(np.float64)


def load_counts(path: str) -> tuple[np.ndarray, np.ndarray]:
    if not os.path.isfile(path):
        fail(f"histogram {path} does not exist")
    with np.load(path, allow_pickle=False) as d:
        missing = [k for k in ("histval", "binedges", "bincenters") if k not in d.files]
        if missing:
            fail(f"{path}: missing key(s) {missing}")
        return d["histval"].astype(np.float64), d["binedges"].astype(np.float64)


def cmd_gen(out_dir: str, k: int, batch_size: int, seed: int, task_id: int, initial: int, t_input: str) -> None:
    rng = np.random.default_rng(seed)
    n_in = 5 * batch_size
    if initial == 1:
        t, r = z_to_tr(initial_z(n_in, rng))
        t, r = t.reshape(5, batch_size), r.reshape(5, batch_size)
    else:
        pool = load_t(t_input)
        t = pool[rng.integers(0, pool.size, n_in)].reshape(5, batch_size)
        r = np.sqrt(np.clip(1.0 - t * t, 0.0, 1.0))
    t_out = rg_transform(t, draw_phases(rng, batch_size), r=r)
    save_npy(os.path.join(out_dir, f"t_data_RG{k}_{batch_size}_samples.npy"), t_out)
    save_npy(os.path.join(out_dir, f"z_data_RG{k}_batch_{task_id}.npy"), t_to_z(t_out))
    z = t_to_z(t_out)
    print(f"gen RG{k} batch {task_id}: seed {seed} samples {t_out.size} z_mean {z.mean():+.4f} z_std {z.std():.4f}")


def cmd_hist(step_dir: str, k: int, n_total: int, num_batches: int, batch_size: int, seed: int,
             run_type: str, symmetrise: int) -> None:
    t_parts, z_parts = [], []
    for b in range(num_batches):
        bdir = os.path.join(step_dir, "batches", f"batch_{b}")
        t_parts.append(load_t(os.path.join(bdir, f"t_data_RG{k}_{batch_size}_samples.npy")))
        z_path = os.path.join(bdir, f"z_data_RG{k}_batch_{b}.npy")
        if not os.path.isfile(z_path):
            fail(f"{z_path} missing")
        z_parts.append(np.load(z_path, allow_pickle=False))
    t = np.concatenate(t_parts)
    z = np.concatenate(z_parts)
    if t.size != n_total:
        fail(f"step {k}: {t.size} samples in the batches, N={n_total}")
    hist = os.path.join(step_dir, "hist")
    save_hist(os.path.join(hist, "t", f"t_hist_RG{k}.npz"), t, T_EDGES)
    save_hist(os.path.join(hist, "z", f"z_hist_RG{k}.npz"), z, Z_EDGES)
    if symmetrise:
        save_hist(os.path.join(hist, "sym_z", f"sym_z_hist_RG{k}.npz"), np.concatenate([z, -z]), Z_EDGES)
        source = os.path.join(hist, "sym_z", f"sym_z_hist_RG{k}.npz")
    elif run_type == "EXP":
        source = os.path.join(hist, "t", f"t_hist_RG{k}.npz")
    else:
        source = os.path.join(hist, "z", f"z_hist_RG{k}.npz")
    counts, edges = load_counts(source)
    laundered = []
    for b in range(num_batches):
        rng = np.random.default_rng(np.random.SeedSequence([seed, k, b, 0x1A]))
        draw = sample_z_from_hist(counts, edges, batch_size, rng)
        t_b = draw if source.endswith(f"t_hist_RG{k}.npz") else z_to_tr(draw)[0]
        save_npy(os.path.join(step_dir, "laundered", f"t_laundered_RG{k}_batch_{b}.npy"), t_b)
        laundered.append(t_b)
    save_hist(os.path.join(hist, "input_t", f"input_t_hist_RG{k}.npz"), np.concatenate(laundered), T_EDGES)
    print(f"hist RG{k}: {t.size} samples z_mean {z.mean():+.4f} z_std {z.std():.4f} laundered from {source}")


def cmd_shift(out_file: str, batch_size: int, input_hist: str, seed: int, shift: float) -> None:
    counts, edges = load_counts(input_hist)
    rng = np.random.default_rng(seed)
    z = sample_z_from_hist(counts, edges, batch_size, rng) + shift
    save_npy(out_file, z_to_tr(z)[0])
    print(f"shift {shift}: {batch_size} samples from {input_hist} -> {out_file}")


def main(argv: list[str]) -> int:
    if not argv:
        fail("expected a command: gen, hist or shift")
    cmd, rest = argv[0], argv[1:]
    try:
        if cmd == "gen" and len(rest) == 7:
            cmd_gen(rest[0], int(rest[1]), int(rest[2]), int(rest[3]), int(rest[4]), int(rest[5]), rest[6])
        elif cmd == "hist" and len(rest) == 8:
            cmd_hist(rest[0], int(rest[1]), int(rest[2]), int(rest[3]), int(rest[4]), int(rest[5]), rest[6],
                     int(rest[7]))
        elif cmd == "shift" and len(rest) == 5:
            cmd_shift(rest[0], int(rest[1]), rest[2], int(rest[3]), float(rest[4]))
        else:
            fail(f"bad command line {argv!r}")
    except ValueError as exc:
        fail(f"bad number in {argv!r}: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
