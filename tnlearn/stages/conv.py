"""A convolutional stage: one small MPS shared over all image patches.

Every ``p x p`` patch (stride ``s``, non-overlapping by default) is embedded as
a product state of its ``p^2`` pixels (``phi(x)`` per pixel, raster order) and
contracted with one MPS over ``p^2`` sites whose site 0 carries an output
index of ``c`` channels.  The patch's ``c``-vector ``u``, normalised to
``v = u / |u|``, is the local vector of one site of the next stage, so an
``H x W`` image becomes an ``H' x W'`` grid (``H' = (H - p) // s + 1``) of
``c``-dimensional local vectors — weight sharing over patches is a
convolution written as a tensor network (Stoudenmire 2018; Selvan & Dam 2020).

The patches of all samples form one long sample axis of length
``n_patches * n_samples`` (patch-major: pseudo-sample ``k * n + i`` is patch
``k`` of sample ``i``), so the stage reuses the MPS machinery of
:mod:`tnlearn.stages.mps` and the cached environments of
:mod:`tnlearn.environments` unchanged.
"""

from __future__ import annotations

import numpy as np

from tnlearn.embeddings import embed
from tnlearn.environments import right_step
from tnlearn.rows import log_normalise_rows, normalise_rows
from tnlearn.stages.mps import MPSHead, pca_init_cores



def patch_grid(image_shape, patch, stride):
    """Output grid ``(H', W')`` of a ``patch x patch`` window moved by ``stride``.

    Raises
    ------
    ValueError
        When the window does not fit or the sizes are not positive integers.
    """
    H, W = image_shape
    for name, value in (("patch", patch), ("stride", stride)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name}={value!r} must be an integer >= 1")
    if patch > min(H, W):
        raise ValueError(f"patch={patch} does not fit in {H}x{W} images; use patch <= {min(H, W)}")
    return (H - patch) // stride + 1, (W - patch) // stride + 1


def extract_patches(images, patch, stride=None):
    """Pixels of every patch, raster order inside and across patches.

    Parameters
    ----------
    images : array, shape (n, H, W)
    patch : int
    stride : int, optional
        Default ``patch`` (non-overlapping).

    Returns
    -------
    ndarray, shape (n, H' * W', patch * patch)
    """
    stride = patch if stride is None else stride
    n, H, W = images.shape
    Ho, Wo = patch_grid((H, W), patch, stride)
    view = np.lib.stride_tricks.sliding_window_view(images, (patch, patch), axis=(1, 2))
    view = view[:, : (Ho - 1) * stride + 1 : stride, : (Wo - 1) * stride + 1 : stride]
    return np.ascontiguousarray(view).reshape(n, Ho * Wo, patch * patch)


def patch_sites(images, patch, stride, feature_map, dtype, backend, out_of_domain="raise"):
    """Embedded patches as site-major pseudo-samples for the conv MPS.

    Returns
    -------
    array, shape (patch * patch, n_patches * n, d), on ``backend``
        Pseudo-sample ``k * n + i`` is patch ``k`` of image ``i``.
    """
    pix = extract_patches(images, patch, stride)  # (n, K, q)
    n, K, q = pix.shape
    flat = pix.transpose(1, 0, 2).reshape(K * n, q)
    phi = embed(flat, feature_map, dtype=dtype, out_of_domain=out_of_domain)  # (K n, q, d)
    return backend.asarray(np.ascontiguousarray(phi.transpose(1, 0, 2)))


