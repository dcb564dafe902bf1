"""Sweep-train MPS classifiers on MNIST / Fashion-MNIST for several bond dimensions.

Reproduces the shape of Stoudenmire & Schwab (2016): 28x28 images average-pooled
to 14x14 (196 sites), the trig feature map, two-site DMRG sweeps.  For every
bond dimension it writes a run directory (history.json, run.json, model.npz)
and, at the end, comparison figures (accuracy, truncation error, bond profile).

Examples
--------
Fashion-MNIST from Debian's ``dataset-fashion-mnist`` (found automatically)::

    python examples/train_mnist.py --dataset fashion-mnist --bond-dims 4 8 20 --sweeps 5

MNIST from a directory holding the four standard IDX files::

    python examples/train_mnist.py --dataset mnist --data-dir ~/data/mnist --bond-dims 10 20

On a CUDA GPU (``pip install 'tnlearn[gpu]'``), the same sweeps with ``--backend cupy``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from tnlearn import MPSClassifier, __version__
from tnlearn.backend import BackendUnavailableError, get_backend
from tnlearn.datasets import flatten_images, load_dataset
from tnlearn.io import save_model
from tnlearn.plotting import write_run_plots


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=["mnist", "fashion-mnist"], default="fashion-mnist")
    p.add_argument("--data-dir", default=None, help="directory with the four IDX files")
    p.add_argument("--bond-dims", type=int, nargs="+", default=[4, 8, 20])
    p.add_argument("--sweeps", type=int, default=5)
    p.add_argument("--n-train", type=int, default=None, help="training subset (default: all 60,000)")
    p.add_argument("--n-iter", type=int, default=2, help="gradient steps per bond (default: 2)")
    p.add_argument("--damping", type=float, default=0.3, help="preconditioner damping (default: 0.3)")
    p.add_argument("--loss", choices=["mse", "cross_entropy"], default="mse")
    p.add_argument("--order", choices=["row", "column", "zigzag"], default="row")
    p.add_argument("--backend", choices=["numpy", "cupy"], default="numpy",
                   help="array backend: numpy (CPU) or cupy (CUDA GPU) (default: numpy)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--figures-dir", default="figures")
    args = p.parse_args(argv)
    try:
        get_backend(args.backend)  # a GPU this machine lacks fails here, before the data are loaded
    except BackendUnavailableError as exc:
        p.error(str(exc))

    data = load_dataset(args.dataset, data_dir=args.data_dir, n_train=args.n_train, random_state=args.seed)
    X_train = flatten_images(data.X_train, args.order)
    X_test = flatten_images(data.X_test, args.order)
    print(f"{data.name}: {len(X_train)} train / {len(X_test)} test, {X_train.shape[1]} sites")

    histories, labels = [], []
    for m in args.bond_dims:
        run_dir = os.path.join(args.runs_dir, f"{data.name}-m{m}")
        print(f"\n== max bond {m} -> {run_dir}")
        clf = MPSClassifier(
            max_bond=m, n_sweeps=args.sweeps, n_iter=args.n_iter, loss=args.loss, damping=args.damping,
            backend=args.backend, random_state=args.seed, verbose=2,
        )
        start = time.perf_counter()
        clf.fit(X_train, data.y_train, eval_set=(X_test, data.y_test))
        seconds = time.perf_counter() - start
        os.makedirs(run_dir, exist_ok=True)
        save_model(clf, os.path.join(run_dir, "model.npz"))
        with open(os.path.join(run_dir, "history.json"), "w") as fh:
            json.dump(clf.history_.to_json()["records"], fh, indent=1)
        with open(os.path.join(run_dir, "run.json"), "w") as fh:
            json.dump({"dataset": data.name, "bond_dim": m, "sweeps": args.sweeps, "n_train": len(X_train),
                       "order": args.order, "n_iter": args.n_iter, "damping": args.damping, "loss": args.loss, "seed": args.seed,
                       "backend": args.backend,
                       "test_accuracy": clf.history_[-1].test_accuracy, "seconds": seconds,
                       "tnlearn_version": __version__}, fh, indent=1)
        histories.append(clf.history_)
        labels.append(f"m={m}")

    prefix = os.path.join(args.figures_dir, data.name)
    paths = write_run_plots(histories, labels, prefix)
    print("\nfigures:", *paths, sep="\n  ")
    print("\n| max bond | test accuracy | seconds / sweep |\n|---|---|---|")
    for m, h in zip(args.bond_dims, histories):
        per_sweep = sum(r.seconds for r in h.records) / len(h)
        print(f"| {m} | {h[-1].test_accuracy:.4f} | {per_sweep:.1f} |")


if __name__ == "__main__":
    main()
