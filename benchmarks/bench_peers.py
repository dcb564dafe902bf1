"""Time-to-accuracy of tnlearn against other MPS-classifier libraries on the same data.

Trains, one after the other in this process (never two at once), on the same
training images with the same feature map (trig map
``phi(x) = [cos(pi x / 2), sin(pi x / 2)]``) and the same bond dimension m:

* **tnlearn** -- ``MPSClassifier(max_bond=m, n_sweeps=S, random_state=0)`` (the
  estimator's defaults: ``loss="auto"``, one preconditioned gradient step per bond
  with the squared loss, three with cross-entropy; ``--n-iter`` / ``--loss`` change that), DMRG sweeps; the test set is scored after every sweep (``eval_set``).
* **TensorKrowch** -- ``tk.models.MPSLayer`` trained as its tutorials do: output
  node in the middle, ``auto_stack=True, auto_unbind=False``, ``trace`` with an
  example, Adam, cross-entropy, mini-batches; test accuracy after every epoch.
* **tn4ml** (only when installed) -- ``MPS_initialize(..., class_index=L // 2,
  add_identity=True)`` trained with its ``Model.train`` (``strategy="global"``,
  Adam, softmax cross-entropy, ``normalize=True``, canonicalised at the label
  after each step) as in its supervised example; float64, as that example uses
  (in float32 this 196-site chain gives NaN losses).

Clocks.  Every library gets the same clock: the wall time from the start of its
set-up (embedding / model construction / tracing or compilation included) to the
end of each epoch or sweep, *minus* the time spent scoring the test set (which
only this benchmark asks for).  The set-up of tnlearn (embedding, PCA
initialisation, environments) is inside ``fit``: it is the wall time of ``fit`` up to
the end of sweep 1, minus the sweep's own seconds and one test evaluation.
The full wall time of each run, evaluations included, is printed too.

Thresholds are 80 / 85 / 90% of tnlearn's final test accuracy; for each the
script prints every library's time to reach it and the ratio
best-peer-time / tnlearn-time (> 1: tnlearn is faster).  A peer is stopped early
when its test accuracy has not improved by 0.2 points for ``--patience`` epochs, or
when its clock passes ``--peer-time-budget`` seconds.

Example (the default configuration, about 10 minutes on a 2-core machine)::

    python benchmarks/bench_peers.py
    python benchmarks/bench_peers.py --dataset digits          # a minute
    python benchmarks/bench_peers.py --skip-peers              # tnlearn alone

The peers are an optional extra: ``pip install -e ".[bench]"`` from the checkout (torch and
TensorKrowch); tn4ml separately with ``pip install tn4ml`` (it brings JAX).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
import warnings

import numpy as np

FRACTIONS = (0.80, 0.85, 0.90)
BENCH_HINT = ('pip install -e ".[bench]" from the checkout (on a machine without a GPU, first the CPU build of torch: '
              "pip install torch --index-url https://download.pytorch.org/whl/cpu)")


# ---------------------------------------------------------------------- results
class Run:
    """One library's run: per-epoch clock (set-up included, evaluation excluded) and test accuracy."""

    def __init__(self, name, config):
        self.name = name
        self.config = config
        self.setup = float("nan")
        self.epoch_seconds = []   # training seconds of each epoch / sweep
        self.clock = []           # cumulative clock at the end of each epoch / sweep
        self.accuracy = []        # test accuracy after each epoch / sweep
        self.wall = float("nan")  # full wall time, evaluations included
        self.unit = "epoch"
        self.note = ""
        self.skipped = None       # reason, when the library did not run

    def time_to(self, target):
        for c, a in zip(self.clock, self.accuracy):
            if a >= target:
                return c
        return None

    def print_curve(self):
        print(f"\n== {self.name}: {self.config}")
        if self.skipped:
            print(f"   skipped: {self.skipped}")
            return
        print(f"   set-up {self.setup:.1f} s; wall time of the whole run {self.wall:.1f} s (test evaluations included)")
        print(f"   {'#':>3} {self.unit + ' s':>9} {'clock s':>9} {'test acc':>9}")
        for i, (s, c, a) in enumerate(zip(self.epoch_seconds, self.clock, self.accuracy), 1):
            print(f"   {i:>3} {s:9.2f} {c:9.1f} {a:9.4f}")
        if self.note:
            print(f"   {self.note}")