def pca_conv_cores(phi_patch, n_channels, bond_dim, rng, backend, chunk_size=65536):
    """Conv MPS whose channels are the principal components of the patch states.

    The right sites keep the principal subspace of the patch data (as
    :func:`tnlearn.stages.mps.pca_init_cores`), and site 0 maps onto the
    ``n_channels`` leading eigenvectors of the data density matrix of
    ``phi_0 (x) R_1`` — close to the top principal components of the patches'
    product states (the environments are normalised per patch, which weights
    patches equally; ``tests/test_conv.py`` checks the captured weight against
    the optimum).  A data-driven generalisation of average pooling, as in
    Stoudenmire 2018's tree layers.

    Parameters
    ----------
    phi_patch : array, shape (q, n_pseudo, d)
    n_channels, bond_dim : int
    rng : numpy.random.Generator
    backend : Backend

    Returns
    -------
    MPSHead
        Channel index on site 0.
    """
    xp = backend.xp
    q, n, d = phi_patch.shape
    cores, _ = pca_init_cores(phi_patch, n_channels, bond_dim, rng, backend, chunk_size)
    right = xp.ones((n, 1), dtype=phi_patch.dtype)
    for j in range(q - 1, 0, -1):
        right = right_step(right, phi_patch[j], cores[j], backend)
        log_normalise_rows(right, xp)
    width = d * right.shape[1]
    rho = xp.zeros((width, width), dtype=np.float64)
    for start in range(0, n, chunk_size):
        M = backend.row_outer(phi_patch[0, start : start + chunk_size], right[start : start + chunk_size])
        rho += (M.T @ M).astype(np.float64)
    evals, evecs = np.linalg.eigh(backend.asnumpy(rho))
    c = min(n_channels, width)
    V = evecs[:, ::-1][:, :c]
    if c < n_channels:  # more channels than the patch space holds: pad with small noise
        V = np.concatenate([V, 1e-3 * rng.standard_normal((width, n_channels - c))], axis=1)
    D1 = right.shape[1]
    core0 = V.reshape(d, D1, n_channels).transpose(0, 2, 1)[None]
    core0 = core0 / np.linalg.norm(core0)
    cores[0] = backend.asarray(core0.astype(phi_patch.dtype))
    return MPSHead(cores, 0, 0.0, backend)


def _full_patch_vectors(phi_patch, start, stop, backend):
    """Full product vectors ``phi_0 (x) ... (x) phi_{q-1}`` of pseudo-samples ``start:stop``."""
    out = phi_patch[0, start:stop]
    for k in range(1, phi_patch.shape[0]):
        out = backend.row_outer(out, phi_patch[k, start:stop])
    return out


def dense_to_conv_cores(W, q, d, dtype, max_bond=None):
    """MPS form of a dense patch map: ``W`` (d**q, c) -> cores, channel index on site 0.

    Exact unless ``max_bond`` caps a bond (then each split keeps the largest
    singular values, right to left).

    Returns
    -------
    cores : list of ndarray
        ``(1, d, c, D_1)``, then right-orthonormal ``(D, d, D')``.
    log_norm : float
    """
    c = W.shape[1]
    T = W.reshape((d,) * q + (c,))
    T = np.moveaxis(T, q, 1)  # (d, c, d, ..., d)
    cores = [None] * q
    rest = T.reshape(d * c * d ** (q - 1), 1)
    right_dim = 1
    for j in range(q - 1, 0, -1):
        mat = rest.reshape(-1, d * right_dim)  # (left part, d * D_right)
        U, S, Vh = np.linalg.svd(mat, full_matrices=False)
        keep = max(1, int(np.count_nonzero(S > S[0] * 1e-12))) if S.size and S[0] > 0 else 1
        if max_bond is not None:
            keep = min(keep, int(max_bond))
        cores[j] = Vh[:keep].reshape(keep, d, right_dim)
        rest = U[:, :keep] * S[:keep]
        right_dim = keep
    core0 = rest.reshape(1, d, c, right_dim)
    nrm = np.linalg.norm(core0)
    cores[0] = core0 / nrm
    return [x.astype(dtype) for x in cores], float(np.log(nrm))


