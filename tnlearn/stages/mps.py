"""The MPS classifier head: an open chain of site tensors with one label index.

Cores are plain arrays on the chosen backend.  Site ``i`` has shape
``(D_i, d, D_{i+1})`` (boundary dimensions ``D_0 = D_N = 1``), except the
*centre* site, which also carries the label index: shape ``(D_c, d, L, D_{c+1})``.
Sites left of the centre are left-canonical, sites right of it
right-canonical, and the centre has unit Frobenius norm; the network's overall
scale is kept separately as ``log_norm`` so that long chains never overflow.
The represented function is::

    f[l](x) = exp(log_norm) * contraction(cores, phi(x_0), ..., phi(x_{N-1}))[l]
"""

from __future__ import annotations

import numpy as np

from tnlearn.environments import left_step, right_step
from tnlearn.rows import log_normalise_rows
from tnlearn.gram import as_gram
from tnlearn.truncation import metric_truncated_split, split_matrix


def init_cores(n_sites, phys_dim, n_labels, bond_dim, rng, dtype=np.float32, noise=1e-2):
    """Data-free initial cores: near-identity bond maps plus noise, right-canonical, label on site 0.

    Every site starts as ``A[a, s, b] = delta_ab / sqrt(d) + noise``, so an input
    passes along the chain without being annihilated whatever its pixels
    (random tensors would make the initial environments exponentially small
    and nearly random); the noise breaks the symmetry between bond channels.
    :func:`pca_init_cores` starts much closer to a good model.

    Parameters
    ----------
    n_sites, phys_dim, n_labels, bond_dim : int
    rng : numpy.random.Generator
    dtype : numpy dtype
    noise : float

    Returns
    -------
    cores : list of ndarray
        ``cores[0]`` has shape ``(1, d, L, D_1)``, the others ``(D_i, d, D_{i+1})``.
    log_norm : float
    """
    dims = [1] + [min(bond_dim, phys_dim ** min(i, n_sites - i)) for i in range(1, n_sites)] + [1]
    cores = []
    for i in range(n_sites):
        Dl, Dr = dims[i], dims[i + 1]
        core = np.zeros((Dl, phys_dim, Dr))
        for s in range(phys_dim):
            core[:, s, :] = np.eye(Dl, Dr) / np.sqrt(phys_dim)
        core += noise * rng.standard_normal(core.shape)
        cores.append(core)
    label = 1.0 + noise * rng.standard_normal(n_labels)
    cores[0] = np.einsum("asb,l->aslb", cores[0], label)
    cores, log_norm = right_canonicalize(cores)
    return [c.astype(dtype) for c in cores], log_norm


