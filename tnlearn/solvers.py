"""Local updates of a merged two-site block.

Every solver takes a :class:`~tnlearn.local_problem.LocalProblem` (the block's
outputs as a linear map), the current working block and the one-hot targets,
and returns the updated block.  Losses, summed over samples:

* ``"mse"``: ``C = 1/2 sum_n sum_l (f[n, l] - y[n, l])**2`` (Stoudenmire & Schwab);
* ``"cross_entropy"``: ``C = -sum_n log softmax(f[n])[y_n]``.

Solvers (registry :data:`SOLVERS`):

* ``"gd"`` — the paper's gradient step ``B <- B + t * A.T r``.  With
  ``step_size="auto"`` the step is chosen from the curvature along the
  gradient, ``t = |g|^2 / (kappa * |A g|^2)``: the exact line-search minimum
  for the squared loss (``kappa = 1``) and a guaranteed decrease for
  cross-entropy (``kappa = 1/2`` bounds the softmax Hessian).  This makes the
  step independent of the scale of the network; ``|A g|^2`` is estimated on
  the first ``line_search_samples`` (shuffled) samples.  A float ``step_size``
  gives the paper's fixed step.
* ``"cg"`` — ``n_iter`` conjugate-gradient iterations on the local normal
  equations of the squared loss (CGLS), as in the paper's alternative.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LOSSES = ("mse", "cross_entropy")
SOLVERS = ("gd", "cg")


def softmax(f, xp):
    """Row-wise softmax of ``f`` (shape (n, L))."""
    z = f - f.max(axis=1, keepdims=True)
    e = xp.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def loss_value(f, y, loss, xp):
    """Summed loss of outputs ``f`` (n, L) against one-hot targets ``y`` (n, L), a 0-d array."""
    if loss == "mse":
        r = f - y
        return 0.5 * xp.sum(r.astype(np.float64) ** 2)
    z = f.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    logp = z - xp.log(xp.exp(z).sum(axis=1, keepdims=True))
    return -xp.sum(logp * y)


def residual_fn(loss, y, xp):
    """``residual(f_chunk, sl) -> -dC/df`` for a chunk of samples."""
    if loss == "mse":
        return lambda f, sl: y[sl] - f
    return lambda f, sl: y[sl] - softmax(f, xp)


@dataclass(frozen=True)
class SolverOptions:
    """Settings of the local update.

    Attributes
    ----------
    solver : {"gd", "cg"}
    loss : {"mse", "cross_entropy"}
    n_iter : int
        Gradient steps ("gd") or CG iterations ("cg") per bond.
    step_size : "auto" or float
    line_search_samples : int or None
        Samples used to estimate the curvature for ``step_size="auto"``.
    """

    solver: str = "gd"
    loss: str = "mse"
    n_iter: int = 1
    step_size: object = "auto"
    line_search_samples: int | None = 8192


def gradient_descent(problem, Bs, y, opts):
    """``opts.n_iter`` gradient steps on the working block.

    Returns
    -------
    Bs : array, shape (Dl * d * d, L * Dr)
    f_before : array, shape (n, L)
        Outputs before the update (for the running loss).
    """
    xp = problem.backend.xp
    residual = residual_fn(opts.loss, y, xp)
    kappa = 1.0 if opts.loss == "mse" else 0.5
    f_before = None
    for _ in range(opts.n_iter):
        f, g = problem.forward_and_gradient(Bs, residual)
        if f_before is None:
            f_before = f
        if opts.step_size == "auto":
            rows = opts.line_search_samples
            Ag = problem.forward(g, rows=rows)
            n_used = Ag.shape[0]
            curvature = kappa * xp.sum(Ag * Ag) * (problem.n_samples / n_used)
            gg = xp.sum(g * g)
            step = xp.where(curvature > 0, gg / xp.where(curvature > 0, curvature, 1), 0)
        else:
            step = opts.step_size
        Bs = Bs + step * g
    return Bs, f_before


def conjugate_gradient(problem, Bs, y, opts):
    """CGLS on the local squared loss: ``opts.n_iter`` iterations from ``Bs``.

    Returns
    -------
    Bs : array, shape (Dl * d * d, L * Dr)
    f_before : array, shape (n, L)
    """
    if opts.loss != "mse":
        raise ValueError("solver='cg' minimises the squared loss; use loss='mse' or solver='gd'")
    xp = problem.backend.xp
    f, s = problem.forward_and_gradient(Bs, residual_fn("mse", y, xp))
    f_before = f
    r = y - f
    p = s
    ss = xp.sum(s * s)
    for it in range(opts.n_iter):
        q = problem.forward(p)
        qq = xp.sum(q * q)
        alpha = xp.where(qq > 0, ss / xp.where(qq > 0, qq, 1), 0)
        Bs = Bs + alpha * p
        if it == opts.n_iter - 1:
            break
        r = r - alpha * q
        s = problem.gradient(r)
        ss_new = xp.sum(s * s)
        beta = xp.where(ss > 0, ss_new / xp.where(ss > 0, ss, 1), 0)
        p = s + beta * p
        ss = ss_new
    return Bs, f_before


_SOLVER_FUNCS = {"gd": gradient_descent, "cg": conjugate_gradient}


def solve_local(problem, Bs, y, opts):
    """Dispatch to the solver named in ``opts.solver`` (see :data:`SOLVERS`)."""
    return _SOLVER_FUNCS[opts.solver](problem, Bs, y, opts)