def pooled_conv_cores(phi_patch, pixels, n_channels, feature_map, backend, chunk_size=65536, ridge=1e-6,
                      max_bond=None):
    """Conv MPS that starts as average pooling followed by the feature map, plus detail channels.

    Channels ``0 .. d-1`` are the least-squares fit, over all training patches,
    of ``phi(mean of the patch's pixels)`` by a linear map of the patch's
    product state (what a plain MPS on average-pooled images sees); the
    remaining channels are the leading principal components of the patch
    states orthogonal to those.  A conv-mps model therefore starts close to
    where the plain MPS on pooled images starts (the fit is not exact: the
    feature map of a mean is not multilinear in the pixels' feature vectors),
    and its conv sweeps only accept steps that lower the loss.  Needs
    ``d ** (patch * patch) <= 4096`` (dense fit).

    Parameters
    ----------
    phi_patch : array, shape (q, n_pseudo, d)
    pixels : ndarray, shape (n_pseudo, q)
        Raw pixel values of the same patches.
    n_channels : int
        At most ``d ** (patch * patch)``.
    feature_map : str or FeatureMap
    backend : Backend
    max_bond : int, optional
        Cap of the conv bonds (truncated SVD of the exact MPS form).

    Returns
    -------
    MPSHead
    """
    from tnlearn.embeddings import get_feature_map

    q, n, d = phi_patch.shape
    width = d**q
    if width > 4096:
        raise ValueError(f"init='pooled' fits a dense {width}-dimensional patch map; use init='pca' for patches this large")
    fmap = get_feature_map(feature_map)
    A = np.zeros((width, width))
    B = np.zeros((width, fmap.dim))
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        F = backend.asnumpy(_full_patch_vectors(phi_patch, start, stop, backend)).astype(np.float64)
        target = np.asarray(fmap(pixels[start:stop].mean(axis=1)[:, None]), dtype=np.float64)[:, 0, :]
        A += F.T @ F
        B += F.T @ target
    shift = ridge * np.trace(A) / width
    M = np.linalg.solve(A + shift * np.eye(width), B)  # (width, dim)
    channels = [M[:, : min(n_channels, fmap.dim)]]
    extra = n_channels - channels[0].shape[1]
    if extra > 0:
        Q, _ = np.linalg.qr(M)
        proj = np.eye(width) - Q @ Q.T
        evals, evecs = np.linalg.eigh(proj @ A @ proj)
        V = evecs[:, ::-1][:, :extra]
        scale = np.linalg.norm(M, axis=0).mean()
        channels.append(V * scale)
    W = np.concatenate(channels, axis=1)
    cores, log_norm = dense_to_conv_cores(W, q, d, phi_patch.dtype, max_bond)
    return MPSHead([backend.asarray(c) for c in cores], 0, log_norm, backend)


class ConvStage:
    """A conv MPS shared over patches, with its geometry.

    Parameters
    ----------
    net : MPSHead
        ``patch * patch`` sites, channel index on its centre site.
    patch, stride : int
    image_shape : tuple of int
        ``(H, W)`` of the input images.
    feature_map : str or FeatureMap, default="trig"
        The pixel map the conv MPS was trained with.
    """

    def __init__(self, net, patch, stride, image_shape, feature_map="trig"):
        self.net = net
        self.feature_map = feature_map
        self.patch = int(patch)
        self.stride = int(stride)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.grid = patch_grid(self.image_shape, self.patch, self.stride)
        if net.n_sites != self.patch**2:
            raise ValueError(f"a {patch}x{patch} patch needs a {patch**2}-site conv MPS, got {net.n_sites} sites")

    @property
    def dtype(self):
        """Floating dtype of the conv MPS (and of the embedded patches it takes)."""
        return self.net.cores[0].dtype

    # the Stage interface (tnlearn.stages.base): the conv MPS's cores, channel index as the label
    @property
    def n_sites(self):
        return self.net.n_sites

    @property
    def bond_dims(self):
        return self.net.bond_dims

    @property
    def n_params(self):
        return self.net.n_params

    def merge(self, j):
        """Merged block of conv sites ``(j, j+1)``, shape ``(Dl, d, d, n_channels, Dr)``."""
        return self.net.merge(j)

    def split(self, j, block, direction, truncation, log_norm=None):
        """Split a merged conv block (see :meth:`tnlearn.stages.mps.MPSHead.split`)."""
        return self.net.split(j, block, direction, truncation, log_norm)

    @property
    def n_patches(self):
        return self.grid[0] * self.grid[1]

    @property
    def n_channels(self):
        return self.net.n_labels

    def features(self, phi_patch, n_samples, chunk_size=65536):
        """Normalised channel vectors of every patch: the next stage's local vectors.

        Parameters
        ----------
        phi_patch : array, shape (patch**2, n_patches * n_samples, d)
            From :func:`patch_sites`.
        n_samples : int

        Returns
        -------
        array, shape (n_patches, n_samples, n_channels), on the backend
        """
        be = self.net.backend
        # per-patch normalised outputs (same direction as the raw ones): no under/overflow in float32
        u = be.asarray(self.net.decision_function(phi_patch, chunk_size, normalized=True).astype(phi_patch.dtype))
        v, _ = normalise_rows(u, be.xp)
        return v.reshape(self.n_patches, n_samples, self.n_channels)