def pca_init_cores(
    phi_sites, n_labels, bond_dim, rng, backend, chunk_size=4096, balance=0.0, max_weight=1e4, shard=None,
    targets=None,
):
    """Data-driven initial cores: each right site keeps the principal subspace of the data.

    Sweeping from the right end, site ``j`` is the isometry onto the ``bond_dim``
    leading eigenvectors of the sample "density matrix"
    ``rho_j = sum_n (phi_j[n] (x) R_{j+1}[n]) (phi_j[n] (x) R_{j+1}[n])^T`` of the
    normalised right environments, the truncation that keeps the most of the
    training set's weight (DMRG's density-matrix truncation applied to the data,
    as in Stoudenmire 2018).  Environments then start out informative, so
    the first sweep only has to learn the label map; random tensors would give
    exponentially small, nearly random environments, and near-identity tensors
    environments of rank one.

    A bond keeps at most as many directions as the data has: eigenvalues below
    ``width * eps(dtype) * max(eigenvalue)`` are rounding noise (pixels that
    are constant over the training set, such as the border of handwritten
    digits, give exactly rank-deficient density matrices), and an eigenvector
    of a zero eigenvalue is an arbitrary choice that rounding makes
    differently on every machine.  The sweeps grow such a bond where the data
    support it.

    With ``targets`` the label site 0 is the least-squares read-out of the
    targets from ``phi_0 (x) R_1`` (lightly ridge-regularised, see
    :func:`least_squares_readout`): a function of the data alone,
    the same whatever signs or rotations the eigensolver picked for the
    bases, so two machines that round differently start from the same
    model.  Without ``targets`` it is a random unit tensor drawn from ``rng``
    (for callers that replace it, such as the conv stage).

    Parameters
    ----------
    phi_sites : array, shape (N, n_samples, d)
        Embedded training samples on ``backend``.
    n_labels, bond_dim : int
    rng : numpy.random.Generator
    backend : Backend
    chunk_size : int
    shard : tnlearn.distributed.Shard, optional
        In a data-parallel run ``phi_sites`` holds this rank's samples: the
        density matrices are summed over the ranks and rank 0's eigenvectors
        broadcast (so that all ranks continue in the same basis).  A random
        label site comes from ``rng``: broadcast the head afterwards when the
        ranks' generators may differ.
    targets : array, shape (n_samples, n_labels), optional
        One-hot targets on ``backend`` (this rank's rows with a ``shard``):
        the label site becomes their least-squares read-out.

    Returns
    -------
    cores : list of arrays (backend)
        ``cores[0]`` has shape ``(1, d, L, D_1)`` and unit norm; the others are
        right-canonical.
    log_norm : float
        The log norm of the read-out (0 for a random label site).
    """
    xp = backend.xp
    n_sites, n, d = phi_sites.shape
    dtype = phi_sites.dtype
    right = xp.ones((n, 1), dtype=dtype)
    log_capture = xp.zeros(n, dtype=np.float64)
    cores = [None] * n_sites
    for j in range(n_sites - 1, 0, -1):
        width = d * right.shape[1]
        top = log_capture.max() if shard is None else shard.max(log_capture.max())
        weight = xp.exp(-balance * (log_capture - top)).astype(dtype)
        weight = xp.minimum(weight, max_weight)

        blocks = {}  # phi_j (x) R_{j+1} per chunk (by its first sample), kept for the new environments below

        def density(share):  # one worker's chunks: its rho (called in this iteration only)
            rho = xp.zeros((width, width), dtype=np.float64)
            for sl in share:
                M = blocks[sl.start] = backend.row_outer(phi_sites[j, sl], right[sl])
                rho += (M.T @ (M * weight[sl, None])).astype(np.float64)
            return rho

        rho = backend.sum_chunks(density, n, chunk_size)
        if shard is not None:
            rho = shard.sum(rho)
        evals, evecs = np.linalg.eigh(backend.asnumpy(rho))
        rank = int(np.count_nonzero(evals > width * np.finfo(dtype).eps * max(evals[-1], 0.0)))
        k = max(1, min(bond_dim, rank))
        V = evecs[:, ::-1][:, :k].astype(dtype)  # leading eigenvectors, shape (d * D_{j+1}, k)
        if shard is not None:  # eigenvector signs are arbitrary: take rank 0's
            V = shard.comm.bcast_arrays([V])[0]
        cores[j] = backend.asarray(np.ascontiguousarray(V.T).reshape(k, d, right.shape[1]))
        Vb = backend.asarray(V)
        new_right = xp.empty((n, k), dtype=dtype)

        def project(share):
            for sl in share:
                new_right[sl] = blocks[sl.start] @ Vb

        backend.map_chunks(project, n, chunk_size)
        del blocks
        log_capture += log_normalise_rows(new_right, xp)
        right = new_right
    if targets is None:
        label = rng.standard_normal((1, d, n_labels, right.shape[1]))
        cores[0] = backend.asarray((label / np.linalg.norm(label)).astype(dtype))
        return cores, 0.0
    label = least_squares_readout(phi_sites[0], right, targets, backend, chunk_size, shard)
    nrm = float(np.linalg.norm(label))
    if nrm == 0.0:  # targets orthogonal to every input (cannot happen with one-hot rows): any unit tensor
        label, nrm = np.ones_like(label), float(np.sqrt(label.size))
    cores[0] = backend.asarray((label / nrm).astype(dtype))
    return cores, float(np.log(nrm))


