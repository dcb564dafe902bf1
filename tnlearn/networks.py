"""Conversions between the engine's cores and plain quimb tensor networks.

A trained classifier is handed out as a ``quimb.tensor.MatrixProductState``:

* site tensors tagged ``"I0" .. "I{N-1}"`` (``site_tag_id="I{}"``);
* physical indices ``"k0" .. "k{N-1}"`` (``site_ind_id="k{}"``), one per feature;
* bonds named ``"b0" .. "b{N-2}"`` (bond ``i`` joins sites ``i`` and ``i + 1``);
* the label index ``"label"`` (size ``n_classes``) on the centre site, whose
  position is stored in the network's ``tnlearn_center`` attribute is *not*
  needed: ``mps[f"I{c}"]`` is the tensor with ``"label"`` in its ``inds``.

Sites left of the label are left-canonical and those right of it
right-canonical.  The overall scale is folded into the label tensor when it is
moderate; for very long chains it is kept in quimb's ``exponent`` attribute
(``mps ^ all`` honours it).  Contracting with :func:`product_state` gives the
classifier's outputs::

    (mps & product_state(phi_row)) ^ all  ->  Tensor with inds ("label",)
"""

from __future__ import annotations

import numpy as np

SITE_TAG_ID = "I{}"
SITE_IND_ID = "k{}"
BOND_IND_ID = "b{}"
LABEL_IND = "label"
_FOLD_LIMIT = 30.0  # |log_norm| below which the scale is folded into the centre tensor


def head_to_quimb(head, device=False):
    """The head's network as a quimb ``MatrixProductState``.

    Parameters
    ----------
    head : MPSHead
    device : bool
        False (default): host numpy copies of the cores.  True: copies on the
        head's backend (cupy arrays for a GPU-trained model), which quimb
        contracts on the device through autoray.

    Returns
    -------
    quimb.tensor.MatrixProductState
    """
    import quimb.tensor as qtn

    be = head.backend
    n = head.n_sites
    tensors = []
    for i, core in enumerate(head.cores):
        data = core.copy() if device else be.asnumpy(core)
        inds = [BOND_IND_ID.format(i - 1), SITE_IND_ID.format(i)]
        if i == head.center:
            inds.append(LABEL_IND)
        inds.append(BOND_IND_ID.format(i))
        if i == 0:  # drop the dimension-one boundary bonds
            data, inds = data[0], inds[1:]
        if i == n - 1:
            data, inds = data[..., 0], inds[:-1]
        if i == head.center and abs(head.log_norm) <= _FOLD_LIMIT:
            data = data * np.exp(head.log_norm).astype(data.dtype)
        tensors.append(qtn.Tensor(data, inds=inds, tags={SITE_TAG_ID.format(i)}))
    tn = qtn.TensorNetwork(tensors)
    mps = tn.view_as(qtn.MatrixProductState, L=n, site_tag_id=SITE_TAG_ID, site_ind_id=SITE_IND_ID, cyclic=False)
    if abs(head.log_norm) > _FOLD_LIMIT:
        mps.exponent = head.log_norm / np.log(10)
    return mps


def quimb_to_cores(mps, label_ind=LABEL_IND):
    """Arrays in the engine's layout from a quimb MPS carrying a label index.

    Parameters
    ----------
    mps : quimb.tensor.MatrixProductState
        Open-boundary MPS; exactly one site tensor must carry ``label_ind``.
    label_ind : str

    Returns
    -------
    cores : list of ndarray
        ``(Dl, d, Dr)`` per site, ``(Dl, d, L, Dr)`` on the label site.
    center : int
        Site of the label.
    log_scale : float
        Natural log of the network's ``exponent`` factor.
    """
    if getattr(mps, "cyclic", False):
        raise ValueError("the MPS is periodic (cyclic=True); a classifier is an open chain: pass an open-boundary "
                         "MatrixProductState")
    n = mps.L
    cores, center = [], None
    for i in range(n):
        t = mps[mps.site_tag(i)]
        phys = mps.site_ind(i)
        left = [ix for ix in t.inds if i > 0 and ix in mps[mps.site_tag(i - 1)].inds]
        right = [ix for ix in t.inds if i < n - 1 and ix in mps[mps.site_tag(i + 1)].inds]
        order = left + [phys] + ([label_ind] if label_ind in t.inds else []) + right
        extra = set(t.inds) - set(order)
        if extra:
            raise ValueError(f"site {i} has unexpected indices {sorted(extra)}; expected bonds, {phys!r} and {label_ind!r}")
        data = np.asarray(t.transpose(*order).data)
        if np.iscomplexobj(data):
            if np.any(data.imag):
                raise ValueError(f"site {i} has complex entries; the classifiers are real networks: pass a real "
                                 "MPS (e.g. mps.astype('float64') when the imaginary parts are negligible)")
            data = data.real
        if label_ind in t.inds:
            if center is not None:
                raise ValueError(f"index {label_ind!r} appears on sites {center} and {i}; it must be on one site")
            center = i
        if not left:
            data = data[None]
        if not right:
            data = data[..., None]
        cores.append(data)
    if center is None:
        raise ValueError(f"no site carries the label index {label_ind!r}; pass label_ind= the output index name")
    return cores, center, float(getattr(mps, "exponent", 0.0)) * np.log(10)


def canonicalize_around(cores, center):
    """Mixed canonical form around ``center``; returns ``(cores, log_norm)`` with a unit-norm centre."""
    cores = [np.array(c) for c in cores]
    for i in range(center):  # left-canonical from the left
        c = cores[i]
        q, r = np.linalg.qr(c.reshape(-1, c.shape[-1]))
        cores[i] = q.reshape(*c.shape[:-1], q.shape[1])
        cores[i + 1] = np.tensordot(r, cores[i + 1], axes=(1, 0))
    for i in range(len(cores) - 1, center, -1):  # right-canonical from the right
        c = cores[i]
        q, r = np.linalg.qr(c.reshape(c.shape[0], -1).T)
        cores[i] = q.T.reshape(q.shape[1], *c.shape[1:])
        cores[i - 1] = np.tensordot(cores[i - 1], r.T, axes=(cores[i - 1].ndim - 1, 0))
    nrm = np.linalg.norm(cores[center])
    cores[center] = cores[center] / nrm
    return cores, float(np.log(nrm))


def product_state(phi_row):
    """One embedded sample as a quimb product state with indices ``"k{i}"``.

    Parameters
    ----------
    phi_row : array, shape (n_sites, d)
        A numpy array, or a device array (cupy) to contract with a network
        from ``head_to_quimb(head, device=True)``.

    Returns
    -------
    quimb.tensor.MatrixProductState
        Bond dimension one.
    """
    import quimb.tensor as qtn

    rows = [phi_row[i] for i in range(len(phi_row))] if hasattr(phi_row, "shape") else list(np.asarray(phi_row))
    return qtn.MPS_product_state(rows, site_ind_id=SITE_IND_ID, site_tag_id=SITE_TAG_ID)
