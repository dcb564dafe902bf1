"""Data-parallel DMRG sweeps over MPI: sweep time against the number of ranks, bytes moved.

Run it as a plain script; it launches itself under ``mpiexec`` (the mpich
wheel's, ``pip install 'tnlearn[mpi]'``) once per configuration::

    python benchmarks/bench_mpi.py                       # 1 and 2 ranks, 12,000 samples, 64 sites, m = 16
    python benchmarks/bench_mpi.py --ranks 1 2 4 --n-samples 60000 --n-sites 196 --bond 20

Configurations: ``K`` ranks with one BLAS thread each (``K = 1, 2, ...``) and,
for reference, one rank with as many BLAS threads as the largest ``K`` (what a
single process gets from the same cores).  Every run times the same full
sweeps on the same synthetic data (random pixels, random labels: the timing
depends on the shapes only), after the PCA initialisation and the environments.

Printed per configuration: seconds per full sweep (the best and the median of
``--sweeps``; the best is the least disturbed by other processes),
the speed-up over one rank with one thread, the bytes this rank passed to
``Allreduce`` and ``Bcast`` per sweep (counted by the communicator), and the
time rank 0 spent in the splits (the serial part of every bond).  Then the
traffic model:

* the issue's estimate, ``2 N m^2 d^2 L`` values per sweep (one gradient block
  per bond visit);
* the exact payload from the actual bond dimensions: per bond, the gradient
  block ``Dl d d L Dr`` (model dtype), the two Gram matrices
  ``(Dl d)^2 + (d Dr)^2`` (float64), the broadcast of the two new cores, and a
  few scalars.

Finally a projection to many nodes from the measured per-rank throughput and
split time and an assumed network (latency ``alpha``, bandwidth ``beta``; see
benchmarks/README.md).  Keep runs short: a 2-core machine shows the mechanics,
not cluster performance.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


# ------------------------------------------------------------------------------ worker
def worker(args):
    """One MPI run: shard, initialise, time sweeps; rank 0 prints one JSON line."""
    from tnlearn.backend import get_backend
    from tnlearn.distributed import get_comm, make_shard
    from tnlearn.solvers import SolverOptions
    from tnlearn.stages.mps import MPSHead, pca_init_cores
    from tnlearn.sweeps import SweepOptions, build_environments, full_sweep

    comm = get_comm("mpi")
    be = get_backend("numpy")
    dtype = np.dtype(args.dtype)
    rng = np.random.default_rng(0)
    n, N, m, d, L = args.n_samples, args.n_sites, args.bond, 2, args.n_labels
    shard = make_shard(comm, n, be) if comm.size > 1 else None
    start, stop = (shard.start, shard.stop) if shard else (0, n)
    x = rng.random((n, N))[start:stop]  # the same data on every rank, then this rank's part
    labels = rng.integers(0, L, n)[start:stop]
    phi = np.empty((N, stop - start, d), dtype=dtype)
    phi[..., 0], phi[..., 1] = np.cos(np.pi / 2 * x).T, np.sin(np.pi / 2 * x).T
    y = np.zeros((stop - start, L), dtype=dtype)
    y[np.arange(stop - start), labels] = 1
    opts = SweepOptions(max_bond=m, solver=SolverOptions(precondition=True), chunk_size=args.chunk_size)
    cores, log_norm = pca_init_cores(phi, L, m, np.random.default_rng(1), be, args.chunk_size, shard=shard)
    head = MPSHead(cores, 0, log_norm, be)
    envs = build_environments(head, phi, opts)

    split_seconds = [0.0]
    split = head.split

    def timed_split(*a, **k):
        t = time.perf_counter()
        out = split(*a, **k)
        split_seconds[0] += time.perf_counter() - t
        return out

    head.split = timed_split  # instance attribute: times rank 0's splits only (the others skip them)
    times, traffic = [], None
    for _ in range(args.sweeps):
        comm.barrier()
        comm.stats.reset()
        split_seconds[0] = 0.0
        t = time.perf_counter()
        full_sweep(head, envs, phi, y, opts, shard=shard)
        comm.barrier()
        times.append(time.perf_counter() - t)
        traffic = dict(vars(comm.stats))
    if comm.rank == 0:
        print(json.dumps({
            "ranks": comm.size, "threads": int(os.environ.get("OMP_NUM_THREADS", "0")),
            "seconds": float(np.min(times)), "median_seconds": float(np.median(times)), "all_seconds": times,
            "traffic": traffic,
            "split_seconds": split_seconds[0], "bond_dims": head.bond_dims,
            "env_bytes_per_rank": envs.nbytes,
        }), flush=True)


# ------------------------------------------------------------------------------ driver
def mpiexec():
    local = Path(sys.executable).parent / "mpiexec"
    if local.exists():
        return str(local)
    from shutil import which

    exe = which("mpiexec")
    if exe is None:
        sys.exit("bench_mpi.py: no mpiexec; install the extra: pip install 'tnlearn[mpi]'")
    return exe


def launch(args, ranks, threads):
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads)}
    cmd = [mpiexec(), "-host", "localhost", "-n", str(ranks), sys.executable, __file__, "--worker",
           "--n-samples", str(args.n_samples), "--n-sites", str(args.n_sites), "--bond", str(args.bond),
           "--n-labels", str(args.n_labels), "--sweeps", str(args.sweeps), "--dtype", args.dtype,
           "--chunk-size", str(args.chunk_size)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"bench_mpi.py: {ranks} ranks failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def traffic_model(bond_dims, d, L, m, itemsize):
    """Payload bytes per full sweep after the first: gradient, Grams, broadcast cores, bond by bond.

    The bond dimensions are followed through the sweep: a split moving right
    keeps ``min(m, Dl d, d L Dr)`` values, one moving left ``min(m, Dl d L, d Dr)``
    (the label travels with the centre, so a bond's dimension differs
    between the two half-sweeps near the chain ends); nothing is dropped by
    the cutoff.

    Parameters
    ----------
    bond_dims : list of int
        The ``N - 1`` bond dimensions at the start of the sweep (label on site 0).

    Returns
    -------
    dict
        ``issue``: ``2 N m^2 d^2 L`` values of ``itemsize`` bytes; ``gradient``,
        ``grams``, ``cores``: the per-sweep payloads of each kind.
    """
    dims = [1] + list(bond_dims) + [1]
    n_sites = len(dims) - 1
    grad = grams = cores = 0
    order = [(j, "right") for j in range(n_sites - 1)] + [(j, "left") for j in range(n_sites - 2, -1, -1)]
    for j, direction in order:  # block (j, j+1): Dl = dims[j], Dr = dims[j+2], new bond dims[j+1]
        Dl, Dr = dims[j], dims[j + 2]
        grad += Dl * d * d * L * Dr * itemsize
        # a Gram matrix is reused while its environment is unchanged (EnvironmentCache.cached_grams):
        # in a sweep after the first, a right-moving bond reduces only its left half's Gram (its
        # left environment was just rewritten), a left-moving one only its right half's, and the
        # first bond of each half-sweep neither
        if direction == "right" and j > 0:
            grams += (Dl * d) ** 2 * 8
        elif direction == "left" and j < n_sites - 2:
            grams += (d * Dr) ** 2 * 8
        k = min(m, Dl * d, d * L * Dr) if direction == "right" else min(m, Dl * d * L, d * Dr)
        cores += (Dl * d * k + k * d * L * Dr) * itemsize
        dims[j + 1] = k
    return {"issue": 2 * n_sites * m * m * d * d * L * itemsize, "gradient": grad, "grams": grams, "cores": cores}


def projection(base, args, alpha, beta, ks, n_total):
    """Projected seconds per sweep on ``K`` nodes from the one-rank measurement.

    ``t(K) = t_samples / K + t_split + bonds * (c * alpha * log2(K) + 2 * B / beta)``: the sample
    work divides, rank 0's splits do not, every bond pays ``c`` collectives of latency and the
    ring ``Allreduce`` / ``Bcast`` of ``B`` bytes at bandwidth ``beta``.
    """
    bonds = 2 * (args.n_sites - 1)
    scale = n_total / args.n_samples
    t_split = base["split_seconds"]
    t_samples = (base["seconds"] - t_split) * scale
    payload = base["payload_per_bond"]
    calls = base["calls_per_bond"]
    rows = []
    for k in ks:
        comm = bonds * (calls * alpha * np.log2(k) + 2 * payload / beta) if k > 1 else 0.0
        t = t_samples / k + t_split + comm
        rows.append((k, t, (t_samples + t_split) / t / k, comm / t))
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--n-samples", type=int, default=12000)
    p.add_argument("--n-sites", type=int, default=64)
    p.add_argument("--bond", type=int, default=16)
    p.add_argument("--n-labels", type=int, default=10)
    p.add_argument("--sweeps", type=int, default=3, help="timed full sweeps per run (best and median reported)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--chunk-size", type=int, default=4096)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    print(f"synthetic data: {args.n_samples} samples, N = {args.n_sites} sites, m = {args.bond}, d = 2, "
          f"L = {args.n_labels}, {args.dtype}; {args.sweeps} timed sweeps per run (s/sweep: the best; median in brackets)")
    load_before = os.getloadavg()[0]
    runs = [launch(args, k, 1) for k in args.ranks]
    kmax = max(args.ranks)
    if kmax > 1:
        runs.append(launch(args, 1, kmax))
    base = runs[0]
    print(f"machine: {os.cpu_count()} cores; 1-minute load average {load_before:.2f} before the runs, "
          f"{os.getloadavg()[0]:.2f} after (other processes compete for the cores when it exceeds the ranks)")
    print(f"\n{'ranks':>5} {'threads':>7} {'s/sweep':>8} {'(median)':>8} {'speed-up':>8} {'allreduce B':>12} {'bcast B':>10} "
          f"{'calls':>6} {'split s':>8} {'env MiB/rank':>12}")
    for r in runs:
        t = r["traffic"]
        print(f"{r['ranks']:>5} {r['threads']:>7} {r['seconds']:>8.3f} {r['median_seconds']:>8.3f} "
              f"{base['seconds'] / r['seconds']:>8.2f} "
              f"{t['allreduce_bytes']:>12,} {t['bcast_bytes']:>10,} {t['allreduce_calls'] + t['bcast_calls']:>6} "
              f"{r['split_seconds']:>8.3f} {r['env_bytes_per_rank'] / 2**20:>12.1f}")

    itemsize = np.dtype(args.dtype).itemsize
    model = traffic_model(base["bond_dims"], 2, args.n_labels, args.bond, itemsize)
    multi = [r for r in runs if r["ranks"] > 1]
    if multi:
        t = multi[0]["traffic"]
        print(f"\nbytes per sweep ({multi[0]['ranks']} ranks, rank 0's buffers):")
        print(f"  issue's model 2 N m^2 d^2 L values      {model['issue']:>12,}")
        print(f"  gradient blocks (exact bond dims)       {model['gradient']:>12,}")
        print(f"  + Gram matrices (float64)               {model['grams']:>12,}")
        print(f"  = Allreduce model                       {model['gradient'] + model['grams']:>12,}"
              f"   measured {t['allreduce_bytes']:>12,} (model + the step's curvature scalar per bond)")
        print(f"  broadcast cores                         {model['cores']:>12,}"
              f"   measured {t['bcast_bytes']:>12,} (model + shapes, log norm, singular values)")
        bonds = 2 * (args.n_sites - 1)
        base = {**base, "payload_per_bond": (t["allreduce_bytes"] + t["bcast_bytes"]) / bonds,
                "calls_per_bond": (t["allreduce_calls"] + t["bcast_calls"]) / bonds}
        for name, alpha, beta in (("InfiniBand (alpha 2 us, beta 10 GB/s)", 2e-6, 10e9),
                                  ("10 GbE (alpha 30 us, beta 1 GB/s)", 30e-6, 1e9)):
            for n_total in (60000, 600000):
                print(f"\nprojection, {name}, {n_total} samples, per-rank speed of the 1-rank run:")
                print(f"  {'nodes':>6} {'s/sweep':>8} {'efficiency':>10} {'comm share':>10}")
                for k, t_k, eff, share in projection(base, args, alpha, beta, (1, 8, 64, 256, 1024), n_total):
                    print(f"  {k:>6} {t_k:>8.3f} {eff:>10.2f} {share:>10.2f}")


if __name__ == "__main__":
    main()
