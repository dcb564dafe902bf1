"""Physics views of a trained classifier: Schmidt spectra and entanglement across every bond.

A fitted :class:`~tnlearn.models.MPSClassifier` is a matrix-product state
``|W> = sum_l |l> (x) |W_l>`` over the label and the ``N`` feature sites.  Two
readings of "the entanglement across bond ``b``" (between sites ``b - 1`` and
``b``) are offered:

* ``label="left"``: the Schmidt decomposition of the whole normalised ``|W>``
  with the label index counted in the *left* block (where it sits after a
  finished sweep, on site 0).  Tracing out the label and the left sites leaves
  the right block's reduced density matrix, whose spectrum this is.  It is what
  quimb's ``MatrixProductState.schmidt_values`` / ``entropy`` give for the
  exported network.
* ``label=l`` (a class index): the Schmidt decomposition of the normalised
  single-class state ``|W_l>``, one profile per class.

Spectra are computed from the engine's cores in one left-to-right sweep of
SVDs on the small centre matrix (the sites right of the label are already
right-canonical), ``O(N m^3)``.
"""

from __future__ import annotations

import numpy as np


def _chain(model, label):
    """Cores with the label removed (fixed or merged into site 0), all on the host, centre at 0."""
    head = model.head_ if hasattr(model, "head_") else model
    if head.center != 0:
        raise ValueError(f"the label is on site {head.center}; spectra need it on site 0 (a finished sweep)")
    be = head.backend
    cores = [np.asarray(be.asnumpy(c), dtype=np.float64) for c in head.cores]
    first = cores[0]  # (1, d, L, D1)
    n_labels = first.shape[2]
    if label == "left":
        cores[0] = first.reshape(1, first.shape[1] * n_labels, first.shape[3])
    elif isinstance(label, (int, np.integer)) and 0 <= label < n_labels:
        cores[0] = first[:, :, int(label), :]
    else:
        raise ValueError(f"label={label!r} must be 'left' or a class index in 0..{n_labels - 1}")
    return cores


def schmidt_spectra(model, label="left"):
    """Squared Schmidt values (normalised to sum 1) across every bond.

    Parameters
    ----------
    model : MPSClassifier or MPSHead
        Fitted, with the label on site 0.
    label : "left" or int
        See the module docstring.

    Returns
    -------
    list of ndarray
        ``N - 1`` arrays; entry ``b - 1`` is the spectrum across bond ``b``
        (between sites ``b - 1`` and ``b``), in decreasing order.
    """
    cores = _chain(model, label)
    spectra = []
    carry = None  # S @ Vh from the previous bond, shape (k, D_b)
    for i in range(len(cores) - 1):
        c = cores[i]
        if carry is not None:
            c = np.tensordot(carry, c, axes=(1, 0))
        _, s, vh = np.linalg.svd(c.reshape(-1, c.shape[-1]), full_matrices=False)
        p = s**2
        total = p.sum()
        if total == 0:
            raise ValueError("the network is zero (or the chosen class's part of it is): no spectrum")
        spectra.append(p / total)
        carry = s[:, None] * vh / np.sqrt(total)
    return spectra


def entanglement_entropies(model, label="left", base=2.0):
    """Von Neumann entropy across every bond.

    Parameters
    ----------
    model : MPSClassifier or MPSHead
    label : "left" or int
        See :func:`schmidt_spectra`.
    base : float
        Of the logarithm: 2 gives bits (quimb's convention), ``e`` nats.

    Returns
    -------
    ndarray, shape (N - 1,)
    """
    out = []
    for p in schmidt_spectra(model, label):
        p = p[p > 0]
        out.append(float(-(p * np.log(p)).sum() / np.log(base)))
    return np.array(out)


def entanglement_by_class(model, base=2.0):
    """Entropy profile of every single-class state ``|W_l>``.

    Returns
    -------
    ndarray, shape (L, N - 1)
    """
    head = model.head_ if hasattr(model, "head_") else model
    return np.stack([entanglement_entropies(model, label=l, base=base) for l in range(head.n_labels)])
