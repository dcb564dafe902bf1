"""A convolution whose kernel is a tensor train: the stage a tensor-network CNN is stacked from.

A ``k x k`` convolution from ``c_in`` to ``c_out`` channels is the matrix
``W`` of shape ``(k * k * c_in, c_out)`` applied to every (zero-padded) patch
of the input, weight-shared over positions.  Here ``W`` is a
:class:`~tnlearn.stages.tt.TTMatrix` whose input modes are the patch's rows,
columns and channels, ``in_shape = (k, k, *factors of c_in)``, and whose
output modes factor ``c_out`` — the TT convolution of Garipov, Podoprikhin,
Novikov & Vetrov ("Ultimate tensorization: compressing convolutional and FC
layers alike", 2016).  A stage is

    x (n, H, W, c_in) --patches--> (n, H', W', k k c_in) --@ W + b--> max-pool (p x p) --> ReLU

(pooling and ReLU commute: the ReLU acts on the pooled, smaller map)

and a dense TT layer is the same stage with one patch covering the whole
input (``kernel = (H, W)``, no padding, no pooling): its input modes are the
feature map's rows, columns and channel factors.

The two-site sweeps treat ``W`` like any TT (:class:`~tnlearn.stages.base.Stage`:
``merge``, ``split``); :meth:`TTConv.forward` and :meth:`TTConv.backward` take
an optional merged block of bond ``j`` in place of cores ``j, j+1``, so a
minibatch step can move the block alone.  The stage forms ``W`` from its cores
once per call (:meth:`TTMatrix.block_dense`, ``k k c_in x c_out`` numbers,
fewer than a minibatch's activations) and applies it with one GEMM over all
patches; the gradient ``dW = patches^T dY`` goes back to the block through the
other cores (:meth:`TTMatrix.block_gradient_from_dense`).

The patch and pooling maps are pure functions with their adjoints, so the
gradient of a lower stage is taken through every stage above it.
"""

from __future__ import annotations

import math

import numpy as np

from tnlearn import _conv_kernels
from tnlearn.stages.tt import TTMatrix, check_tt_shapes, tt_from_dense


def conv_output_size(size, kernel, stride, padding):
    """Output length of a ``kernel`` window moved by ``stride`` over ``size + 2 padding`` positions."""
    out = (size + 2 * padding - kernel) // stride + 1
    if out < 1:
        raise ValueError(f"a {kernel}-wide kernel with padding {padding} does not fit an input of size {size}")
    return out


def extract_patches(x, kernel, stride=1, padding=0, xp=np):
    """Every ``kh x kw`` patch of a batch of feature maps (im2col).

    Parameters
    ----------
    x : array, shape (n, H, W, c)
    kernel : tuple (kh, kw)
    stride, padding : int
        Zero padding on every side.

    Returns
    -------
    array, shape (n, H', W', kh * kw * c)
        Patch entries in ``(row, column, channel)`` row-major order.
    """
    kh, kw = kernel
    n, H, W, c = x.shape
    Ho, Wo = conv_output_size(H, kh, stride, padding), conv_output_size(W, kw, stride, padding)
    if (kh, kw) == (H, W) and padding == 0:  # one patch: the whole map (a dense layer)
        return x.reshape(n, 1, 1, H * W * c)
    if xp is np:
        return _conv_kernels.patches(np.ascontiguousarray(x), kh, kw, stride, padding, Ho, Wo)
    if padding:
        x = xp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    out = xp.empty((n, Ho, Wo, kh, kw, c), dtype=x.dtype)
    for dy in range(kh):  # kh * kw strided copies: no (n, H', W', kh, kw, c) index arrays
        for dx in range(kw):
            out[:, :, :, dy, dx] = x[:, dy : dy + stride * (Ho - 1) + 1 : stride, dx : dx + stride * (Wo - 1) + 1 : stride]
    return out.reshape(n, Ho, Wo, kh * kw * c)


