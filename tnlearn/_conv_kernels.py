"""Patch gathering, its adjoint and max pooling for the numpy backend, compiled by numba.

The memory-bound pieces of a TT-convolution step around its GEMMs: numpy's
strided copies, transposes and ``argmax`` over pooling windows cost several
times the products themselves (a 28x28, 16 -> 32 channel step of 128 images
measured 120 ms, most of it in these copies).  Plain loops over contiguous
channel vectors do each in one pass.  Single-threaded, as
:mod:`tnlearn._kernels` explains.  :mod:`tnlearn.stages.tt_conv` calls them
for numpy arrays and keeps array-module code for other backends.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(fastmath=True, cache=True)
def patches(x, kh, kw, stride, padding, Ho, Wo):  # pragma: no cover - compiled
    """im2col of ``x`` (n, H, W, c) with zero padding: (n, Ho, Wo, kh * kw * c)."""
    n, H, W, c = x.shape
    out = np.zeros((n, Ho, Wo, kh * kw * c), dtype=x.dtype)
    for s in range(n):
        for i in range(Ho):
            for j in range(Wo):
                for dy in range(kh):
                    r = i * stride + dy - padding
                    if r < 0 or r >= H:
                        continue
                    for dx in range(kw):
                        q = j * stride + dx - padding
                        if q < 0 or q >= W:
                            continue
                        base = (dy * kw + dx) * c
                        for ch in range(c):
                            out[s, i, j, base + ch] = x[s, r, q, ch]
    return out


@numba.njit(fastmath=True, cache=True)
def patches_adjoint(g, H, W, c, kh, kw, stride, padding):  # pragma: no cover - compiled
    """col2im: patch gradients ``g`` (n, Ho, Wo, kh * kw * c) summed onto (n, H, W, c)."""
    n, Ho, Wo, _ = g.shape
    out = np.zeros((n, H, W, c), dtype=g.dtype)
    for s in range(n):
        for i in range(Ho):
            for j in range(Wo):
                for dy in range(kh):
                    r = i * stride + dy - padding
                    if r < 0 or r >= H:
                        continue
                    for dx in range(kw):
                        q = j * stride + dx - padding
                        if q < 0 or q >= W:
                            continue
                        base = (dy * kw + dx) * c
                        for ch in range(c):
                            out[s, r, q, ch] += g[s, i, j, base + ch]
    return out


@numba.njit(fastmath=True, cache=True)
def max_pool(x, p):  # pragma: no cover - compiled
    """Max over non-overlapping ``p x p`` windows of (n, H, W, c); returns values and in-window argmax."""
    n, H, W, c = x.shape
    Ho, Wo = H // p, W // p
    out = np.empty((n, Ho, Wo, c), dtype=x.dtype)
    arg = np.zeros((n, Ho, Wo, c), dtype=np.int32)
    for s in range(n):
        for i in range(Ho):
            for j in range(Wo):
                for ch in range(c):
                    out[s, i, j, ch] = x[s, i * p, j * p, ch]
                for a in range(p):
                    for b in range(p):
                        if a == 0 and b == 0:
                            continue
                        k = a * p + b
                        for ch in range(c):
                            v = x[s, i * p + a, j * p + b, ch]
                            if v > out[s, i, j, ch]:
                                out[s, i, j, ch] = v
                                arg[s, i, j, ch] = k
    return out, arg


@numba.njit(fastmath=True, cache=True)
def max_pool_adjoint(d, arg, H, W, p):  # pragma: no cover - compiled
    """Each window's gradient ``d`` (n, Ho, Wo, c) put at its maximum of an (n, H, W, c) input."""
    n, Ho, Wo, c = d.shape
    out = np.zeros((n, H, W, c), dtype=d.dtype)
    for s in range(n):
        for i in range(Ho):
            for j in range(Wo):
                for ch in range(c):
                    k = arg[s, i, j, ch]
                    out[s, i * p + k // p, j * p + k % p, ch] = d[s, i, j, ch]
    return out
