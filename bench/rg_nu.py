"""Benchmark (prints, does not assert): the critical exponent nu of the reference RG payload.

Runs the reference payload's FP then EXP campaign in this process, with the campaign's own
semantics (the same functions the batch jobs run: ``generate_t`` per batch with the seed of
(seed, step, batch), 1000-bin z histograms on [-25, 25]; FP steps 1..fp_steps from the
initial distribution, symmetrised; EXP: each shift applied once to the FP's last
symmetrised histogram, then steps 1..exp_steps on the plain z histograms), then reports nu
= ln(2^n) / ln|slope_n| from the z peak and the z mean exactly as the campaign's report
does (``batchsite.campaign.rg.critical_exponent``), next to the published values.

    .venv/bin/python bench/rg_nu.py                      # bench size: 2e6 samples/step, about 3 min on 2 cores
    .venv/bin/python bench/rg_nu.py --samples 20000 --fp-steps 4 --exp-steps 3   # CI size, a few seconds

No scheduler is involved (the scheduler does not change the numbers: the campaign runs the
same functions in its batch jobs); ``--workers`` spreads the batches over processes.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext

import numpy as np

from batchsite.campaign.rg import critical_exponent, format_nu, parse_params, z_moments
from batchsite.include.rg_reference.generate import generate_t, make_rng
from batchsite.include.rg_reference.rg_unit import t_to_z

BINS, ZRANGE = 1000, 25.0
Hist = tuple[np.ndarray, np.ndarray]


def _batch(args: tuple[int, int, int, int, Hist | None, float]) -> np.ndarray:
    seed, step, batch, samples, hist, shift = args
    return t_to_z(generate_t(step, samples, make_rng(seed, step, batch), hist=hist, shift=shift))


def rg_step(mapper: Callable[[Callable, Iterable], Iterable], seed: int, step: int, samples: int, batches: int, hist: Hist | None,
            shift: float, symmetrise: bool) -> tuple[Hist, Hist]:
    """One step of ``samples`` in ``batches`` batches: (z histogram, the histogram the next step samples)."""
    per_batch = -(-samples // batches)
    z = np.concatenate(list(mapper(_batch, [(seed, step, b, per_batch, hist, shift) for b in range(batches)])))
    zh = np.histogram(z, bins=BINS, range=(-ZRANGE, ZRANGE), density=True)
    if not symmetrise:
        return zh, zh
    return zh, np.histogram(np.concatenate((z, -z)), bins=BINS, range=(-ZRANGE, ZRANGE), density=True)


def run(samples: int, batches: int, fp_steps: int, exp_steps: int, shifts: list[float], seed: int,
        workers: int) -> tuple[str, list]:
    params = parse_params({"type": "EXP", "version": "bench", "steps": exp_steps, "samples": samples,
                           "batches": batches, "throttle": 1, "seed": seed, "shifts": shifts,
                           "max_samples": max(samples, 100)})
    lines = []
    with ProcessPoolExecutor(workers) if workers > 1 else nullcontext() as pool:
        mapper = pool.map if pool is not None else map
        hist: Hist | None = None
        for k in range(1, fp_steps + 1):
            zh, hist = rg_step(mapper, seed, k, samples, batches, hist, 0.0, symmetrise=True)
            m = z_moments(*zh)
            lines.append(f"FP RG step {k}: z mean {m['z_mean']:+.4f}  z std {m['z_std']:.4f}")
        fp = hist
        per_shift: dict[float, dict[int, dict[str, float]]] = {}
        for s in shifts:
            per_shift[s] = {}
            hist = fp
            for k in range(1, exp_steps + 1):
                # the shift is applied once, at step 1; then the shifted law flows (reference semantics)
                zh, hist = rg_step(mapper, seed + 1, k, samples, batches, hist, s if k == 1 else 0.0, symmetrise=False)
                per_shift[s][k] = z_moments(*zh)
    rows = critical_exponent(params, per_shift)
    return "\n".join([*lines, format_nu(rows)]), rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=2_000_000, help="samples per RG step (default 2e6)")
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--fp-steps", type=int, default=8)
    ap.add_argument("--exp-steps", type=int, default=4)
    ap.add_argument("--shifts", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3])
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    t0 = time.monotonic()
    text, _ = run(a.samples, a.batches, a.fp_steps, a.exp_steps, a.shifts, a.seed, a.workers)
    print(text)
    print(f"({a.samples} samples/step, {a.fp_steps} FP + {len(a.shifts)} x {a.exp_steps} EXP steps, "
          f"{time.monotonic() - t0:.0f} s with {a.workers} workers)")


if __name__ == "__main__":
    main()
