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
``MPSClassifier``'s, so the figures are those of a default ``fit`` (the L2
penalty ``--alpha`` included: ``"auto"`` is the estimator's value for these
``n`` and ``m``).

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


def matmul_peak(dtype, size=2048, repeats=5, backend=None):
    """Best GFLOP/s of a ``size x size`` matrix product in ``dtype`` (on ``backend``'s device; numpy by default)."""
    xp = np if backend is None else backend.xp
    sync = (lambda: None) if backend is None else backend.synchronize
    rng = np.random.default_rng(0)
    # drawn in ``dtype`` directly, the product written into one buffer: the probe runs between
    # sweeps, with the environments resident, and must not raise the run's peak memory
    a = xp.asarray(rng.standard_normal((size, size), dtype=dtype))
    b = xp.asarray(rng.standard_normal((size, size), dtype=dtype))
    c = xp.empty((size, size), dtype=dtype)
    xp.matmul(a, b, out=c)  # warm up the BLAS threads / the GPU's library handles
    sync()
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        xp.matmul(a, b, out=c)
        sync()
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best / 1e9


def sweep_flops(n_samples, n_sites, m, d, n_labels, n_iter=1):
    """Cost-model flops of one full sweep: ``8 N n m^2 d^2 L`` per gradient step per bond.

    Each step is one forward and one gradient product over all samples (2 x 2 n
    (m d^2) (L m) flops per bond, 2 N bonds); the line search and environment
    updates are not counted.
    """
    return 8.0 * n_sites * n_samples * m * m * d * d * n_labels * n_iter


def peak_rss_gib():
    """Peak resident set size of this process so far, in GiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


REST = "rest (Python, untimed device work)"


class Breakdown:
    """Wall time per part of a bond update, by wrapping the engine's entry points.

    Parts: the fused first pass over the samples (forward product, loss
    residual, gradient product, Gram matrices), the line-search forward on the
    first ``line_search_samples``, the preconditioner (its factors from the Gram
    matrices on the host; applying them on the device), the split (small dense
    algebra on the host: ``eigh`` / SVD / QR of the merged block), the
    environment update after it, and host <-> device transfers.  Times are
    exclusive: a transfer inside the split counts as a transfer, not as split.
    What is left of a sweep (:data:`REST`) is Python and bookkeeping, and on a
    GPU also the device work queued outside the timed parts (the solver's
    update, the block merge), which the next part's opening sync waits for.

    ``parts`` replaces :attr:`PARTS`: ``(name, module, class or None, attribute)``
    rows.  With a GPU backend every part is timed between two device synchronisations
    (``backend.synchronize``), so queued device work is charged to the part
    that queued it; that serialises the sweep a little, so the breakdown's
    total runs somewhat above an uninstrumented sweep's.  The wrappers cost a
    microsecond or two a call on the CPU.
    """

    PARTS = (
        ("first pass", "tnlearn.local_problem", "LocalProblem", "forward_and_gradient"),
        ("line-search forward", "tnlearn.local_problem", "LocalProblem", "forward"),
        ("preconditioner factors", "tnlearn.solvers", "KroneckerPreconditioner", "__init__"),
        ("preconditioner apply", "tnlearn.solvers", "KroneckerPreconditioner", "__call__"),
        ("split", "tnlearn.stages.mps", "MPSHead", "split"),
        ("environments", "tnlearn.sweeps", None, "advance_past_bond"),
        ("transfers", "tnlearn.backend", "Backend", "asarray"),
        ("transfers", "tnlearn.backend", "Backend", "asnumpy"),
    )

    def __init__(self, sync=None, parts=None):
        import importlib

        self.parts_timed = self.PARTS if parts is None else tuple(parts)
        self.sync = sync or (lambda: None)
        self.reset()
        self._nested = []  # time spent in timed parts called from the part being timed
        self._originals = []
        for name, module, cls, attr in self.parts_timed:
            owner = importlib.import_module(module)
            if cls is not None:
                owner = getattr(owner, cls)
            self._originals.append((owner, attr, getattr(owner, attr)))
            setattr(owner, attr, self._timed(name, getattr(owner, attr)))

    def reset(self):
        """Zero every part (in the order they were given)."""
        self.seconds = dict.fromkeys((name for name, *_ in self.parts_timed), 0.0)

    def restore(self):
        """Unwrap the engine's entry points."""
        for owner, attr, fn in reversed(self._originals):
            setattr(owner, attr, fn)
        self._originals = []

    def _timed(self, name, fn):
        def wrapper(*a, **k):
            self.sync()
            self._nested.append(0.0)
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.sync()
                elapsed = time.perf_counter() - t
                inner = self._nested.pop()
                self.seconds[name] += elapsed - inner
                if self._nested:
                    self._nested[-1] += elapsed

        return wrapper

    def parts(self, total):
        """Seconds per part, plus the rest of ``total`` (Python, and on a GPU untimed device work)."""
        parts = dict(self.seconds)
        parts[REST] = total - sum(parts.values())
        return parts