def extract_patches_adjoint(d_patches, input_shape, kernel, stride=1, padding=0, xp=np):
    """The adjoint of :func:`extract_patches` (col2im): patch gradients summed back onto the input.

    Parameters
    ----------
    d_patches : array, shape (n, H', W', kh * kw * c)
    input_shape : tuple (n, H, W, c)

    Returns
    -------
    array, shape (n, H, W, c)
    """
    kh, kw = kernel
    n, H, W, c = input_shape
    _, Ho, Wo, _ = d_patches.shape
    if (kh, kw) == (H, W) and padding == 0:
        return d_patches.reshape(input_shape)
    if xp is np:
        return _conv_kernels.patches_adjoint(np.ascontiguousarray(d_patches), H, W, c, kh, kw, stride, padding)
    g = d_patches.reshape(n, Ho, Wo, kh, kw, c)
    out = xp.zeros((n, H + 2 * padding, W + 2 * padding, c), dtype=d_patches.dtype)
    for dy in range(kh):
        for dx in range(kw):
            out[:, dy : dy + stride * (Ho - 1) + 1 : stride, dx : dx + stride * (Wo - 1) + 1 : stride] += g[:, :, :, dy, dx]
    return out[:, padding : padding + H, padding : padding + W]


def max_pool(x, size, xp=np):
    """Non-overlapping ``size x size`` max pooling (rows / columns beyond a multiple of ``size`` dropped).

    Returns
    -------
    out : array, shape (n, H // size, W // size, c)
    argmax : array of int32, same shape
        Position of the maximum inside its window (row-major), for :func:`max_pool_adjoint`.
    """
    if xp is np:
        return _conv_kernels.max_pool(np.ascontiguousarray(x), size)
    n, H, W, c = x.shape
    Ho, Wo = H // size, W // size
    win = x[:, : Ho * size, : Wo * size].reshape(n, Ho, size, Wo, size, c).transpose(0, 1, 3, 5, 2, 4)
    win = win.reshape(n, Ho, Wo, c, size * size)
    arg = xp.argmax(win, axis=-1)
    return xp.take_along_axis(win, arg[..., None], axis=-1)[..., 0], arg.astype(np.int32)


def max_pool_adjoint(d_out, argmax, input_shape, size, xp=np):
    """Gradient of :func:`max_pool`: each window's gradient goes to its maximum.

    Returns
    -------
    array, shape ``input_shape``
    """
    n, H, W, c = input_shape
    if xp is np:
        return _conv_kernels.max_pool_adjoint(np.ascontiguousarray(d_out), argmax, H, W, size)
    _, Ho, Wo, _ = d_out.shape
    onehot = (argmax[..., None] == xp.arange(size * size, dtype=np.int32)).astype(d_out.dtype)
    win = (onehot * d_out[..., None]).reshape(n, Ho, Wo, c, size, size).transpose(0, 1, 4, 2, 5, 3)
    out = xp.zeros(input_shape, dtype=d_out.dtype)
    out[:, : Ho * size, : Wo * size] = win.reshape(n, Ho * size, Wo * size, c)
    return out


