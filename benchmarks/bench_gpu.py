"""Seconds per DMRG sweep on the CPU (numpy) and on a CUDA GPU (cupy), and where the GPU's time goes.

For each bond dimension (default m = 20 and m = 64) on MNIST-shaped synthetic
data (60,000 samples, 196 sites, 10 labels; a sweep's cost depends only on the
shapes), the same engine with the estimator's defaults runs full sweeps on
both backends:

* seconds per full sweep, best of ``--sweeps`` (the first GPU sweep also
  compiles cupy's kernels) and of ``--cpu-sweeps`` on this machine's CPU, with
  all cores and with BLAS held to 2 threads (``--cpu-threads``: the reference
  machine's core count, on this processor); the speed-ups, and the speed-up
  over a reference CPU figure (``--cpu-reference``, default the project's
  2-core figure of ``bench_sweep.py``: 13.82 s at m = 20);
* one more GPU sweep with every part timed between device synchronisations
  (``bench_sweep.Breakdown``): the fraction of the sweep spent in the host's
  small dense algebra (the split's ``eigh`` / SVD / QR and the preconditioner's
  factors: what the issue calls "SVD"), in host <-> device transfers (each
  part is timed between two syncs, so a transfer's share is its copy, and the
  wait for queued work is charged to the part that queued it), in device
  passes over the samples, and in Python with the untimed device work.

``--accuracy DATASET`` also trains ``MPSClassifier`` on a real data set with
both backends (same seed) and prints test accuracy after every sweep, so a GPU
speed-up is quoted only next to matching accuracy::

    python benchmarks/bench_gpu.py                              # timings, m = 20 and 64
    python benchmarks/bench_gpu.py --bonds 20 --accuracy fashion-mnist --data-dir DIR

Without a usable GPU it stops with the reason (exit status 2): GPU figures
come only from a GPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_sweep import REST, Breakdown, matmul_peak, sweep_flops  # noqa: E402

HOST_ALGEBRA = ("split", "preconditioner factors")
TRANSFERS = ("transfers",)
DEVICE_PASSES = ("first pass", "line-search forward", "environments", "preconditioner apply")


def sweep_args(bond, backend, sweeps, n_samples, n_sites, breakdown=False):
    """The ``bench_sweep`` options of one configuration, otherwise its defaults (the estimator's).

    ``backend`` is a name or a :class:`~tnlearn.backend.Backend` object.
    """
    from bench_sweep import build_parser

    args = build_parser().parse_args([])
    args.bond, args.sweeps, args.n_samples, args.n_sites = bond, sweeps, n_samples, n_sites
    args.breakdown, args.backend = breakdown, backend
    return args


def time_sweeps(bond, backend, sweeps, args, breakdown=False, cpu_threads=None):
    """``(seconds per sweep, breakdown parts of the last sweep or None)``.

    ``cpu_threads`` caps the BLAS threads (threadpoolctl) for the run, e.g. 2 to
    measure a 2-core CPU figure on the GPU machine's own processor.
    """
    from contextlib import nullcontext

    from bench_sweep import run
    from threadpoolctl import threadpool_limits

    limit = nullcontext() if cpu_threads is None else threadpool_limits(limits=cpu_threads, user_api="blas")
    with limit:
        times, _, _, _, _, parts = run(sweep_args(bond, backend, sweeps, args.n_samples, args.n_sites, breakdown))
    return times, (parts[-1] if parts else None)


def device_memory(backend):
    """``(pool high-water GiB, device GiB in use)`` of a cupy backend, or ``None`` on numpy.

    cupy's default memory pool keeps every block it allocated until it is told
    to free them, so after :func:`reset_device_memory` its total is the most
    memory the runs since then held at once (plus fragmentation): their peak.
    The second figure is what the whole device reports in use
    (``cudaMemGetInfo``), the CUDA context included.
    """
    xp = backend.xp
    if not hasattr(xp, "get_default_memory_pool"):
        return None
    free, total = xp.cuda.runtime.memGetInfo()
    return xp.get_default_memory_pool().total_bytes() / 2**30, (total - free) / 2**30


def reset_device_memory(backend):
    """Return cupy's pooled blocks to the device, so that :func:`device_memory` measures what follows."""
    xp = backend.xp
    if hasattr(xp, "get_default_memory_pool"):
        xp.get_default_memory_pool().free_all_blocks()


def fractions(parts):
    """Shares of a sweep: host algebra, transfers, device passes, the rest.

    Parameters
    ----------
    parts : dict
        Seconds per part, as :meth:`bench_sweep.Breakdown.parts` returns them.

    Returns
    -------
    dict
        Fraction of the sweep per share (they sum to 1).
    """
    total = sum(parts.values())
    share = lambda names: sum(parts.get(n, 0.0) for n in names) / total  # noqa: E731
    return {
        "host dense algebra (split eigh/SVD/QR, preconditioner factors)": share(HOST_ALGEBRA),
        "host <-> device transfers": share(TRANSFERS),
        "device passes over the samples": share(DEVICE_PASSES),
        "Python and untimed device work (solver update, merge)": share((REST,)),
    }


def accuracy_runs(dataset, data_dir, bond, n_sweeps, seed=0):
    """Test accuracy after every sweep and seconds per sweep, numpy and cupy, same seed."""
    from tnlearn import MPSClassifier
    from tnlearn.datasets import flatten_images, load_dataset

    ds = load_dataset(dataset, data_dir=data_dir, download=False)
    X_train, X_test = flatten_images(ds.X_train), flatten_images(ds.X_test)
    out = {}
    for backend in ("numpy", "cupy"):
        model = MPSClassifier(max_bond=bond, n_sweeps=n_sweeps, backend=backend, random_state=seed)
        t = time.perf_counter()
        model.fit(X_train, ds.y_train, eval_set=(X_test, ds.y_test))
        out[backend] = ([r.test_accuracy for r in model.history_.records],
                        [r.seconds for r in model.history_.records], time.perf_counter() - t)
    return ds, out


def main(argv=None):
    from tnlearn.backend import BackendUnavailableError, get_backend

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bonds", type=int, nargs="+", default=[20, 64], help="bond dimensions m (default: 20 64)")
    p.add_argument("--n-samples", type=int, default=60000)
    p.add_argument("--n-sites", type=int, default=196)
    p.add_argument("--sweeps", type=int, default=3, help="timed GPU sweeps per m (best reported)")
    p.add_argument("--cpu-sweeps", type=int, default=1, help="timed CPU sweeps per m (0: skip the CPU)")
    p.add_argument("--cpu-threads", type=int, nargs="*", default=[0, 2],
                   help="BLAS threads of the CPU runs, 0 for all (default: 0 2: all cores, and the "
                        "reference machine's 2 cores on this processor)")
    p.add_argument("--cpu-reference", type=float, nargs="*", default=[13.82],
                   help="reference CPU seconds per sweep, one per m in order (default: the 2-core m = 20 figure)")
    p.add_argument("--accuracy", metavar="DATASET", choices=["digits", "mnist", "fashion-mnist"],
                   help="also train on this data set with both backends and compare test accuracy")
    p.add_argument("--accuracy-sweeps", type=int, default=3)
    p.add_argument("--data-dir", default=None, help="directory with the IDX files of --accuracy")
    args = p.parse_args(argv)

    try:
        gpu = get_backend("cupy")
    except BackendUnavailableError as exc:
        print(f"bench_gpu: {exc}. GPU figures come only from a GPU; on this machine use bench_sweep.py.",
              file=sys.stderr)
        return 2
    props = gpu.xp.cuda.runtime.getDeviceProperties(gpu.xp.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    print(f"GPU          : {name}, cupy {gpu.xp.__version__}; float32 matmul peak "
          f"{matmul_peak(np.float32, 8192, 3, gpu) / 1e3:.1f} TFLOP/s (8192^2)")
    print(f"CPU          : float32 matmul peak {matmul_peak(np.float32):.0f} GFLOP/s (2048^2, numpy)")
    references = dict(zip(args.bonds, args.cpu_reference))

    for m in args.bonds:
        flops = sweep_flops(args.n_samples, args.n_sites, m, 2, 10)
        reset_device_memory(gpu)
        gpu_times, _ = time_sweeps(m, "cupy", args.sweeps, args)
        memory = device_memory(gpu)
        _, parts = time_sweeps(m, "cupy", 1, args, breakdown=True)
        best = min(gpu_times)
        print(f"\nm = {m}, n = {args.n_samples}, N = {args.n_sites} ({flops / 1e12:.2f} TFLOP per sweep, cost model)")
        print(f"  GPU (cupy)   : {', '.join(f'{t:.3f}' for t in gpu_times)} s per sweep; best {best:.3f} s "
              f"= {flops / best / 1e12:.2f} TFLOP/s")
        if memory is not None:
            print(f"  GPU memory   : peak {memory[0]:.2f} GiB in cupy's pool (data, environments, chunk "
                  f"temporaries); {memory[1]:.2f} GiB in use on the device with the CUDA context")
        for threads in (args.cpu_threads if args.cpu_sweeps else []):
            cpu_times, _ = time_sweeps(m, "numpy", args.cpu_sweeps, args, cpu_threads=threads or None)
            cores = "all cores" if not threads else f"{threads} BLAS threads"
            print(f"  CPU (numpy)  : {', '.join(f'{t:.2f}' for t in cpu_times)} s per sweep on this machine's "
                  f"CPU, {cores} -> GPU speed-up {min(cpu_times) / best:.1f}x")
        if m in references:
            print(f"  reference CPU: {references[m]:.2f} s per sweep -> GPU speed-up {references[m] / best:.1f}x")
        n_bonds = 2 * (args.n_sites - 1)
        total = sum(parts.values())
        print(f"  instrumented GPU sweep (every part between two device syncs): {total:.3f} s; "
              + ", ".join(f"{k} {1e3 * v / n_bonds:.3f}" for k, v in parts.items()) + " ms per bond")
        for what, share in fractions(parts).items():
            print(f"    {100 * share:5.1f}%  {what}")

    if args.accuracy:
        ds, runs = accuracy_runs(args.accuracy, args.data_dir, args.bonds[0], args.accuracy_sweeps)
        print(f"\naccuracy     : {ds.name}, {len(ds.y_train)} train / {len(ds.y_test)} test, m = {args.bonds[0]}")
        for backend, (accs, secs, wall) in runs.items():
            print(f"  {backend:6s}: test accuracy per sweep {' / '.join(f'{100 * a:.2f}' for a in accs)}%; "
                  f"sweeps {' / '.join(f'{s:.2f}' for s in secs)} s; fit {wall:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