def run(args):
    from tnlearn.backend import get_backend, resolve_chunk_size
    from tnlearn.embeddings import embed
    from tnlearn.local_problem import bond_row_bytes
    from tnlearn.solvers import SolverOptions
    from tnlearn.stages.mps import MPSHead, pca_init_cores
    from tnlearn.sweeps import SweepOptions, build_environments

    if args.alpha == "auto":  # the estimator's penalty for these n and m
        from tnlearn import MPSClassifier

        args.alpha = MPSClassifier(max_bond=args.bond)._alpha(args.n_samples)
    if args.n_iter is None:  # the estimator's steps per bond for the loss
        from tnlearn.models.mps_classifier import AUTO_N_ITER

        args.n_iter = AUTO_N_ITER[args.loss]
    dtype = np.dtype(args.dtype)
    rng = np.random.default_rng(args.seed)
    backend = get_backend(args.backend)
    breakdown = Breakdown(backend.synchronize) if args.breakdown else None
    X = rng.random((args.n_samples, args.n_sites))
    y = rng.integers(0, args.labels, args.n_samples)
    Y = np.zeros((args.n_samples, args.labels), dtype)
    Y[np.arange(args.n_samples), y] = 1
    feature_map = "trig" if args.d == 2 else f"poly{args.d - 1}"

    t0 = time.perf_counter()
    phi = backend.asarray(np.ascontiguousarray(embed(X, feature_map, dtype=dtype).transpose(1, 0, 2)))
    del X
    Y = backend.asarray(Y)
    row_bytes = bond_row_bytes(args.bond, args.d, args.labels, args.dtype)  # as MPSClassifier
    chunk_size = resolve_chunk_size(args.chunk_size, backend, row_bytes=row_bytes)
    n_chunks = -(-args.n_samples // chunk_size)
    with backend.host_threads() as threads:
        threads = min(threads or 1, n_chunks)
    print(f"chunks       : {chunk_size} samples, shared by {threads} host thread(s) (tnlearn.host_threads)", flush=True)
    cores, log_norm = pca_init_cores(phi, args.labels, args.bond, rng, backend, chunk_size)
    head = MPSHead(cores, 0, log_norm, backend)
    opts = SweepOptions(
        max_bond=args.bond,
        cutoff=0.0,
        solver=SolverOptions(args.solver, args.loss, args.n_iter, precondition=args.precondition, damping=args.damping,
                             line_search_samples=args.line_search_samples or None,
                             gram_samples=args.gram_samples or None, alpha=float(args.alpha)),
        chunk_size=chunk_size,
        truncation=args.truncation,
    )
    with backend.host_threads():
        envs = build_environments(head, phi, opts)
    backend.synchronize()
    setup = time.perf_counter() - t0
    env_gib = envs.nbytes / 2**30

    times, peaks, breakdowns = [], [], []
    try:
        _timed_sweeps(args, head, envs, phi, Y, opts, dtype, backend, breakdown, times, peaks, breakdowns)
    finally:
        if args.breakdown:
            breakdown.restore()  # the engine's entry points are patched globally: always unpatch
    return times, peaks, setup, env_gib, head, breakdowns


def _timed_sweeps(args, head, envs, phi, Y, opts, dtype, backend, breakdown, times, peaks, breakdowns):
    """Run ``args.sweeps`` timed full sweeps, appending to ``times``, ``peaks`` and ``breakdowns``."""
    from tnlearn.sweeps import full_sweep

    for _ in range(args.sweeps):
        # this machine's speed drifts (up to 2x within minutes): measure the peak next to
        # every sweep, so that each sweep's fraction of peak compares like with like
        peaks.append(matmul_peak(dtype, repeats=3, backend=backend))
        if args.breakdown:
            breakdown.reset()
        t = time.perf_counter()
        with backend.host_threads():  # as MPSClassifier.fit: the passes share the host's cores
            full_sweep(head, envs, phi, Y, opts)
        backend.synchronize()
        times.append(time.perf_counter() - t)
        if args.breakdown:
            breakdowns.append(breakdown.parts(times[-1]))


def build_parser():
    """The options of a run; their defaults are ``MPSClassifier``'s, so the engine runs as a default ``fit``."""
    from tnlearn import MPSClassifier

    from tnlearn.models.mps_classifier import AUTO_N_ITER

    defaults = MPSClassifier().get_params()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-samples", type=int, default=60000)
    p.add_argument("--n-sites", type=int, default=196)
    p.add_argument("--bond", type=int, default=20, help="max bond dimension m")
    p.add_argument("--d", type=int, default=2, help="local dimension (2: trig map)")
    p.add_argument("--labels", type=int, default=10)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--solver", choices=["gd", "cg"], default="gd")
    p.add_argument("--loss", choices=["mse", "cross_entropy"], default="mse",
                   help="the loss the sweep minimises (default: %(default)s; MPSClassifier's loss='auto' takes "
                        "cross_entropy with 3 steps per bond from n >= m^2 d^2 L / 2 samples)")
    p.add_argument("--n-iter", type=int, default=None,
                   help="gradient steps per bond (default: MPSClassifier's for the loss: "
                        f"{AUTO_N_ITER['mse']} with mse, {AUTO_N_ITER['cross_entropy']} with cross_entropy)")
    p.add_argument("--precondition", action=argparse.BooleanOptionalAction, default=defaults["precondition"],
                   help="Kronecker-factored preconditioner, as MPSClassifier's default (default: on)")
    p.add_argument("--damping", type=float, default=defaults["damping"], help="preconditioner damping (default: %(default)s)")
    p.add_argument("--gram-samples", type=int, default=defaults["gram_samples"] or 0,
                   help="samples for the Gram matrices (default: MPSClassifier's, %(default)s; 0: all)")
    p.add_argument("--line-search-samples", type=int, default=defaults["line_search_samples"] or 0,
                   help="samples for the step's curvature (default: MPSClassifier's, %(default)s; 0: all)")
    p.add_argument("--alpha", type=lambda v: v if v == "auto" else float(v), default=defaults["alpha"],
                   help="L2 penalty on the network (default: %(default)s, MPSClassifier's value for these n and m)")
    p.add_argument("--truncation", choices=["data", "svd"], default="data")
    p.add_argument("--chunk-size", type=lambda v: v if v == "auto" else int(v), default=defaults["chunk_size"],
                   help="samples per chunk (default: %(default)s, as MPSClassifier: a core's cache on numpy, 65536 cupy)")
    p.add_argument("--sweeps", type=int, default=1)
    p.add_argument("--breakdown", action="store_true",
                   help="also print where each sweep's time goes, in ms per bond")
    p.add_argument("--backend", choices=["numpy", "cupy"], default="numpy",
                   help="cupy: the sweep on a CUDA GPU, the peak a GPU matmul")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv=None):
    from tnlearn.backend import get_backend

    args = build_parser().parse_args(argv)

    device = get_backend(args.backend)
    peak32 = matmul_peak(np.float32, backend=device)
    peak64 = matmul_peak(np.float64, backend=device)
    times, peaks, setup, env_gib, head, breakdowns = run(args)
    best = min(times)
    flops = sweep_flops(args.n_samples, args.n_sites, args.bond, args.d, args.labels, args.n_iter)
    achieved = flops / best / 1e9
    # the headline divides by the highest peak measured anywhere in the run: a peak probe that
    # happened to hit a slow moment must not flatter a sweep
    peak = max([peak32 if args.dtype == "float32" else peak64] + peaks)
    fractions = [flops / t / 1e9 / p for t, p in zip(times, peaks)]
    print(f"config       : n={args.n_samples} N={args.n_sites} m={args.bond} d={args.d} L={args.labels} "
          f"{args.dtype} solver={args.solver} loss={args.loss} n_iter={args.n_iter} precondition={args.precondition} "
          f"damping={args.damping} alpha={args.alpha:.4g} gram_samples={args.gram_samples} "
          f"line_search_samples={args.line_search_samples} "
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
    n_bonds = 2 * (args.n_sites - 1)
    for k, parts in enumerate(breakdowns):
        print(f"breakdown {k + 1}  : " + ", ".join(f"{name} {1e3 * v / n_bonds:.2f}" for name, v in parts.items())
              + " ms per bond")
    return 0


if __name__ == "__main__":
    sys.exit(main())