def _fmt_time(t):
    return "not reached" if t is None else f"{t:.1f} s"


# ---------------------------------------------------------------------- tnlearn
def run_tnlearn(X_train, y_train, X_test, y_test, args):
    from tnlearn import MPSClassifier

    run = Run("tnlearn", f"MPSClassifier(max_bond={args.bond_dim}, n_sweeps={args.sweeps}, n_iter={args.n_iter!r}, "
                         f"loss={args.loss!r}, random_state=0): DMRG sweeps, float32, trig map")
    run.unit = "sweep"
    stamps = []
    clf = MPSClassifier(max_bond=args.bond_dim, n_sweeps=args.sweeps, n_iter=args.n_iter, loss=args.loss,
                        random_state=0)
    t0 = time.perf_counter()
    clf.fit(X_train, y_train, eval_set=(X_test, y_test), on_sweep=lambda _: stamps.append(time.perf_counter()))
    run.wall = time.perf_counter() - t0
    # one evaluation of the test set, as fit does after every sweep (embedding included: a slight overestimate)
    t = time.perf_counter()
    clf.score(X_test, y_test)
    eval_s = time.perf_counter() - t
    records = clf.history_.records
    run.epoch_seconds = [r.seconds for r in records]
    run.accuracy = [r.test_accuracy for r in records]
    run.clock = [(s - t0) - (k + 1) * eval_s for k, s in enumerate(stamps)]
    run.setup = run.clock[0] - run.epoch_seconds[0]
    run.note = f"one test evaluation takes {eval_s:.2f} s (subtracted from the clock after every sweep)"
    return run


# ---------------------------------------------------------------------- TensorKrowch
def _plateaued(acc, patience, min_delta=0.002):
    """No gain of ``min_delta`` in the last ``patience`` epochs (never with ``patience <= 0``: the check is off)."""
    if patience <= 0 or len(acc) <= patience:
        return False
    return max(acc[-patience:]) < max(acc[:-patience]) + min_delta