def least_squares_readout(phi_0, right, targets, backend, chunk_size=4096, shard=None, ridge=1e-3):
    """Ridge least-squares label site: ``argmin_W sum_n |(phi_0[n] (x) R[n]) W - y[n]|^2 + lam |W|^2``.

    Parameters
    ----------
    phi_0 : array, shape (n, d)
    right : array, shape (n, D)
        Right environments of site 0.
    targets : array, shape (n, L)
    backend : Backend
    chunk_size : int
    shard : tnlearn.distributed.Shard, optional
        Sums over the samples of all ranks.
    ridge : float
        ``lam = ridge * (largest eigenvalue of the inputs' Gram matrix)``.  The
        inputs' Gram matrix is ill-conditioned (directions a few samples
        populate); an unregularised read-out then has a norm in the thousands
        (Fashion-MNIST, m = 20: e^10) for the same fit (train accuracy 66.0%
        against 65.9% with the ridge, norm e^3.4), and such weights make the
        first sweep's normalised outputs blow up on the samples that populate
        those directions.

    Returns
    -------
    ndarray, shape (1, d, L, D), float64 (host)
    """
    n, d = phi_0.shape
    D, L = right.shape[1], targets.shape[1]
    xp = backend.xp

    def sums(share):  # one worker's chunks
        gram = xp.zeros((d * D, d * D), dtype=np.float64)
        cross = xp.zeros((d * D, L), dtype=np.float64)
        for sl in share:
            X = backend.row_outer(phi_0[sl], right[sl]).astype(np.float64)
            gram += X.T @ X
            cross += X.T @ targets[sl].astype(np.float64)
        return gram, cross

    gram, cross = backend.sum_chunks(sums, n, chunk_size)
    if shard is not None:
        gram, cross = shard.sum(gram), shard.sum(cross)
    w, V = np.linalg.eigh(backend.asnumpy(gram))
    w = np.maximum(w, 0.0)
    lam = max(ridge * w[-1], np.finfo(np.float64).tiny)
    W = V @ ((V.T @ backend.asnumpy(cross)) / (w + lam)[:, None])  # (d D, L)
    return W.reshape(d, D, L).transpose(0, 2, 1)[None]


def right_canonicalize(cores):
    """Make sites ``1 .. N-1`` right-canonical by LQ sweeps; the norm goes to ``log_norm``.

    Parameters
    ----------
    cores : list of ndarray (host)
        Label on site 0.

    Returns
    -------
    cores : list of ndarray
    log_norm : float
    """
    cores = list(cores)
    for i in range(len(cores) - 1, 0, -1):
        Dl, d, Dr = cores[i].shape
        q, r = np.linalg.qr(cores[i].reshape(Dl, d * Dr).T)  # core = r.T @ q.T
        k = q.shape[1]
        cores[i] = q.T.reshape(k, d, Dr)
        prev = cores[i - 1]
        cores[i - 1] = np.tensordot(prev, r.T, axes=([prev.ndim - 1], [0]))
    nrm = np.linalg.norm(cores[0])
    cores[0] = cores[0] / nrm
    return cores, float(np.log(nrm))


def block_matrix(block, direction):
    """The matrix a split of a merged block factorises.

    Parameters
    ----------
    block : ndarray, shape (Dl, d, d2, L, Dr)
    direction : {"right", "left"}
        ``"right"``: the label goes to the right factor, rows ``(a, s)`` and
        columns ``(t, l, b)``; ``"left"``: it stays left, rows ``(a, s, l)`` and
        columns ``(t, b)``.

    Returns
    -------
    ndarray, shape (Dl * d, d2 * L * Dr) or (Dl * d * L, d2 * Dr)
    """
    Dl, d, d2, L, Dr = block.shape
    if direction == "right":
        return block.reshape(Dl * d, d2 * L * Dr)
    return block.transpose(0, 1, 3, 2, 4).reshape(Dl * d * L, d2 * Dr)


def _label_identity_metric(G, outer, L, inner):
    """``X -> X @ (G acting on (outer, inner), identity on the label)`` for columns ``(outer, L, inner)``.

    The data metric of a split acts on a block's bond and physical indices and
    not on its label; applying it this way costs ``L`` times less than forming
    the ``(outer L inner)^2`` Kronecker product.

    Parameters
    ----------
    G : ndarray, shape (outer * inner, outer * inner)
    outer, L, inner : int

    Returns
    -------
    callable
        ``X (r, outer * L * inner) -> (r, outer * L * inner)``.
    """

    def apply(X):
        r = X.shape[0]
        Y = X.reshape(r, outer, L, inner).transpose(0, 2, 1, 3).reshape(r * L, outer * inner) @ G
        return Y.reshape(r, L, outer, inner).transpose(0, 2, 1, 3).reshape(r, outer * L * inner)

    return apply