def channel_factors(c):
    """The TT input modes of ``c`` channels: one mode up to 16, else near-square factors, larger first.

    ``channel_factors(16) == (16,)``, ``channel_factors(32) == (8, 4)``,
    ``channel_factors(64) == (8, 8)``, ``channel_factors(1) == ()``; a prime stays one mode.
    """
    c = int(c)
    if c <= 16:
        return (c,) if c > 1 else ()
    f = max((f for f in range(2, math.isqrt(c) + 1) if c % f == 0), default=None)
    return (c,) if f is None else (*channel_factors(c // f), f)


def output_factors(c_out, n_modes):
    """``c_out`` split into ``n_modes`` factors, powers of two where it can, larger ones at the ends.

    ``output_factors(32, 3) == (4, 2, 4)``; ``output_factors(10, 2) == (2, 5)`` (an odd
    factor left over goes where the next factor of two would have gone).
    """
    factors = [1] * n_modes
    rest = int(c_out)
    k = 0
    order = [i for pair in zip(range(n_modes), range(n_modes - 1, -1, -1)) for i in pair][:n_modes]
    order = list(dict.fromkeys(order))
    while rest % 2 == 0 and rest > 1:
        factors[order[k % n_modes]] *= 2
        rest //= 2
        k += 1
    factors[order[k % n_modes]] *= rest
    return tuple(factors)


class TTConv:
    """A convolution (or, with one patch, a dense layer) whose kernel matrix is a TT; ReLU and max pooling.

    Parameters
    ----------
    tt : TTMatrix
        Kernel matrix, ``prod(in_shape) = kh * kw * c_in``, ``prod(out_shape) = c_out``.
    bias : array, shape (c_out,)
    kernel : tuple (kh, kw)
    stride, padding : int
    pool : int
        Max-pooling window (1: none).
    relu : bool, default=True

    Attributes
    ----------
    c_in, c_out : int
    """

    def __init__(self, tt, bias, kernel, stride=1, padding=0, pool=1, relu=True):
        self.tt = tt
        self.bias = bias
        self.kernel = (int(kernel[0]), int(kernel[1]))
        self.stride, self.padding, self.pool, self.relu = int(stride), int(padding), int(pool), bool(relu)
        kk = self.kernel[0] * self.kernel[1]
        if tt.in_features % kk:
            raise ValueError(f"the TT takes {tt.in_features} inputs, not a multiple of the {self.kernel} kernel's {kk} positions")
        self.c_in = tt.in_features // kk
        self.c_out = tt.out_features
        if tuple(bias.shape) != (self.c_out,):
            raise ValueError(f"bias has shape {tuple(bias.shape)}; the stage has {self.c_out} output channels")

    @classmethod
    def random(cls, input_shape, c_out, kernel, rng, max_rank, stride=1, padding=0, pool=1, relu=True,
               dtype=np.float32, backend="numpy"):
        """He-initialised TT kernel with input modes ``(kh, kw, *channel_factors(c_in))``.

        Parameters
        ----------
        input_shape : tuple (H, W, c_in)
        c_out : int
        kernel : tuple (kh, kw)
        rng : numpy.random.Generator
        max_rank : int or None
            Largest TT-rank (None: exact).
        """
        in_shape = tuple(f for f in (*kernel, *channel_factors(input_shape[2])) if f > 1)
        in_shape = in_shape + (1,) * (2 - len(in_shape))  # a sweep needs two cores
        out_shape = output_factors(c_out, len(in_shape))
        in_shape, out_shape = check_tt_shapes(in_shape, out_shape)
        rank = max_rank if max_rank is not None else max(math.prod(in_shape), c_out)
        tt = TTMatrix.random(in_shape, out_shape, rank, rng, dtype, backend)
        bias = tt.backend.xp.zeros(c_out, dtype=dtype)
        return cls(tt, bias, kernel, stride, padding, pool, relu)

    @classmethod
    def from_dense(cls, W, bias, kernel, in_shape, out_shape, max_rank=None, cutoff=0.0, stride=1, padding=0,
                   pool=1, relu=True, dtype=np.float32, backend="numpy"):
        """A trained kernel matrix ``W`` (``kh kw c_in x c_out``, patch order row, column, channel) by TT-SVD.

        Returns
        -------
        stage : TTConv
        info : dict
            :func:`~tnlearn.stages.tt.tt_from_dense`'s report (``relative_error``, ``ranks``, ...).
        """
        tt, info = tt_from_dense(W, in_shape, out_shape, max_rank, cutoff, dtype=dtype, backend=backend)
        return cls(tt, tt.backend.asarray(np.asarray(bias, dtype=dtype)), kernel, stride, padding, pool, relu), info

    def __repr__(self):
        kh, kw = self.kernel
        return (f"TTConv({kh}x{kw}, {self.c_in} -> {self.c_out} channels, stride {self.stride}, padding "
                f"{self.padding}, pool {self.pool}, TT-ranks {self.tt.ranks}, {self.n_params} parameters)")

    # the Stage interface (tnlearn.stages.base)
    @property
    def n_sites(self):
        """Number of TT cores of the kernel matrix."""
        return self.tt.n_sites

    @property
    def bond_dims(self):
        """The kernel matrix's TT-ranks."""
        return self.tt.ranks

    @property
    def n_params(self):
        """TT parameters plus the bias."""
        return self.tt.n_params + int(self.bias.size)

    @property
    def dense_params(self):
        """Parameters of the same stage with a dense kernel matrix (``kh kw c_in c_out`` plus the bias)."""
        return self.tt.in_features * self.tt.out_features + int(self.bias.size)

    def merge(self, j):
        """Merged block of cores ``j, j+1`` (:meth:`TTMatrix.merge`)."""
        return self.tt.merge(j)

    def split(self, j, block, direction, truncation):
        """Cut a merged block back into cores ``j, j+1`` by truncated SVD (:meth:`TTMatrix.split`)."""
        return self.tt.split(j, block, direction, truncation)

    def output_shape(self, input_shape):
        """``(H_out, W_out, c_out)`` after convolution and pooling of an ``(H, W, c_in)`` input."""
        H, W = input_shape[:2]
        Ho = conv_output_size(H, self.kernel[0], self.stride, self.padding)
        Wo = conv_output_size(W, self.kernel[1], self.stride, self.padding)
        return Ho // self.pool, Wo // self.pool, self.c_out

    def weight(self, block=None, j=None):
        """The kernel matrix ``(kh kw c_in, c_out)``; with ``block``, cores ``j, j+1`` replaced by it."""
        if block is None:
            block, j = self.tt.merge(0), 0
        return self.tt.block_dense(j, block)

    def forward(self, x, block=None, j=None, bias=None, W=None):
        """The stage's output and what its backward pass needs.

        Parameters
        ----------
        x : array, shape (n, H, W, c_in)
        block : array, optional
            Merged block of bond ``j`` in place of cores ``j, j+1``.
        bias : array, shape (c_out,), optional
            In place of :attr:`bias`.
        W : array, optional
            The kernel matrix, if already formed (:meth:`weight`).

        Returns
        -------
        out : array, shape (n, H_out, W_out, c_out)
        cache : tuple
        """
        xp = self.tt.backend.xp
        W = self.weight(block, j) if W is None else W
        b = self.bias if bias is None else bias
        cols = extract_patches(x, self.kernel, self.stride, self.padding, xp)
        n, Ho, Wo, K = cols.shape
        pre = (cols.reshape(-1, K) @ W + b).reshape(n, Ho, Wo, self.c_out)
        # max pooling first, then the ReLU: the two commute (ReLU is monotone) and the ReLU, its
        # mask and its gradient then act on a pool^2 times smaller array
        pooled, arg = max_pool(pre, self.pool, xp) if self.pool > 1 else (pre, None)
        act = xp.maximum(pooled, 0) if self.relu else pooled
        return act, (x.shape, cols, pre.shape, pooled, arg, W)

    def backward(self, d_out, cache, j=None, need_input=True):
        """Gradients of a loss whose gradient in the output is ``d_out``.

        Parameters
        ----------
        d_out : array, shape (n, H_out, W_out, c_out)
        cache : tuple
            From :meth:`forward`.
        j : int, optional
            The bond whose merged block is trained (None: no block gradient).
        need_input : bool
            Whether to return the gradient in ``x`` (False for the lowest stage).

        Returns
        -------
        d_x : array or None, shape (n, H, W, c_in)
        d_block : array or None
        d_bias : array, shape (c_out,)
        """
        xp = self.tt.backend.xp
        x_shape, cols, pre_shape, pooled, arg, W = cache
        d = d_out * (pooled > 0) if self.relu else d_out
        if self.pool > 1:
            d = max_pool_adjoint(d, arg, pre_shape, self.pool, xp)
        K = cols.shape[-1]
        d2 = d.reshape(-1, self.c_out)
        d_bias = d2.sum(axis=0)
        d_block = None
        if j is not None:
            d_block = self.tt.block_gradient_from_dense(j, cols.reshape(-1, K).T @ d2)
        d_x = None
        if need_input:
            d_cols = (d2 @ W.T).reshape(cols.shape)
            d_x = extract_patches_adjoint(d_cols, x_shape, self.kernel, self.stride, self.padding, xp)
        return d_x, d_block, d_bias
