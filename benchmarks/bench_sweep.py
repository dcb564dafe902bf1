"""Time full DMRG sweeps on synthetic data and compare with the machine's matmul peak.

Prints, for one configuration: seconds per full sweep (right and back), the
achieved GFLOP/s according to the cost model of ALGORITHMS.md (a full sweep is
``8 N n m^2 d^2 L`` flops: a forward and a gradient product of
``2 n m^2 d^2 L`` flops at each of the ``2 (N - 1)`` bond visits), the
float32 / float64 matmul peak of this machine measured in the same run
(2048 x 2048 products, once at the start and again before every sweep), the
fraction of peak (the headline: the best sweep against the highest peak
measured in the run), the time spent outside the sweep (initialisation,
environments), and the peak resident memory.  ``--breakdown`` adds where each
sweep's time goes, in milliseconds per bond.  The solver settings default to
``MPSClassifier``'s, so the figures are those of a default ``fit``.

Example (the issue's reference configuration)::

    python benchmarks/bench_sweep.py --n-samples 60000 --n-sites 196 --bond 20 --sweeps 4 --breakdown

Data are random pixels in [0, 1] with random labels: the timing of a sweep does
not depend on what the data mean, only on the shapes (the bond dimensions are
all ``m`` after the PCA initialisation).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import numpy as np


def matmul_peak(dtype, size=2048, repeats=5):
    """Best GFLOP/s of a ``size x size`` matrix product in ``dtype``."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size)).astype(dtype)
    b = rng.standard_normal((size, size)).astype(dtype)
    a @ b  # warm up the BLAS threads
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best / 1e9


def sweep_flops(n_samples, n_sites, m, d, n_labels):
    """Cost-model flops of one full sweep: ``8 N n m^2 d^2 L``."""
    return 8.0 * n_sites * n_samples * m * m * d * d * n_labels


