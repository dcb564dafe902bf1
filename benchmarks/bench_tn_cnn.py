"""tn-cnn: the stacked tensor-network CNN against the dense CNN it replaces, and a compressed CNN re-tuned by sweeps.

Candidates (``--candidates``), each trained on each data set (``--datasets``):

* ``default`` and variants: :class:`tnlearn.TNCNNClassifier` with its defaults,
  or the keyword arguments in ``CANDIDATES``;
* ``cnn``: the same architecture with dense kernels and a dense hidden layer,
  trained end to end by PyTorch's Adam (batch 128, learning rate 1e-3;
  ``--cnn-epochs``, default 10 epochs and at least 2,000 steps): the CNN the
  tensor network stands for.  Needs the
  ``bench`` extra (``pip install -e ".[bench]"`` from the checkout);
* ``retune``: LOTUS's bottom-up path — that trained CNN's kernels and dense
  layer are compressed by TT-SVD (``--retune-ranks CONV DENSE``) into a
  tn-cnn (``fit(init_from=...)``), whose sweeps re-tune it.  The row gives the
  accuracy before compression (the CNN), after compression and after re-tuning.

One table is printed: test accuracy per sweep (per epoch for the CNN), best /
final, parameters, and seconds (one process; set ``OMP_NUM_THREADS`` /
``OPENBLAS_NUM_THREADS`` for both sides alike).

Usage::

    python benchmarks/bench_tn_cnn.py --datasets digits8 --candidates default cnn retune
    python benchmarks/bench_tn_cnn.py --datasets fashion60k --data-dir /usr/share/datasets/fashion-mnist \\
        --candidates default cnn retune --json benchmarks/results/tn_cnn.jsonl
    python benchmarks/bench_tn_cnn.py --json benchmarks/results/tn_cnn.jsonl --table-only
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
from bench_peers import BENCH_HINT  # noqa: E402
from bench_tt import DATASETS, add_run_options, run_protocol  # noqa: E402  (the TT-net protocol's splits and loop)

#: tn-cnn candidates: TNCNNClassifier keyword arguments on top of its defaults.
CANDIDATES = {
    "default": {},
    "wide": {"channels": (32, 64)},
    "epochs1": {"epochs_per_bond": 1.0},
    "wide-epochs1": {"channels": (32, 64), "epochs_per_bond": 1.0},
    "rank16": {"max_rank": 16},
    "no-hidden": {"n_hidden": None},
    "lr-decay": {"lr_decay": 0.5},
}
BASELINES = ("cnn", "retune")
#: The dense CNN trains for at least this many epochs and this many Adam steps (1,347 digits: 11 steps an epoch)
MIN_CNN_EPOCHS, MIN_CNN_STEPS = 10, 2000


def cnn_epochs(n_samples, given=None, batch_size=128):
    """Epochs of the dense CNN: ``given``, or enough for ``MIN_CNN_EPOCHS`` and ``MIN_CNN_STEPS`` (whichever is more)."""
    if given is not None:
        return given
    return max(MIN_CNN_EPOCHS, math.ceil(MIN_CNN_STEPS / math.ceil(n_samples / batch_size)))


def _architecture(params):
    """The tn-cnn hyperparameters a candidate runs with (defaults filled in)."""
    from tnlearn import TNCNNClassifier

    return TNCNNClassifier(**params).get_params()


def train_cnn(data, params, epochs, seed):
    """The dense CNN of a tn-cnn architecture, trained by Adam; ``(layers, row)``.

    ``layers`` are the trained weights as ``TNCNNClassifier.fit(init_from=...)`` takes them.
    """
    try:
        import torch
    except ImportError as exc:
        raise SystemExit(f"the cnn baseline needs PyTorch: {BENCH_HINT} ({exc})") from exc
    from tnlearn.models.tn_cnn import image_geometry

    X_train, X_test, y_train, y_test = data
    H, W, C = image_geometry(X_train.shape[1], None)
    mean, scale = float(X_train.mean()), float(X_train.std()) or 1.0
    classes = np.unique(y_train)

    def images(X):
        return torch.tensor(((X - mean) / scale).reshape(-1, H, W, C).transpose(0, 3, 1, 2), dtype=torch.float32)

    torch.manual_seed(seed)
    k, pool, stride = params["kernel_size"], params["pool_size"], params["stride"]
    pad = (k - 1) // 2  # as TNCNNClassifier pads
    layers, c, h, w = [], C, H, W
    for c_out in params["channels"]:
        layers += [torch.nn.Conv2d(c, c_out, k, stride=stride, padding=pad), torch.nn.MaxPool2d(pool), torch.nn.ReLU()]
        c, h, w = c_out, ((h + 2 * pad - k) // stride + 1) // pool, ((w + 2 * pad - k) // stride + 1) // pool
    flat = c * h * w
    hidden = params["n_hidden"]
    head = ([torch.nn.Linear(flat, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, len(classes))] if hidden
            else [torch.nn.Linear(flat, len(classes))])
    features, classifier = torch.nn.Sequential(*layers), torch.nn.Sequential(*head)
    net = torch.nn.ModuleList([features, classifier])

    def forward(x):  # the map is flattened in (row, column, channel) order, as tn-cnn's dense stage reads it
        return classifier(features(x).permute(0, 2, 3, 1).reshape(len(x), -1))

    Xt, Xv = images(X_train), images(X_test)
    yt = torch.tensor(np.searchsorted(classes, y_train))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    accs, losses = [], []
    t0 = time.perf_counter()
    for _ in range(epochs):
        net.train()
        order = torch.randperm(len(Xt), generator=gen)
        total = 0.0
        for start in range(0, len(Xt), 128):
            idx = order[start : start + 128]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(forward(Xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / len(Xt))
        with torch.no_grad():
            pred = torch.cat([forward(Xv[s : s + 1024]).argmax(1) for s in range(0, len(Xv), 1024)]).numpy()
        accs.append(float(np.mean(classes[pred] == y_test)))
    seconds = time.perf_counter() - t0
    trained = []
    for layer in [*features, *classifier]:
        if isinstance(layer, torch.nn.Conv2d):  # (c_out, c_in, kh, kw) -> (kh, kw, c_in, c_out)
            trained.append((layer.weight.detach().numpy().transpose(2, 3, 1, 0), layer.bias.detach().numpy()))
        elif isinstance(layer, torch.nn.Linear):  # (out, in) -> (in, out)
            trained.append((layer.weight.detach().numpy().T, layer.bias.detach().numpy()))
    n_params = int(sum(p.numel() for p in net.parameters()))
    row = {"test_accuracy": accs, "loss": losses, "n_params": n_params, "seconds": seconds, "ranks": None}
    return trained, row


def run_tn_cnn(data, params, n_sweeps, seed, init_from=None):
    from tnlearn import TNCNNClassifier

    model = TNCNNClassifier(n_sweeps=n_sweeps, random_state=seed, **params)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t = time.perf_counter()
        model.fit(data[0], data[2], eval_set=(data[1], data[3]), init_from=init_from)
        seconds = time.perf_counter() - t
    recs = model.history_.records
    row = {"test_accuracy": [r.test_accuracy for r in recs], "loss": [r.loss for r in recs],
           "rejected": [r.rejected_updates for r in recs], "n_params": model.n_params_, "seconds": seconds,
           "seconds_per_sweep": [r.seconds for r in recs],
           "ranks": {name: st["bond_dims"] for name, st in recs[-1].stages.items()},
           "warnings": [str(w.message)[:160] for w in caught if "Divergence" in type(w.message).__name__]}
    if init_from is not None:
        row["compressed"] = model.history_.meta["compressed"]
        row["compression"] = model.history_.meta["compression"]
    return row


def run_one(name, data, candidate, n_sweeps, seed, epochs, retune_ranks):
    params = dict(CANDIDATES.get(candidate, {}))
    epochs = cnn_epochs(len(data[0]), epochs)
    if candidate in BASELINES:
        arch = _architecture({})
        layers, cnn_row = train_cnn(data, arch, epochs, seed)
        if candidate == "cnn":
            row = cnn_row
        else:
            conv_rank, dense_rank = retune_ranks
            row = run_tn_cnn(data, {"conv_rank": conv_rank or None, "max_rank": dense_rank}, n_sweeps, seed, layers)
            row["cnn"] = {"test_accuracy": cnn_row["test_accuracy"][-1], "n_params": cnn_row["n_params"]}
            row["retune_ranks"] = list(retune_ranks)
    else:
        row = run_tn_cnn(data, params, n_sweeps, seed)
    row.update({"dataset": name, "candidate": candidate, "seed": seed,
                "n_sweeps": epochs if candidate == "cnn" else n_sweeps})
    return row


def table(rows):
    out = ["| data set | candidate | test accuracy per sweep / epoch (%) | best / final | parameters | "
           "loss per sweep | rejected | s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        accs = [100 * a for a in r["test_accuracy"]]
        name = r["candidate"]
        if name == "retune":
            conv, dense = r["retune_ranks"]
            name = f"retune (kernels {'exact' if not conv else f'rank {conv}'}, dense rank {dense})"
            before = (f"CNN {100 * r['cnn']['test_accuracy']:.1f} ({r['cnn']['n_params']:,} params) -> compressed "
                      f"{100 * r['compressed']['test_accuracy']:.1f} -> ")
        else:
            before = ""
        warn = " (diverged)" if r.get("warnings") else ""
        out.append(
            f"| {r['dataset']} | {name} | {before}{' / '.join(f'{a:.1f}' for a in accs)}{warn} | "
            f"{max(accs):.1f} / {accs[-1]:.1f} | {r['n_params']:,} | {' / '.join(f'{v:.3g}' for v in r['loss'])} | "
            f"{sum(r.get('rejected', [0]))} | {r['seconds']:.0f} |"
        )
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=["digits8"], choices=DATASETS)
    p.add_argument("--candidates", nargs="+", default=["default", "cnn", "retune"],
                   choices=[*CANDIDATES, *BASELINES])
    p.add_argument("--sweeps", type=int, default=4, help="tn-cnn sweeps per run (default: 4, the model's)")
    p.add_argument("--cnn-epochs", type=int, default=None,
                   help=f"epochs of the dense CNN (default: {MIN_CNN_EPOCHS}, or more to make {MIN_CNN_STEPS} Adam steps)")
    p.add_argument("--retune-ranks", type=int, nargs=2, default=[0, 8], metavar=("CONV", "DENSE"),
                   help="TT-ranks of the compressed CNN's kernels (0: exact) and dense layer (default: 0 8)")
    add_run_options(p)
    args = p.parse_args(argv)

    def identity(dataset, candidate, seed):  # a retune row is one per pair of ranks
        fields = {"dataset": dataset, "candidate": candidate, "seed": seed}
        return {**fields, "retune_ranks": list(args.retune_ranks)} if candidate == "retune" else fields

    return run_protocol(args, args.candidates,
                        lambda dataset, data, candidate, seed: run_one(dataset, data, candidate, args.sweeps, seed,
                                                                       args.cnn_epochs, args.retune_ranks),
                        identity, table)


if __name__ == "__main__":
    sys.exit(main())
