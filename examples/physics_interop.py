"""Physics interop: a trained classifier is a quimb MatrixProductState.

Loads a saved model (or trains a small one on the embedded digits), takes its
quimb MPS, checks the canonical form, computes the entanglement entropy of the
normalised weight state across every bond (the label index belongs to the block
that holds it, site 0 after a finished sweep), the Schmidt spectrum at the middle
bond and the bond-dimension profile, and plots them.

    python examples/physics_interop.py                       # train on digits first
    python examples/physics_interop.py runs/fashion-mnist-m20/model.npz
"""

from __future__ import annotations

import argparse
import os

import numpy as np


def load_or_train(path):
    from tnlearn import MPSClassifier
    from tnlearn.datasets import flatten_images, load_dataset
    from tnlearn.io import load_model

    if path:
        return load_model(path), os.path.basename(os.path.dirname(os.path.abspath(path))) or path
    data = load_dataset("digits")
    clf = MPSClassifier(max_bond=16, n_sweeps=4, random_state=0)
    clf.fit(flatten_images(data.X_train), data.y_train)
    return clf, "digits m=16"


def main(argv=None):
    p = argparse.ArgumentParser(description="entanglement of a trained MPS classifier")
    p.add_argument("model", nargs="?", help="model.npz written by tnlearn (default: train on digits)")
    p.add_argument("--out", default="runs/physics_interop/entanglement.png",
                   help="figure to write (default: runs/physics_interop/entanglement.png)")
    args = p.parse_args(argv)

    clf, name = load_or_train(args.model)
    mps = clf.mps_  # quimb.tensor.MatrixProductState
    n = mps.L
    label_site = next(i for i in range(n) if "label" in mps[f"I{i}"].inds)
    print(f"{name}: {n} sites, label index on site {label_site}, bond dims {mps.bond_sizes()[:8]}...")

    # the sites right of the label are right-canonical: A A^dagger = 1
    t = mps[f"I{n - 2}"]
    left_bond = mps.bond(n - 3, n - 2)
    gram = (t.H.reindex({left_bond: left_bond + "'"}) @ t).data
    print("right-canonical check on site", n - 2, ":", np.allclose(gram, np.eye(gram.shape[0]), atol=1e-4))

    from tnlearn import MPSClassifier
    from tnlearn.physics import entanglement_by_class, entanglement_entropies, schmidt_spectra

    # tnlearn's own sweep of SVDs over the cores, checked against quimb at a few bonds
    entropies = entanglement_entropies(clf)  # bits; the label counted in the left block
    psi = mps / mps.norm()  # a normalised state in (label) x (features)
    for b in (1, n // 2, n - 1):
        assert abs(float(psi.entropy(b)) - entropies[b - 1]) < 1e-3, "tnlearn and quimb disagree"
    middle = n // 2
    spectrum = schmidt_spectra(clf)[middle - 1]
    print(f"entanglement entropy (bits): max {entropies.max():.3f} at bond {entropies.argmax() + 1}, "
          f"mean {entropies.mean():.3f} (log2 of the largest bond: {np.log2(max(clf.head_.bond_dims)):.3f})")
    print(f"Schmidt values^2 at bond {middle}: {np.round(spectrum[:6], 4)} ...")
    per_class = entanglement_by_class(clf)
    print("mean entropy of each single-class state |W_l>:", np.round(per_class.mean(axis=1), 3))

    # and back: any quimb MPS with a label index is a classifier
    again = MPSClassifier.from_quimb(mps, classes=clf.classes_, feature_map=clf.feature_map)
    print("from_quimb(clf.mps_) has the same bond dimensions:", again.head_.bond_dims == clf.head_.bond_dims)

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from tnlearn.plotting import plot_entanglement

    fig = Figure(figsize=(10, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2, width_ratios=[2, 1])
    plot_entanglement([entropies], [name], ax=ax1)
    ax2.semilogy(np.arange(1, len(spectrum) + 1), spectrum, "o-")
    ax2.set(xlabel="index", ylabel="Schmidt value$^2$", title=f"spectrum at bond {middle}")
    ax2.grid(True, alpha=0.3)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