def peak_rss_gib():
    """Peak resident set size of this process so far, in GiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class Breakdown:
    """Wall time per part of a bond update, by wrapping the engine's entry points.

    Parts: the fused first pass over the samples (forward product, loss
    residual, gradient product, Gram matrices), the line-search forward on the
    first ``line_search_samples``, the preconditioner (build and apply), the
    split (``MPSHead.split``) and the environment update after it.  What is
    left of a sweep is Python and bookkeeping.  The wrappers cost about a
    microsecond a call.
    """

    PARTS = (
        ("first pass", "tnlearn.local_problem", "LocalProblem", "forward_and_gradient"),
        ("line-search forward", "tnlearn.local_problem", "LocalProblem", "forward"),
        ("preconditioner", "tnlearn.solvers", "KroneckerPreconditioner", "__init__"),
        ("preconditioner", "tnlearn.solvers", "KroneckerPreconditioner", "__call__"),
        ("split", "tnlearn.stages.mps", "MPSHead", "split"),
        ("environments", "tnlearn.sweeps", None, "advance_past_bond"),
    )

    def __init__(self):
        import importlib

        self.seconds = {}
        for name, module, cls, attr in self.PARTS:
            owner = importlib.import_module(module)
            if cls is not None:
                owner = getattr(owner, cls)
            setattr(owner, attr, self._timed(name, getattr(owner, attr)))

    def _timed(self, name, fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t

        return wrapper

    def report(self, total, n_bonds):
        """One line: milliseconds per bond of every part and of the rest."""
        parts = dict(self.seconds)
        parts["rest (Python, bookkeeping)"] = total - sum(parts.values())
        return ", ".join(f"{k} {1e3 * v / n_bonds:.2f}" for k, v in parts.items()) + " ms per bond"


def run(args):
    from tnlearn.backend import get_backend
    from tnlearn.embeddings import embed
    from tnlearn.solvers import SolverOptions
    from tnlearn.stages.mps import MPSHead, pca_init_cores
    from tnlearn.sweeps import SweepOptions, build_environments, full_sweep

    breakdown = Breakdown() if args.breakdown else None
    dtype = np.dtype(args.dtype)
    rng = np.random.default_rng(args.seed)
    backend = get_backend(args.backend)
    X = rng.random((args.n_samples, args.n_sites))
    y = rng.integers(0, args.labels, args.n_samples)
    Y = np.zeros((args.n_samples, args.labels), dtype)
    Y[np.arange(args.n_samples), y] = 1
    feature_map = "trig" if args.d == 2 else f"poly{args.d - 1}"

    t0 = time.perf_counter()
    phi = backend.asarray(np.ascontiguousarray(embed(X, feature_map, dtype=dtype).transpose(1, 0, 2)))
    del X
    Y = backend.asarray(Y)
    cores, log_norm = pca_init_cores(phi, args.labels, args.bond, rng, backend, args.chunk_size)
    head = MPSHead(cores, 0, log_norm, backend)
    opts = SweepOptions(
        max_bond=args.bond,
        cutoff=0.0,
        solver=SolverOptions(args.solver, "mse", args.n_iter, precondition=args.precondition, damping=args.damping,
                             line_search_samples=args.line_search_samples or None,
                             gram_samples=args.gram_samples or None),
        chunk_size=args.chunk_size,
        truncation=args.truncation,
    )
    envs = build_environments(head, phi, opts)
    setup = time.perf_counter() - t0
    env_gib = envs.nbytes / 2**30

    times, peaks, breakdowns = [], [], []
    for _ in range(args.sweeps):
        # this machine's speed drifts (up to 2x within minutes): measure the peak next to
        # every sweep, so that each sweep's fraction of peak compares like with like
        peaks.append(matmul_peak(dtype, repeats=3))
        if args.breakdown:
            breakdown.seconds.clear()
        t = time.perf_counter()
        full_sweep(head, envs, phi, Y, opts)
        times.append(time.perf_counter() - t)
        if args.breakdown:
            breakdowns.append(breakdown.report(times[-1], 2 * (args.n_sites - 1)))
    return times, peaks, setup, env_gib, head, breakdowns


def main(argv=None):
    from tnlearn import MPSClassifier

    defaults = MPSClassifier().get_params()  # the engine runs as the estimator would run it
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-samples", type=int, default=60000)
    p.add_argument("--n-sites", type=int, default=196)
    p.add_argument("--bond", type=int, default=20, help="max bond dimension m")
    p.add_argument("--d", type=int, default=2, help="local dimension (2: trig map)")
    p.add_argument("--labels", type=int, default=10)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--solver", choices=["gd", "cg"], default="gd")
    p.add_argument("--n-iter", type=int, default=defaults["n_iter"])
    p.add_argument("--precondition", action=argparse.BooleanOptionalAction, default=defaults["precondition"],
                   help="Kronecker-factored preconditioner, as MPSClassifier's default (default: on)")
    p.add_argument("--damping", type=float, default=defaults["damping"], help="preconditioner damping (default: %(default)s)")
    p.add_argument("--gram-samples", type=int, default=defaults["gram_samples"] or 0,
                   help="samples for the Gram matrices (default: MPSClassifier's, %(default)s; 0: all)")
    p.add_argument("--line-search-samples", type=int, default=defaults["line_search_samples"] or 0,
                   help="samples for the step's curvature (default: MPSClassifier's, %(default)s; 0: all)")
    p.add_argument("--truncation", choices=["data", "svd"], default="data")
    p.add_argument("--chunk-size", type=int, default=defaults["chunk_size"])
    p.add_argument("--sweeps", type=int, default=1)
    p.add_argument("--breakdown", action="store_true",
                   help="also print where each sweep's time goes, in ms per bond")
    p.add_argument("--backend", default="numpy")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    peak32 = matmul_peak(np.float32)
    peak64 = matmul_peak(np.float64)
    times, peaks, setup, env_gib, head, breakdowns = run(args)
    best = min(times)
    flops = sweep_flops(args.n_samples, args.n_sites, args.bond, args.d, args.labels)
    achieved = flops / best / 1e9
    # the headline divides by the highest peak measured anywhere in the run: a peak probe that
    # happened to hit a slow moment must not flatter a sweep
    peak = max([peak32 if args.dtype == "float32" else peak64] + peaks)
    fractions = [flops / t / 1e9 / p for t, p in zip(times, peaks)]
    print(f"config       : n={args.n_samples} N={args.n_sites} m={args.bond} d={args.d} L={args.labels} "
          f"{args.dtype} solver={args.solver} n_iter={args.n_iter} precondition={args.precondition} "
          f"damping={args.damping} gram_samples={args.gram_samples} line_search_samples={args.line_search_samples} "
          f"truncation={args.truncation}")
    print(f"matmul peak  : {peak32:.1f} GFLOP/s float32, {peak64:.1f} GFLOP/s float64 (2048^2, this run)")
    print(f"set-up       : {setup:.1f} s (embedding, PCA initialisation, environments)")
    print(f"sweep        : {', '.join(f'{t:.2f}' for t in times)} s per full sweep (best {best:.2f} s)")
    print(f"cost model   : {flops / 1e12:.3f} TFLOP per sweep -> best sweep {achieved:.1f} GFLOP/s = "
          f"{100 * achieved / peak:.0f}% of the highest {args.dtype} peak measured in this run ({peak:.1f})")
    print("each sweep   : " + ", ".join(f"{t:.2f} s at {100 * f:.0f}% of {p:.0f}" for t, f, p in
                                          zip(times, fractions, peaks))
          + " GFLOP/s measured just before it")
    print(f"environments : {env_gib:.2f} GiB; peak RSS {peak_rss_gib():.2f} GiB; bond dims max {max(head.bond_dims)}")
    for k, line in enumerate(breakdowns):
        print(f"breakdown {k + 1}  : {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