def matrix_to_block(mat, shape, direction):
    """Inverse of :func:`block_matrix`: back to a block of ``shape`` ``(Dl, d, d2, L, Dr)``."""
    Dl, d, d2, L, Dr = shape
    if direction == "right":
        return mat.reshape(shape)
    return mat.reshape(Dl, d, L, d2, Dr).transpose(0, 1, 3, 2, 4)


class MPSHead:
    """An MPS with a label index, in mixed canonical form, on a backend.

    Parameters
    ----------
    cores : list of arrays
        Site tensors as described in the module docstring.
    center : int
        Site carrying the label index.
    log_norm : float
    backend : Backend
    """

    def __init__(self, cores, center, log_norm, backend):
        self.backend = backend
        # C-contiguous always, so that a model loaded from disk runs the very same BLAS
        # calls (and gives bit-identical results) as the one that was saved
        self.cores = [backend.xp.ascontiguousarray(backend.asarray(c)) for c in cores]
        self.center = int(center)
        self.log_norm = float(log_norm)
        self._check()

    def _check(self):
        for i, c in enumerate(self.cores):
            want = 4 if i == self.center else 3
            if c.ndim != want:
                raise ValueError(f"site {i} has {c.ndim} axes, expected {want} (centre is site {self.center})")

    @property
    def n_sites(self):
        return len(self.cores)

    @property
    def n_labels(self):
        return self.cores[self.center].shape[2]

    @property
    def phys_dim(self):
        return self.cores[0].shape[1]

    @property
    def bond_dims(self):
        """Dimensions of the ``N - 1`` internal bonds, left to right."""
        return [int(c.shape[-1]) for c in self.cores[:-1]]

    @property
    def n_params(self):
        return int(sum(c.size for c in self.cores))

    # -- two-site moves -----------------------------------------------------------
    def merge(self, j):
        """Merged block of sites ``(j, j+1)``, shape ``(Dl, d, d, L, Dr)``.

        The centre must be ``j`` or ``j + 1``.
        """
        xp = self.backend.xp
        a, b = self.cores[j], self.cores[j + 1]
        if self.center == j:  # (Dl, s, l, m) x (m, t, Dr)
            return xp.einsum("aslm,mtb->astlb", a, b)
        if self.center == j + 1:  # (Dl, s, m) x (m, t, l, Dr)
            return xp.einsum("asm,mtlb->astlb", a, b)
        raise ValueError(f"cannot merge sites ({j}, {j + 1}): the label is on site {self.center}")

    def split(self, j, block, direction, truncation, log_norm=None, grams=None):
        """Split a merged block by truncated SVD and move the centre.

        Parameters
        ----------
        j : int
        block : array, shape (Dl, d, d, L, Dr)
            On the host or the backend (the split runs on the host).
        direction : {"right", "left"}
            ``"right"``: site ``j`` becomes left-canonical (``U``), the label and
            ``S V`` go to site ``j + 1``; ``"left"``: the reverse.
        truncation : Truncation
            ``max_bond``, ``cutoff``, ``cutoff_mode`` of the split.
        log_norm : float, optional
            Log norm of the whole network with this block (default: the
            head's, for a block from :meth:`merge`).
        grams : tuple of ndarray or GramMatrix, optional
            ``(G_left (Dl d, Dl d), G_right (d Dr, d Dr))``, the data Gram matrices
            of the block's two halves (:meth:`LocalProblem.grams`).  When given,
            the split keeps what matters most for the outputs on the data
            (:func:`tnlearn.truncation.metric_truncated_split`) instead of the
            plain SVD's largest Frobenius weight.

        Returns
        -------
        TruncationInfo
        """
        be = self.backend
        log_norm = self.log_norm if log_norm is None else log_norm
        Dl, d, d2, L, Dr = block.shape
        host = be.asnumpy(block)  # the sweep passes a host block already (LocalProblem.from_scaled)
        if grams is not None:
            left, right, info = self._metric_split(host, direction, truncation, grams)
        else:
            left, right, info = split_matrix(block_matrix(host, direction), direction, truncation)
            k = info.kept
            if direction == "right":
                left, right = left.reshape(Dl, d, k), right.reshape(k, d2, L, Dr)
            else:
                left, right = left.reshape(Dl, d, L, k), right.reshape(k, d2, Dr)
        # the new centre (the core with the label) is stored with unit norm; its norm joins log_norm
        left, right = left.astype(host.dtype, copy=False), right.astype(host.dtype, copy=False)
        if direction == "right":
            nrm = np.linalg.norm(right)
            right = right / nrm
            center = j + 1
        else:
            nrm = np.linalg.norm(left)
            left = left / nrm
            center = j
        self.assign({j: left, j + 1: right}, center, float(log_norm) + float(np.log(nrm)))
        return info

    def assign(self, cores, center, log_norm):
        """Replace cores (``{site: array}``, host or backend) and set the centre and log norm.

        The one way the network changes from outside a split (a roll-back to a
        snapshot, rank 0's cores broadcast to the other ranks).
        """
        be = self.backend
        for i, core in cores.items():
            self.cores[i] = be.xp.ascontiguousarray(be.asarray(core))
        self.center = int(center)
        self.log_norm = float(log_norm)

    def _metric_split(self, host, direction, truncation, grams):
        """The data-metric split of a host block: ``(left core, right core, TruncationInfo)``, unnormalised."""
        Dl, d, d2, L, Dr = host.shape
        gl_sqrt, gl_inv = as_gram(grams[0]).sqrt_and_inv_sqrt()
        gr_sqrt, gr_inv = as_gram(grams[1]).sqrt_and_inv_sqrt()
        cut = (truncation.max_bond, truncation.cutoff, truncation.cutoff_mode)
        if direction == "right":
            # columns are (t, l, b); the right Gram acts on (t, b) and is the identity on l
            Q, C, info = metric_truncated_split(
                block_matrix(host, direction), gl_sqrt, gl_inv, _label_identity_metric(gr_sqrt, d2, L, Dr), *cut
            )
            k = Q.shape[1]
            return Q.reshape(Dl, d, k), C.reshape(k, d2, L, Dr), info
        # columns are (a, s, l); the left Gram acts on (a, s) and is the identity on l
        Q, C, info = metric_truncated_split(
            block_matrix(host, direction).T, gr_sqrt, gr_inv, _label_identity_metric(gl_sqrt, Dl * d, L, 1), *cut
        )
        k = Q.shape[1]
        return C.T.reshape(Dl, d, L, k), Q.T.reshape(k, d2, Dr), info

    # -- prediction -----------------------------------------------------------------
    def decision_function(self, phi_sites, chunk_size=4096, normalized=False):
        """Model outputs by contracting the chain with each sample's product state.

        Parameters
        ----------
        phi_sites : array, shape (n_sites, n_samples, d)
            Embedded samples, site-major, on this head's backend.
        chunk_size : int
        normalized : bool
            Divide each sample's outputs by the norms of its left and right
            environments at the label site (same argmax; the outputs that
            ``normalize_samples`` training fits).

        Returns
        -------
        ndarray, shape (n_samples, L), float64 (host)
        """
        n = phi_sites.shape[1]
        out = np.empty((n, self.n_labels))

        def work(share):
            for sl in share:
                out[sl] = self._chunk_outputs(phi_sites, sl, normalized)

        self.backend.map_chunks(work, n, chunk_size)
        return out

    def _chunk_outputs(self, phi_sites, sl, normalized):
        """:meth:`decision_function` of the samples ``sl`` (host float64)."""
        be = self.backend
        xp = be.xp
        c = self.center
        m = phi_sites[0, sl].shape[0]
        left = xp.ones((m, 1), dtype=phi_sites.dtype)
        log_s = xp.zeros(m, dtype=np.float64)
        for i in range(c):
            left = left_step(left, phi_sites[i, sl], self.cores[i], be)
            log_s = log_s + log_normalise_rows(left, xp)
        right = xp.ones((m, 1), dtype=phi_sites.dtype)
        for i in range(self.n_sites - 1, c, -1):
            right = right_step(right, phi_sites[i, sl], self.cores[i], be)
            log_s = log_s + log_normalise_rows(right, xp)
        core = self.cores[c]
        Dl, d, L, Dr = core.shape
        T = xp.matmul(be.row_outer(left, phi_sites[c, sl]), core.reshape(Dl * d, L * Dr))
        f = be.row_contract(T.reshape(m, L, Dr), right).astype(np.float64)
        f *= np.exp(self.log_norm) if normalized else xp.exp(log_s + self.log_norm)[:, None]
        return be.asnumpy(f)
