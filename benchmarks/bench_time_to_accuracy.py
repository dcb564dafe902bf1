"""Whole-process time to accuracy: tnlearn's DMRG sweeps against a plain PyTorch MPS trained with Adam.

Every run is a separate Python process that this script starts, one at a time
(never two at once), so each side pays for its own interpreter start, imports
(numpy / tnlearn or torch), data loading and model set-up.  The child prints one
line per sweep or epoch, ``EPOCH k ACC 0.9123`` (test accuracy after it), and
flushes it; this parent stamps each line as it arrives, in seconds since just
before it spawned the child.  The time to a threshold is the first stamp whose
accuracy is at or above it.  The test evaluations are part of the clock on both
sides (tnlearn scores ``eval_set`` inside ``fit``; the torch child scores the
test set after every epoch): nothing is subtracted.

The two sides get the same data arrays (pixels in [0, 1], float32), the same
bond dimension m (``--bond-dim``, default 20) and the same thread count
(``--threads``, default 2: ``OMP/OPENBLAS/MKL_NUM_THREADS`` in both children and
``torch.set_num_threads`` in the torch one).

* **tnlearn** -- ``MPSClassifier(max_bond=m, n_sweeps=S, random_state=0).fit(X_train,
  y_train, eval_set=(X_test, y_test), on_sweep=...)``: the estimator's defaults
  (trig feature map; ``loss="auto"``: the squared loss with one preconditioned
  gradient step per bond on the digits, cross-entropy with three on
  Fashion-MNIST 8,000 at m = 20; PCA initialisation; the passes shared by the
  host's threads); ``on_sweep(estimator)`` prints
  ``estimator.history_.records[-1].test_accuracy``.  ``--sweeps`` S (default 4).
* **torch MPS** -- the recipe of TorchMPS (github.com/jemisjoky/TorchMPS, after
  Stoudenmire & Schwab), written here in plain torch (:class:`TorchMPS`): open
  chain of one core (d=2, D, D) per pixel, a label core (D, L, D) in the middle
  of the chain (after pixel ``n_sites // 2 - 1``), boundary vectors ``e_0`` at
  both ends, every core (per feature component, and per label) the identity
  plus Gaussian noise of std 1e-9, feature map ``x -> [1 - x, x]`` (TorchMPS's
  default linear map: its components sum to 1, so products of near-identity
  matrices stay O(1)), float32.  Per batch each pixel's core is contracted with
  its feature vector into a (batch, D, D) matrix, the left and the right half of
  the chain are multiplied out by a log-depth pairwise batched matmul reduction
  (TorchMPS's ``parallel_eval``), and the label core with the two boundary rows /
  columns gives the logits (batch, L).  Cross-entropy on the logits, Adam
  (``--lr`` 1e-4), mini-batches of ``--batch`` 100, reshuffled every epoch.
  Training stops after ``--epochs`` (30) epochs, after the epoch at which the
  clock passes ``--peer-time-budget`` (300 s), or on a plateau (test accuracy
  up by less than 0.2 points in the last ``--patience`` epochs, default 8),
  whichever comes first.  (The 450 digits test images make the per-epoch
  accuracy noisy: with a patience of 4 a digits14 run would have stopped at 94%
  two epochs before it passed 95%.)  TorchMPS itself writes each core as a
  trainable near-identity bias matrix plus zero-initialised feature cores; with
  a feature map summing to 1 this is the same function at initialisation,
  parametrised differently.
  ``--self-test`` checks this contraction against a naive per-sample one.

Data sets (``--datasets``, default both):

* ``digits14`` -- scikit-learn's 8x8 digits upscaled to 14x14 (196 sites) as
  ``bench_defaults.py`` does, 1,347 train / 450 test; thresholds 90% and 95%;
* ``fashion8k`` -- Fashion-MNIST 2x2-pooled to 14x14 (196 sites), 8,000
  stratified training images (``random_state=0``), the 10,000 test images;
  thresholds 80% and 85%.  The IDX files are found in the cache or
  ``/usr/share/datasets/fashion-mnist``, or give ``--data-dir``.

Output: each run's curve (seconds since spawn, test accuracy), a markdown table
(data set | threshold | tnlearn s | torch MPS s | ratio torch / tnlearn, > 1:
tnlearn is faster) and the command line; ``--json FILE`` saves the raw curves.

Usage::

    python benchmarks/bench_time_to_accuracy.py                          # both data sets (5-7 min, 2 cores)
    python benchmarks/bench_time_to_accuracy.py --datasets digits14      # a few minutes
    python benchmarks/bench_time_to_accuracy.py --bond-dim 32 --lr 3e-4 --batch 50 --json tta.json
    python benchmarks/bench_time_to_accuracy.py --self-test              # the torch MPS contraction check

The torch side needs torch: ``pip install -e ".[bench]"`` from the checkout; without it tnlearn
runs alone.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_defaults import _digits  # noqa: E402  (the protocol's 14x14 digits split)
from bench_peers import BENCH_HINT, _plateaued  # noqa: E402  (the peers' install hint and plateau rule)
DATASETS = {"digits14": (0.90, 0.95), "fashion8k": (0.80, 0.85)}
LIBRARIES = ("tnlearn", "torch MPS")


# ---------------------------------------------------------------------- data
def load_data(name, data_dir=None):
    """``(X_train, X_test, y_train, y_test)``: float32 pixels in [0, 1], int64 labels."""
    if name == "digits14":
        X_train, X_test, y_train, y_test = _digits(True)
    elif name == "fashion8k":
        from tnlearn.datasets import flatten_images, load_dataset

        ds = load_dataset("fashion-mnist", data_dir=data_dir, n_train=8000, random_state=0)
        X_train, X_test = flatten_images(ds.X_train), flatten_images(ds.X_test)
        y_train, y_test = ds.y_train, ds.y_test
    else:
        raise ValueError(f"unknown data set {name!r}; choose from {', '.join(DATASETS)}")
    f32, i64 = (lambda a: np.ascontiguousarray(a, dtype=np.float32)), (lambda a: np.asarray(a, dtype=np.int64))
    return f32(X_train), f32(X_test), i64(y_train), i64(y_test)


# ---------------------------------------------------------------------- the torch MPS
def _torch_mps_class():
    import torch

    class TorchMPS(torch.nn.Module):
        """TorchMPS-style MPS classifier: near-identity cores, label core in the middle, open boundaries."""

        def __init__(self, n_sites, n_classes, bond_dim, feature_dim=2, init_std=1e-9, label_site=None,
                     dtype=torch.float32):
            super().__init__()
            D = bond_dim
            self.label_site = n_sites // 2 if label_site is None else label_site

            def near_eye(*lead):
                return torch.eye(D, dtype=dtype).expand(*lead, D, D) + init_std * torch.randn(*lead, D, D, dtype=dtype)

            self.left = torch.nn.Parameter(near_eye(self.label_site, feature_dim))             # (nL, d, D, D)
            self.right = torch.nn.Parameter(near_eye(n_sites - self.label_site, feature_dim))  # (nR, d, D, D)
            self.label = torch.nn.Parameter(near_eye(n_classes).transpose(0, 1).contiguous())  # (D, L, D)
            e0 = torch.zeros(D, dtype=dtype)
            e0[0] = 1
            self.register_buffer("boundary", e0)

        @staticmethod
        def embed(x):
            """TorchMPS's linear feature map ``x -> [1 - x, x]``: (batch, n_sites) -> (batch, n_sites, 2)."""
            return torch.stack([1 - x, x], dim=-1)

        @staticmethod
        def chain_product(cores, phi):
            """Product over sites of ``sum_j phi[:, s, j] cores[s, j]``: (batch, D, D), or None for no site."""
            if cores.shape[0] == 0:
                return None
            mats = torch.einsum("bsj,sjlr->sblr", phi, cores)   # (n, batch, D, D)
            while mats.shape[0] > 1:                            # log-depth pairwise reduction, order kept
                n = mats.shape[0]
                pairs = torch.matmul(mats[0:n - 1:2], mats[1:n:2])
                mats = torch.cat([pairs, mats[n - 1:]]) if n % 2 else pairs
            return mats[0]

        def forward(self, phi):
            """Logits (batch, n_classes) of embedded inputs ``phi`` (batch, n_sites, 2)."""
            k = self.label_site
            left = self.chain_product(self.left, phi[:, :k])
            right = self.chain_product(self.right, phi[:, k:])
            batch = phi.shape[0]
            lvec = self.boundary.expand(batch, -1) if left is None else left[:, 0, :]     # e0^T (left product)
            rvec = self.boundary.expand(batch, -1) if right is None else right[:, :, 0]   # (right product) e0
            return torch.einsum("bl,lcr,br->bc", lvec, self.label, rvec)

        def naive_forward(self, phi):
            """The same logits, one sample and one site at a time (for the self-test)."""
            out = []
            for p in phi:
                v = self.boundary.clone()
                for s in range(self.left.shape[0]):
                    v = v @ (p[s, 0] * self.left[s, 0] + p[s, 1] * self.left[s, 1])
                w = self.boundary.clone()
                for s in reversed(range(self.right.shape[0])):
                    q = p[self.label_site + s]
                    w = (q[0] * self.right[s, 0] + q[1] * self.right[s, 1]) @ w
                out.append(torch.einsum("l,lcr,r->c", v, self.label, w))
            return torch.stack(out)

    return TorchMPS


