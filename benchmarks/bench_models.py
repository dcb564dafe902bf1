"""The model comparison: parameters, seconds per sweep and test accuracy of every tnlearn model and its dense peer.

Each model runs with the defaults ``tnlearn train --model ...`` uses, on the
same splits:

* ``mps``: :class:`tnlearn.MPSClassifier` on 2x2-average-pooled images (14x14 for
  28x28 data, as the CLI pools them; the 8x8 digits unpooled);
* ``conv-mps``: :class:`tnlearn.ConvMPSClassifier` on the full-resolution image;
* ``tt-net``: :class:`tnlearn.TTNetClassifier`; its dense peer ``mlp`` is
  scikit-learn's ``MLPClassifier`` with the same hidden width (early stopping);
* ``tn-cnn``: :class:`tnlearn.TNCNNClassifier`; its dense peer ``cnn`` is the same
  architecture with dense kernels and hidden layer, trained end to end by PyTorch's
  Adam (``bench_tn_cnn.py``, ``--cnn-epochs``; needs the ``bench`` extra).

Data sets: ``digits8``, ``fashion60k`` (``--data-dir``), ``mnist`` (``--mnist-dir``),
as ``bench_tt.py`` loads them.  "s / sweep" is the mean wall time of a sweep
(an epoch for the dense peers), in one process: set ``OPENBLAS_NUM_THREADS`` /
``OMP_NUM_THREADS`` alike for all of them.

Usage::

    python benchmarks/bench_models.py --datasets digits8
    python benchmarks/bench_models.py --datasets fashion60k --data-dir /usr/share/datasets/fashion-mnist \\
        --json benchmarks/results/models.jsonl
    python benchmarks/bench_models.py --json benchmarks/results/models.jsonl --table-only
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_defaults import loss_label  # noqa: E402
from bench_tn_cnn import MIN_CNN_EPOCHS, MIN_CNN_STEPS, _architecture, cnn_epochs, train_cnn  # noqa: E402
from bench_tt import DATASETS, add_run_options, run_protocol  # noqa: E402

MODELS = ("mps", "conv-mps", "tt-net", "mlp", "tn-cnn", "cnn")


def _pooled(data):
    """The images 2x2-average-pooled when they are 28x28 (the CLI's default for --model mps)."""
    from tnlearn.datasets import avg_pool

    side = math.isqrt(data[0].shape[1])
    if side < 28:
        return data
    pool = lambda X: avg_pool(X.reshape(-1, side, side), 2).reshape(len(X), -1)  # noqa: E731
    return pool(data[0]), pool(data[1]), data[2], data[3]


def _fit(model, data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        model.fit(data[0], data[2], eval_set=(data[1], data[3]))
        seconds = time.perf_counter() - t
    recs = model.history_.records
    return {"test_accuracy": [r.test_accuracy for r in recs], "seconds": seconds,
            "seconds_per_sweep": float(np.mean([r.seconds for r in recs]))}


def run_one(name, data, model, seed, epochs=None):
    from tnlearn import ConvMPSClassifier, MPSClassifier, TNCNNClassifier, TTNetClassifier

    if model == "mps":
        clf = MPSClassifier(random_state=seed)
        row = _fit(clf, _pooled(data))
        row.update(n_params=int(clf.head_.n_params), loss=clf.loss_function_, n_iter=clf.history_.meta["n_iter"])
    elif model == "conv-mps":
        clf = ConvMPSClassifier(random_state=seed)
        row = _fit(clf, data)
        row["n_params"] = clf.n_params_
    elif model == "tt-net":
        clf = TTNetClassifier(random_state=seed)
        row = _fit(clf, data)
        row["n_params"] = clf.n_params_
    elif model == "tn-cnn":
        clf = TNCNNClassifier(random_state=seed)
        row = _fit(clf, data)
        row["n_params"] = clf.n_params_
    elif model == "mlp":
        from sklearn.neural_network import MLPClassifier

        hidden = math.prod(TTNetClassifier()._shapes(data[0].shape[1])[1])
        mlp = MLPClassifier(hidden_layer_sizes=(hidden,), early_stopping=True, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = time.perf_counter()
            mlp.fit(data[0], data[2])
            seconds = time.perf_counter() - t
        row = {"test_accuracy": [float(mlp.score(data[1], data[3]))], "seconds": seconds,
               "seconds_per_sweep": seconds / mlp.n_iter_,
               "n_params": int(sum(c.size for c in mlp.coefs_) + sum(b.size for b in mlp.intercepts_))}
    elif model == "cnn":
        epochs = cnn_epochs(len(data[0]), epochs)
        _, cnn = train_cnn(data, _architecture({}), epochs, seed)
        row = {"test_accuracy": cnn["test_accuracy"], "seconds": cnn["seconds"],
               "seconds_per_sweep": cnn["seconds"] / epochs, "n_params": cnn["n_params"]}
    else:
        raise ValueError(f"unknown model {model!r}")
    row.update({"dataset": name, "model": model, "seed": seed})
    return row


def table(rows):
    out = ["| data set | model | parameters | s / sweep (epoch) | test accuracy, final (best) |", "|---|---|---|---|---|"]
    for r in rows:
        accs = r["test_accuracy"]
        model = f"{r['model']} ({loss_label(r['loss'], r['n_iter'])})" if "loss" in r else r["model"]
        out.append(f"| {r['dataset']} | {model} | {r['n_params']:,} | {r['seconds_per_sweep']:.1f} | "
                   f"{100 * accs[-1]:.2f}% ({100 * max(accs):.2f}%) |")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=["digits8"], choices=DATASETS)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--cnn-epochs", type=int, default=None,
                   help=f"epochs of the dense CNN (default: {MIN_CNN_EPOCHS}, or more to make {MIN_CNN_STEPS} Adam steps)")
    add_run_options(p)
    args = p.parse_args(argv)
    return run_protocol(args, args.models,
                        lambda dataset, data, model, seed: run_one(dataset, data, model, seed, args.cnn_epochs),
                        lambda dataset, model, seed: {"dataset": dataset, "model": model, "seed": seed},
                        table, column="model")


if __name__ == "__main__":
    sys.exit(main())