def run_tensorkrowch(X_train, y_train, X_test, y_test, args):
    name = "TensorKrowch"
    try:
        import tensorkrowch as tk
        import torch
    except ImportError as exc:
        run = Run(name, "")
        run.skipped = f"not installed ({exc}); install the peers with {BENCH_HINT}"
        return run
    from tnlearn import embed

    n_sites = X_train.shape[1]
    n_classes = int(max(y_train.max(), y_test.max())) + 1
    run = Run(name, f"tensorkrowch {tk.__version__}, torch {torch.__version__} (CPU, {args.threads} threads): "
                    f"MPSLayer(n_features={n_sites + 1}, in_dim=2, out_dim={n_classes}, bond_dim={args.bond_dim}, "
                    f"out_position={(n_sites + 1) // 2}, init_method={args.tk_init!r}), Adam lr={args.peer_lr:g}, "
                    f"cross-entropy, batch {args.peer_batch}, float32, trig map")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device("cpu")

    t0 = time.perf_counter()
    Xtr = torch.from_numpy(embed(X_train))   # (n, sites, 2) float32: the same arrays tnlearn embeds
    Xte = torch.from_numpy(embed(X_test))
    ytr = torch.from_numpy(np.asarray(y_train, dtype=np.int64))
    yte = torch.from_numpy(np.asarray(y_test, dtype=np.int64))
    init_kw = {"std": args.tk_std} if args.tk_init in ("randn", "randn_eye") else {}
    mps = tk.models.MPSLayer(n_features=n_sites + 1, in_dim=2, out_dim=n_classes, bond_dim=args.bond_dim,
                             out_position=(n_sites + 1) // 2, init_method=args.tk_init, device=device, **init_kw)
    mps.auto_stack = True
    mps.auto_unbind = False
    mps.trace(torch.zeros(1, n_sites, 2, device=device))
    optimizer = torch.optim.Adam(mps.parameters(), lr=args.peer_lr)
    loss_fun = torch.nn.CrossEntropyLoss()
    run.setup = time.perf_counter() - t0

    eval_total = 0.0
    stop = ""
    for epoch in range(args.epochs):
        t = time.perf_counter()
        perm = torch.randperm(len(Xtr))
        for i in range(0, len(Xtr), args.peer_batch):
            idx = perm[i:i + args.peer_batch]
            loss = loss_fun(mps(Xtr[idx]), ytr[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        t_end = time.perf_counter()
        run.epoch_seconds.append(t_end - t)
        run.clock.append(t_end - t0 - eval_total)
        with torch.no_grad():
            correct = sum(int((mps(Xte[i:i + 1000]).argmax(1) == yte[i:i + 1000]).sum())
                          for i in range(0, len(Xte), 1000))
        run.accuracy.append(correct / len(Xte))
        eval_total += time.perf_counter() - t_end
        print(f"   TensorKrowch epoch {epoch + 1}: {run.epoch_seconds[-1]:.1f} s, test acc {run.accuracy[-1]:.4f}",
              flush=True)
        if not np.isfinite(loss.item()):
            stop = "stopped: the loss is not finite"
            break
        if _plateaued(run.accuracy, args.patience):
            stop = f"stopped early after epoch {epoch + 1}: no 0.2-point gain in the last {args.patience} epochs"
            break
        if run.clock[-1] > args.peer_time_budget:
            stop = f"stopped after epoch {epoch + 1}: clock past --peer-time-budget {args.peer_time_budget:g} s"
            break
    run.wall = time.perf_counter() - t0
    run.note = stop or f"ran all {args.epochs} epochs"
    return run


# ---------------------------------------------------------------------- tn4ml
def run_tn4ml(X_train, y_train, X_test, y_test, args):
    name = "tn4ml"
    try:
        import jax
    except ImportError:
        jax = None
    try:
        if jax is None:
            raise ImportError("jax")
        jax.config.update("jax_enable_x64", True)  # before tn4ml builds any array
        import jax.numpy as jnp
        import optax
        from tn4ml.embeddings import TrigonometricEmbedding
        from tn4ml.initializers import randn
        from tn4ml.metrics import OptaxWrapper
        from tn4ml.models.mps import MPS_initialize
        from tn4ml.util import EarlyStopping, TrainingType, integer_to_one_hot
    except ImportError as exc:
        run = Run(name, "")
        run.skipped = (f"not installed ({exc}); `pip install tn4ml` (it brings JAX) to include it -- "
                       "not part of tnlearn[bench]")
        return run

    from importlib.metadata import version as _dist_version

    version = _dist_version("tn4ml")
    n_sites = X_train.shape[1]
    n_classes = int(max(y_train.max(), y_test.max())) + 1
    label_site = n_sites // 2
    run = Run(name, f"tn4ml {version}, jax {jax.__version__} (CPU): MPS_initialize(L={n_sites}, bond_dim={args.bond_dim}, "
                    f"phys_dim=2, class_index={label_site}, initializer=randn(1e-4), add_identity=True), "
                    f"strategy='global', Adam lr={args.peer_lr:g}, softmax cross-entropy, batch {args.peer_batch}, "
                    "normalize + canonize at the label after every step, float64, TrigonometricEmbedding() (= trig map)")
    dtype = jnp.float64
    embedding = TrigonometricEmbedding()

    def cross_entropy(*a, **k):
        return OptaxWrapper(optax.softmax_cross_entropy)(*a, **k).mean()

    # the per-epoch hook: tn4ml's Model.train calls earlystop.on_end_epoch after every epoch
    # (monitor="loss", no validation set); it scores the test set and keeps the clock
    state = {"eval": 0.0}
    Y_test_1h = integer_to_one_hot(np.asarray(y_test), n_classes)

    class EpochHook(EarlyStopping):
        def on_begin_train(self, history, model):
            self.memory = {"best_model": model}

        def on_end_epoch(self, loss_current, epoch, current_model):
            t_end = time.perf_counter()
            run.clock.append(t_end - t0 - state["eval"])
            run.epoch_seconds.append(current_model.history["epoch_time"][-1])
            acc = current_model.accuracy(X_test, Y_test_1h, embedding=embedding, batch_size=500, dtype=dtype)
            run.accuracy.append(float(acc))
            state["eval"] += time.perf_counter() - t_end
            print(f"   tn4ml epoch {epoch + 1}: {run.epoch_seconds[-1]:.1f} s, test acc {run.accuracy[-1]:.4f}",
                  flush=True)
            if not np.isfinite(loss_current):
                state["stop"] = "stopped: the loss is not finite"
                return 1
            if _plateaued(run.accuracy, args.patience):
                state["stop"] = (f"stopped early after epoch {epoch + 1}: no 0.2-point gain in the last "
                                 f"{args.patience} epochs")
                return 1
            if run.clock[-1] > args.peer_time_budget:
                state["stop"] = (f"stopped after epoch {epoch + 1}: clock past --peer-time-budget "
                                 f"{args.peer_time_budget:g} s")
                return 1
            return 0

    t0 = time.perf_counter()
    model = MPS_initialize(L=n_sites, initializer=randn(1e-4, dtype=dtype), key=jax.random.key(0),
                           dtype=dtype, shape_method="noteven", compress=False, cyclic=False, phys_dim=2,
                           bond_dim=args.bond_dim, class_index=label_site, canonical_center=label_site,
                           class_dim=n_classes, add_identity=True, boundary="obc")
    model.configure(optimizer=optax.adam, strategy="global", loss=cross_entropy,
                    train_type=TrainingType.SUPERVISED, learning_rate=args.peer_lr, device=("cpu", 0))
    run.setup = time.perf_counter() - t0
    Y_train_1h = integer_to_one_hot(np.asarray(y_train), n_classes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(X_train, targets=Y_train_1h, epochs=args.epochs, batch_size=args.peer_batch,
                    embedding=embedding, normalize=True, canonize=(True, label_site), dtype=dtype,
                    shuffle=True, seed=0, earlystop=EpochHook("loss", 0.0, 1, "min"))
    run.wall = time.perf_counter() - t0
    run.note = (state.get("stop") or f"ran all {args.epochs} epochs") + \
        "; epoch 1 includes JAX compilation (part of its clock)"
    return run


# ---------------------------------------------------------------------- report
def report(runs, args, dataset_desc):
    ref = runs[0]
    final = ref.accuracy[-1]
    targets = [(f, f * final) for f in FRACTIONS]
    for r in runs:
        r.print_curve()

    peers = [r for r in runs[1:] if not r.skipped]
    print(f"\n== time to accuracy (thresholds: 80/85/90% of tnlearn's final test accuracy {final:.4f})")
    for f, target in targets:
        t_ref = ref.time_to(target)
        line = [f"   {int(f * 100)}% = {target:.4f}: tnlearn {_fmt_time(t_ref)}"]
        for p in peers:
            line.append(f"{p.name} {_fmt_time(p.time_to(target))}")
        print(", ".join(line))

    # markdown table
    head = "| library | set-up s | s / epoch or sweep (median) | epochs / sweeps | final test acc | " + \
        " | ".join(f"time to {int(f * 100)}% ({t:.3f})" for f, t in targets) + " |"
    print(f"\n{dataset_desc}, bond dimension m = {args.bond_dim}, trig map; clock = set-up + training, "
          "test evaluations excluded\n")
    print(head)
    print("|" + "---|" * (5 + len(targets)))
    for r in runs:
        if r.skipped:
            print(f"| {r.name} | skipped: {r.skipped} |" + " |" * (3 + len(targets)))
            continue
        cells = [r.name, f"{r.setup:.1f}", f"{statistics.median(r.epoch_seconds):.1f}",
                 f"{len(r.accuracy)} {r.unit}s", f"{r.accuracy[-1]:.4f} (best {max(r.accuracy):.4f})"]
        cells += [_fmt_time(r.time_to(t)) for _, t in targets]
        print("| " + " | ".join(cells) + " |")
    if peers:
        cells = ["**best peer / tnlearn**", "", "", "", ""]
        for _, target in targets:
            t_ref = ref.time_to(target)
            times = [p.time_to(target) for p in peers]
            reached = [t for t in times if t is not None]
            if t_ref is None:
                cells.append("tnlearn not reached")
            elif reached:
                cells.append(f"**{min(reached) / t_ref:.1f}x**")
            else:
                # every peer needed more than its final clock, so the best one did too
                bound = min(p.clock[-1] for p in peers) / t_ref if all(p.clock for p in peers) else float("nan")
                cells.append(f"not reached (> {bound:.1f}x)")
        print("| " + " | ".join(cells) + " |")
    print()
    curve_head = "| library | test accuracy after each epoch / sweep |"
    print(curve_head)
    print("|---|---|")
    for r in runs:
        if not r.skipped:
            print(f"| {r.name} | " + " / ".join(f"{100 * a:.1f}" for a in r.accuracy) + " |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=["fashion-mnist", "digits"], default="fashion-mnist",
                   help="fashion-mnist: 14x14 from /usr/share/datasets or the cache (default); digits: 8x8, fast")
    p.add_argument("--n-train", type=int, default=None,
                   help="training images (default: 8000 for fashion-mnist, all 1347 for digits); "
                        "the test set is always the full one")
    p.add_argument("--bond-dim", type=int, default=20, help="bond dimension m for every library (default: 20)")
    p.add_argument("--sweeps", type=int, default=3, help="tnlearn DMRG sweeps (default: 3)")
    p.add_argument("--n-iter", type=lambda t: t if t == "auto" else int(t), default="auto",
                   help="tnlearn gradient steps per bond (default: auto, MPSClassifier's: 1 with mse, 3 with "
                        "cross_entropy)")
    p.add_argument("--loss", choices=("auto", "mse", "cross_entropy"), default="auto",
                   help="tnlearn's loss (default: auto, MPSClassifier's)")
    p.add_argument("--epochs", type=int, default=30, help="peer epochs at most (default: 30)")
    p.add_argument("--patience", type=int, default=4,
                   help="stop a peer when its test accuracy gained < 0.2 points in this many epochs (default: 4)")
    p.add_argument("--peer-time-budget", type=float, default=240.0,
                   help="stop a peer after the epoch at which its clock passes this many seconds (default: 240)")
    p.add_argument("--peer-lr", type=float, default=1e-3, help="Adam learning rate of the peers (default: 1e-3)")
    p.add_argument("--peer-batch", type=int, default=100, help="peer mini-batch size (default: 100)")
    p.add_argument("--tk-init", default="unit",
                   help="TensorKrowch init_method (default: unit; see benchmarks/README.md for the others tried)")
    p.add_argument("--tk-std", type=float, default=1e-9, help="std for --tk-init randn / randn_eye (default: 1e-9)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    p.add_argument("--peers", nargs="+", choices=["tensorkrowch", "tn4ml"], default=["tensorkrowch", "tn4ml"],
                   help="peers to run (default: both; tn4ml only if installed)")
    p.add_argument("--skip-peers", action="store_true", help="run tnlearn alone")
    args = p.parse_args(argv)

    from tnlearn.datasets import flatten_images, load_dataset

    if args.dataset == "fashion-mnist":
        n_train = 8000 if args.n_train is None else args.n_train
    else:
        n_train = args.n_train
    ds = load_dataset(args.dataset, n_train=n_train, random_state=0)
    X_train, X_test = flatten_images(ds.X_train), flatten_images(ds.X_test)
    y_train, y_test = ds.y_train, ds.y_test
    desc = (f"{ds.name} {ds.image_shape[0]}x{ds.image_shape[1]} ({X_train.shape[1]} sites), "
            f"{len(X_train)} train / {len(X_test)} test images")
    print(f"data    : {desc}")
    print(f"machine : {platform.machine()}, Python {platform.python_version()}, numpy {np.__version__}")
    print("order   : tnlearn, then each peer, sequentially in this process", flush=True)

    runs = [run_tnlearn(X_train, y_train, X_test, y_test, args)]
    print(f"   tnlearn: {len(runs[0].accuracy)} sweeps, test acc "
          + " / ".join(f"{a:.4f}" for a in runs[0].accuracy), flush=True)
    if args.skip_peers:
        print(f"\npeers skipped (--skip-peers); install them with {BENCH_HINT}")
    else:
        if "tensorkrowch" in args.peers:
            runs.append(run_tensorkrowch(X_train, y_train, X_test, y_test, args))
            if runs[-1].skipped:
                print(f"\nTensorKrowch could not run: {runs[-1].skipped}", flush=True)
        if "tn4ml" in args.peers:
            runs.append(run_tn4ml(X_train, y_train, X_test, y_test, args))
            if runs[-1].skipped:
                print(f"\ntn4ml skipped: {runs[-1].skipped}", flush=True)
    report(runs, args, desc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