def self_test(threads=1):
    import torch

    torch.set_num_threads(threads)
    TorchMPS = _torch_mps_class()
    torch.manual_seed(0)
    for n_sites, D, L in [(1, 3, 2), (2, 4, 3), (5, 3, 4), (7, 5, 10), (12, 4, 3), (33, 3, 5)]:
        for label_site in sorted({0, n_sites // 2, n_sites}):
            model = TorchMPS(n_sites, L, D, init_std=0.4, label_site=label_site, dtype=torch.float64)
            phi = TorchMPS.embed(torch.rand(6, n_sites, dtype=torch.float64))
            fast, naive = model(phi), model.naive_forward(phi)
            assert fast.shape == (6, L), fast.shape
            err = (fast - naive).abs().max().item() / naive.abs().max().item()
            assert err < 1e-12, f"n_sites={n_sites} D={D} label_site={label_site}: relative error {err:.2e}"
            print(f"   n_sites={n_sites:2d} D={D} L={L:2d} label_site={label_site:2d}: "
                  f"batched = naive (relative error {err:.1e})")
    # the benchmark's own configuration: float32, std 1e-9; every logit starts at 1
    model = TorchMPS(196, 10, 20)
    phi = TorchMPS.embed(torch.rand(50, 196))
    assert torch.allclose(phi.sum(-1), torch.ones(50, 196))
    fast = model(phi)
    with torch.no_grad():
        naive = model.naive_forward(phi[:3])
    assert torch.allclose(fast[:3], naive, rtol=1e-5, atol=1e-6), (fast[:3], naive)
    assert (fast - 1).abs().max().item() < 1e-4, fast
    # gradients reach every core
    torch.nn.functional.cross_entropy(fast, torch.randint(0, 10, (50,))).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    print("   196 sites, D=20, float32, init std 1e-9: batched = naive, logits start at 1, finite gradients")
    print("self-test passed")
    return 0


# ---------------------------------------------------------------------- children
def _clock(args):
    return time.time() - args.t_spawn


def child_tnlearn(args):
    from tnlearn import MPSClassifier

    X_train, X_test, y_train, y_test = load_data(args.dataset, args.data_dir)
    print(f"READY {len(X_train)} train / {len(X_test)} test, {X_train.shape[1]} sites", flush=True)

    def on_sweep(est):
        r = est.history_.records[-1]
        print(f"EPOCH {r.sweep} ACC {r.test_accuracy:.4f}", flush=True)

    clf = MPSClassifier(max_bond=args.bond_dim, n_sweeps=args.sweeps, random_state=0)
    clf.fit(X_train, y_train, eval_set=(X_test, y_test), on_sweep=on_sweep)
    stopped = clf.history_.meta.get("stopped")
    print(f"DONE {len(clf.history_)} sweeps" + (f"; {stopped}" if stopped else ""), flush=True)
    return 0


def child_torch(args):
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    TorchMPS = _torch_mps_class()
    X_train, X_test, y_train, y_test = load_data(args.dataset, args.data_dir)
    phi_train = TorchMPS.embed(torch.from_numpy(X_train))
    phi_test = TorchMPS.embed(torch.from_numpy(X_test))
    ytr, yte = torch.from_numpy(y_train), torch.from_numpy(y_test)
    n_classes = int(max(y_train.max(), y_test.max())) + 1
    model = TorchMPS(X_train.shape[1], n_classes, args.bond_dim)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    print(f"READY {len(X_train)} train / {len(X_test)} test, {X_train.shape[1]} sites; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads", flush=True)

    acc, stop = [], f"ran all {args.epochs} epochs"
    for epoch in range(1, args.epochs + 1):
        perm = torch.randperm(len(ytr))
        for i in range(0, len(ytr), args.batch):
            idx = perm[i:i + args.batch]
            loss = torch.nn.functional.cross_entropy(model(phi_train[idx]), ytr[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            correct = sum(int((model(phi_test[i:i + 1000]).argmax(1) == yte[i:i + 1000]).sum())
                          for i in range(0, len(yte), 1000))
        acc.append(correct / len(yte))
        print(f"EPOCH {epoch} ACC {acc[-1]:.4f} LOSS {loss.item():.4g}", flush=True)
        if not np.isfinite(loss.item()):
            stop = f"stopped after epoch {epoch}: the loss is not finite"
            break
        if _plateaued(acc, args.patience):
            stop = f"stopped after epoch {epoch}: test accuracy up < 0.2 points in the last {args.patience} epochs"
            break
        if _clock(args) > args.peer_time_budget:
            stop = f"stopped after epoch {epoch}: clock past --peer-time-budget {args.peer_time_budget:g} s"
            break
    print(f"DONE {stop}", flush=True)
    return 0


# ---------------------------------------------------------------------- parent
def describe(lib, args):
    if lib == "tnlearn":
        return (f"MPSClassifier(max_bond={args.bond_dim}, n_sweeps={args.sweeps}, random_state=0), defaults "
                f"otherwise (trig map, DMRG sweeps, float32); {args.threads} BLAS threads")
    return (f"TorchMPS-style MPS in plain torch: D={args.bond_dim}, label core in the middle, identity + N(0, 1e-9) "
            f"init, map [1 - x, x], open boundaries, float32; cross-entropy, Adam lr={args.lr:g}, batch {args.batch}; "
            f"<= {args.epochs} epochs, budget {args.peer_time_budget:g} s, patience {args.patience}; "
            f"{args.threads} threads")


def spawn(lib, dataset, args):
    """Run one child; its lines stamped in seconds since just before the spawn."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(args.threads)
    env["PYTHONUNBUFFERED"] = "1"
    opts = ["--bond-dim", args.bond_dim, "--sweeps", args.sweeps, "--lr", repr(args.lr), "--batch", args.batch,
            "--epochs", args.epochs, "--patience", args.patience, "--peer-time-budget", args.peer_time_budget,
            "--threads", args.threads]
    if args.data_dir:
        opts += ["--data-dir", args.data_dir]
    run = {"library": lib, "dataset": dataset, "config": describe(lib, args), "curve": [], "log": [],
           "ready_s": None, "done": None}
    print(f"\n== {dataset} / {lib}: {run['config']}", flush=True)
    t_spawn = time.time()
    cmd = [sys.executable, "-u", str(Path(__file__).resolve()), "--child", lib, "--child-dataset", dataset,
           "--t-spawn", repr(t_spawn)] + [str(o) for o in opts]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=env)
    for line in proc.stdout:
        t = time.perf_counter() - t0
        line = line.rstrip("\n")
        run["log"].append([round(t, 3), line])
        parts = line.split()
        if len(parts) >= 4 and parts[0] == "EPOCH" and parts[2] == "ACC":
            run["curve"].append([int(parts[1]), round(t, 3), float(parts[3])])
        elif parts[:1] == ["READY"]:
            run["ready_s"] = round(t, 3)
        elif parts[:1] == ["DONE"]:
            run["done"] = line[5:]
        print(f"   [{t:7.1f} s] {line}", flush=True)
    run["returncode"] = proc.wait()
    run["exit_s"] = round(time.perf_counter() - t0, 3)
    if run["returncode"]:
        print(f"   !! the child exited with status {run['returncode']}", flush=True)
    return run


def time_to(run, threshold):
    if run is None:
        return None
    for _, t, a in run["curve"]:
        if a >= threshold:
            return t
    return None


def print_curve(run):
    print(f"\n== {run['dataset']} / {run['library']}: {run['config']}")
    if run.get("skipped"):
        print(f"   skipped: {run['skipped']}")
        return
    ready = "?" if run["ready_s"] is None else f"{run['ready_s']:.1f} s"
    print(f"   data loaded and imports done at {ready}; process exited at {run['exit_s']:.1f} s "
          f"(status {run['returncode']}); {run['done'] or 'no DONE line'}")
    unit = "sweep" if run["library"] == "tnlearn" else "epoch"
    print(f"   {unit:>5} {'s since spawn':>14} {'test acc':>9}")
    for k, t, a in run["curve"]:
        print(f"   {k:>5} {t:14.1f} {a:9.4f}")
    if run["curve"]:
        print(f"   best test accuracy {max(a for _, _, a in run['curve']):.4f}")


def _fmt(t):
    return "not reached" if t is None else f"{t:.1f}"


def ratio_cell(t_tn, t_torch, tn_run, torch_run):
    if torch_run is None or torch_run.get("skipped"):
        return "torch not run"
    last = lambda r: r["curve"][-1][1] if r and r["curve"] else None
    if t_tn is not None and t_torch is not None:
        return f"**{t_torch / t_tn:.1f}x**"
    if t_tn is not None:
        end = last(torch_run)
        return "torch not reached" + (f" (> {end / t_tn:.1f}x)" if end else "")
    if t_torch is not None:
        end = last(tn_run)
        return "tnlearn not reached" + (f" (< {t_torch / end:.2f}x)" if end else "")
    return "neither reached"


def report(runs, args):
    for r in runs:
        print_curve(r)
    rows = []
    print("\n== time to test accuracy: seconds since spawn of a fresh Python process (imports, data loading, "
          "set-up and per-epoch test evaluations included)\n")
    print("| data set | threshold | tnlearn s | torch MPS s | ratio torch / tnlearn |")
    print("|---|---|---|---|---|")
    for ds in args.datasets:
        tn = next((r for r in runs if r["dataset"] == ds and r["library"] == "tnlearn"), None)
        to = next((r for r in runs if r["dataset"] == ds and r["library"] == "torch MPS"), None)
        for thr in DATASETS[ds]:
            t_tn, t_to = time_to(tn, thr), time_to(to, thr)
            cell_to = "torch not run" if to is None or to.get("skipped") else _fmt(t_to)
            ratio = ratio_cell(t_tn, t_to, tn, to)
            rows.append({"dataset": ds, "threshold": thr, "tnlearn_s": t_tn, "torch_s": t_to,
                         "ratio": None if t_tn is None or t_to is None else t_to / t_tn,
                         "ratio_text": ratio.strip("*")})
            print(f"| {ds} | {100 * thr:.0f}% | {_fmt(t_tn)} | {cell_to} | {ratio} |")
    print(f"\nm = {args.bond_dim}, {args.threads} threads, {platform.machine()}, Python "
          f"{platform.python_version()}, numpy {np.__version__}")
    print("command: " + " ".join(shlex.quote(a) for a in [Path(sys.executable).name] + sys.argv))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS),
                   help="data sets (default: both)")
    p.add_argument("--bond-dim", type=int, default=20, help="bond dimension m / D of both sides (default: 20)")
    p.add_argument("--sweeps", type=int, default=4, help="tnlearn DMRG sweeps (default: 4)")
    p.add_argument("--lr", type=float, default=1e-4, help="torch MPS Adam learning rate (default: 1e-4)")
    p.add_argument("--batch", type=int, default=100, help="torch MPS mini-batch size (default: 100)")
    p.add_argument("--epochs", type=int, default=30, help="torch MPS epochs at most (default: 30)")
    p.add_argument("--peer-time-budget", type=float, default=300.0,
                   help="stop the torch MPS after the epoch at which its clock passes this many seconds (default: 300)")
    p.add_argument("--patience", type=int, default=8,
                   help="stop the torch MPS when its test accuracy gained < 0.2 points in this many epochs "
                        "(default: 8; 0 disables)")
    p.add_argument("--threads", type=int, default=2, help="threads of each child, BLAS and torch (default: 2)")
    p.add_argument("--data-dir", default=None, help="directory of the Fashion-MNIST IDX files (default: found)")
    p.add_argument("--skip-torch", action="store_true", help="run tnlearn alone")
    p.add_argument("--json", metavar="FILE", help="save the raw curves and the table as JSON")
    p.add_argument("--self-test", action="store_true", help="check the torch MPS contraction and exit")
    p.add_argument("--child", choices=LIBRARIES, help=argparse.SUPPRESS)
    p.add_argument("--child-dataset", dest="dataset", help=argparse.SUPPRESS)
    p.add_argument("--t-spawn", type=float, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        if args.t_spawn is None:
            args.t_spawn = time.time()
        return (child_tnlearn if args.child == "tnlearn" else child_torch)(args)

    have_torch = importlib.util.find_spec("torch") is not None
    if args.self_test:
        if not have_torch:
            print(f"--self-test needs torch: {BENCH_HINT}")
            return 1
        return self_test(args.threads)

    libs = ["tnlearn"]
    if args.skip_torch:
        print("torch MPS skipped (--skip-torch)")
    elif not have_torch:
        print(f"torch is not installed: running tnlearn alone.  Install the torch side with {BENCH_HINT}")
    else:
        libs.append("torch MPS")
    print(f"machine : {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print("order   : per data set tnlearn, then the torch MPS, each in a fresh subprocess, one at a time")
    runs = []
    for ds in args.datasets:
        for lib in LIBRARIES:
            if lib in libs:
                runs.append(spawn(lib, ds, args))
            else:
                runs.append({"library": lib, "dataset": ds, "config": describe(lib, args), "curve": [],
                             "skipped": "torch not installed" if not args.skip_torch else "--skip-torch"})
    rows = report(runs, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"argv": sys.argv, "machine": platform.machine(), "cpus": os.cpu_count(),
                       "thresholds": {k: list(v) for k, v in DATASETS.items()}, "runs": runs, "table": rows},
                      f, indent=1)
        print(f"raw curves written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
