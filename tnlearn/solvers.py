"""Local updates of a merged two-site block.

Every solver takes a :class:`~tnlearn.local_problem.LocalProblem` (the block's
outputs as a linear map), the current working block and the one-hot targets,
and returns the updated block.  Losses, summed over samples:

* ``"mse"``: ``C = 1/2 sum_n sum_l (f[n, l] - y[n, l])**2`` (Stoudenmire & Schwab);
* ``"cross_entropy"``: ``C = -sum_n log softmax(f[n])[y_n]``;

plus, with ``alpha > 0``, the L2 penalty ``alpha / 2 * |W|^2`` on the network
(scikit-learn's ``alpha``: the penalty on the summed loss), which in the working
block's units is ``alpha / 2 * problem.penalty_weight * |Bs|^2``: every solver
minimises the penalised objective (:func:`local_objective`).

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

Preconditioning (``precondition=True``): the local Hessian of the squared loss
is ``H = sum_n (x_n x_n^T) (x) (y_n y_n^T)`` with ``x_n`` and ``y_n`` the left
(``L_n (x) phi_j``) and right (``phi_{j+1} (x) R_n``) halves of sample ``n``'s
projected input.  Its Kronecker-factored approximation ``Gl (x) Gr``, built
from the two data Gram matrices (which the data-metric split needs anyway),
is inverted factor by factor, a ``(Dl d)^3 + (d Dr)^3`` job, and every search
direction is ``M^-1 g`` instead of ``g`` (the K-FAC idea applied to a DMRG
block).  Gradient descent then takes near-Newton steps and CG converges in a
few iterations, at the same per-iteration cost over the samples.

In a data-parallel run every sum over samples goes through
``problem.reduce_sum`` (the gradient and Grams inside the problem, the
curvature ``|A p|^2`` here); sums of products of blocks (``g . p``) are
already global and need none.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tnlearn.backend import loss_value  # noqa: F401  (re-exported: the solvers' loss)
from tnlearn.gram import as_gram
from tnlearn.local_problem import TargetResidual

LOSSES = ("mse", "cross_entropy")
SOLVERS = ("gd", "cg")


def softmax(f, xp):
    """Row-wise softmax of ``f`` (shape (n, L))."""
    z = f - f.max(axis=1, keepdims=True)
    e = xp.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def local_objective(problem, f, Bs, y, opts):
    """The training objective of a block: summed loss of its outputs plus the L2 penalty (0-d, device).

    Parameters
    ----------
    problem : LocalProblem
    f : array, shape (n, L)
        The block's outputs on the samples held here.
    Bs : array, shape (Dl * d * d, L * Dr)
        The working block.
    y : array, shape (n, L)
    opts : SolverOptions

    Returns
    -------
    0-d array (float64)
        Summed over the samples of all ranks; the same value for the same
        network at every bond (sweeps compare it across bonds).
    """
    xp = problem.backend.xp
    value = problem.reduce_sum(problem.backend.loss_total(f, y, opts.loss))
    if opts.alpha:
        value = value + 0.5 * opts.alpha * problem.penalty_weight * xp.sum(Bs.astype(np.float64) ** 2)
    return value


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
    precondition : bool
        Use the Kronecker-factored data preconditioner (module docstring).
    gram_samples : int or None
        Samples used to estimate the data Gram matrices (preconditioner and
        data-metric split); None: all.
    damping : float
        Relative Tikhonov damping of each Gram factor before inversion:
        ``G + damping * mean(eig(G)) * I``.
    alpha : float
        L2 penalty ``alpha / 2 * |W|^2`` on the network (module docstring).
    """

    solver: str = "gd"
    loss: str = "mse"
    n_iter: int = 1
    step_size: object = "auto"
    line_search_samples: int | None = 4096
    precondition: bool = False
    damping: float = 0.3
    gram_samples: int | None = 16384
    alpha: float = 0.0


class KroneckerPreconditioner:
    """``g -> (Gl + lam I)^-1 g (Gr + mu I)^-1`` on a working block.

    Parameters
    ----------
    grams : tuple of ndarray or GramMatrix
        ``(Gl (Dl d, Dl d), Gr (d Dr, d Dr))`` from :meth:`LocalProblem.grams`;
        a :class:`~tnlearn.gram.GramMatrix` keeps its factor for a later visit.
    problem : LocalProblem
        Gives the block layout and the backend.
    damping : float
    """

    def __init__(self, grams, problem, damping):
        be = problem.backend
        self.Dl, self.d, self.L, self.Dr = problem.Dl, problem.d, problem.n_labels, problem.Dr
        self.shape = problem.shape
        self.left_inv = as_gram(grams[0]).damped_inverse_on(be, damping, problem.dtype)
        self.right_inv = as_gram(grams[1]).damped_inverse_on(be, damping, problem.dtype)
        self.xp = be.xp

    def __call__(self, g):
        """Apply to a block of shape ``(Dl * d * d, L * Dr)``; returns the same shape."""
        Dl, d, L, Dr = self.Dl, self.d, self.L, self.Dr
        w = self.left_inv @ g.reshape(Dl * d, d * L * Dr)  # rows (a, s), columns (t, l, b)
        w = w.reshape(Dl * d, d, L, Dr).transpose(0, 2, 1, 3).reshape(Dl * d * L, d * Dr)
        w = w @ self.right_inv
        w = w.reshape(Dl * d, L, d, Dr).transpose(0, 2, 1, 3)
        return self.xp.ascontiguousarray(w).reshape(self.shape)


def _identity(g):
    return g


def _first_pass(problem, Bs, residual, opts, want_grams):
    """Outputs, gradient, Grams (when wanted) and the preconditioner, in one pass over the samples."""
    need_grams = want_grams or opts.precondition
    if need_grams:
        f, g, grams = problem.forward_and_gradient(Bs, residual, with_grams=True, gram_rows=opts.gram_samples)
        grams = tuple(as_gram(G) for G in grams)  # one eigendecomposition each, for preconditioner and split
    else:
        (f, g), grams = problem.forward_and_gradient(Bs, residual), None
    precondition = KroneckerPreconditioner(grams, problem, opts.damping) if opts.precondition else _identity
    return f, g, grams, precondition


def gradient_descent(problem, Bs, y, opts, want_grams=False):
    """``opts.n_iter`` (preconditioned) gradient steps on the working block.

    Returns
    -------
    Bs : array, shape (Dl * d * d, L * Dr)
    f_before : array, shape (n, L)
        Outputs before the update (for the running loss).
    grams : tuple of GramMatrix or None
        The block's data Gram matrices (left, right), when wanted or preconditioning.
    """
    xp = problem.backend.xp
    residual = TargetResidual(opts.loss, y)
    kappa = 1.0 if opts.loss == "mse" else 0.5
    f_before = grams = None
    precondition = _identity
    for _ in range(opts.n_iter):
        if f_before is None:
            f, g, grams, precondition = _first_pass(problem, Bs, residual, opts, want_grams)
            f_before = f
        else:
            f, g = problem.forward_and_gradient(Bs, residual)
        if opts.alpha:
            g = g - (opts.alpha * problem.penalty_weight).astype(g.dtype) * Bs
        p = precondition(g)
        if opts.step_size == "auto":
            rows = opts.line_search_samples
            Ap = problem.forward(p, rows=rows)
            n_used = problem.global_rows(rows)  # Ap.shape[0] summed over the ranks
            curvature = kappa * problem.reduce_sum(xp.sum(Ap * Ap)) * (problem.n_total / n_used)
            if opts.alpha:
                curvature = curvature + opts.alpha * problem.penalty_weight * xp.sum(p * p)
            gp = xp.sum(g * p)
            step = xp.where(curvature > 0, gp / xp.where(curvature > 0, curvature, 1), 0)
            # the penalty's weight is float64: keep the block in its own dtype (a float32 block
            # promoted to float64 here would make the next steps' passes over the samples float64)
            step = step.astype(Bs.dtype)
        else:
            step = opts.step_size
        Bs = Bs + step * p
    return Bs, f_before, grams


def conjugate_gradient(problem, Bs, y, opts, want_grams=False):
    """(Preconditioned) CGLS on the local squared loss: ``opts.n_iter`` iterations from ``Bs``.

    Returns
    -------
    Bs : array, shape (Dl * d * d, L * Dr)
    f_before : array, shape (n, L)
    grams : tuple of GramMatrix or None
    """
    if opts.loss != "mse":
        raise ValueError("solver='cg' minimises the squared loss; use loss='mse' or solver='gd'")
    xp = problem.backend.xp
    f, s, grams, precondition = _first_pass(problem, Bs, TargetResidual("mse", y), opts, want_grams)
    f_before = f
    lam = (opts.alpha * problem.penalty_weight).astype(Bs.dtype) if opts.alpha else None
    if lam is not None:  # normal equations of the penalised loss: (A^T A + lam I) B = A^T y
        s = s - lam * Bs
    r = y - f
    z = precondition(s)
    p = z
    ss = xp.sum(s * z)
    for it in range(opts.n_iter):
        q = problem.forward(p)
        qq = problem.reduce_sum(xp.sum(q * q))
        if lam is not None:
            qq = qq + lam * xp.sum(p * p)
        alpha = xp.where(qq > 0, ss / xp.where(qq > 0, qq, 1), 0)
        Bs = Bs + alpha * p
        if it == opts.n_iter - 1:
            break
        r = r - alpha * q
        s = problem.gradient(r)
        if lam is not None:
            s = s - lam * Bs
        z = precondition(s)
        ss_new = xp.sum(s * z)
        beta = xp.where(ss > 0, ss_new / xp.where(ss > 0, ss, 1), 0)
        p = z + beta * p
        ss = ss_new
    return Bs, f_before, grams


_SOLVER_FUNCS = {"gd": gradient_descent, "cg": conjugate_gradient}


def solve_local(problem, Bs, y, opts, want_grams=False):
    """Dispatch to the solver named in ``opts.solver`` (see :data:`SOLVERS`).

    Parameters
    ----------
    problem : LocalProblem
    Bs : array, shape (Dl * d * d, L * Dr)
    y : array, shape (n, L)
    opts : SolverOptions
    want_grams : bool
        Also return the block's data Gram matrices (:meth:`LocalProblem.grams`),
        accumulated in the solver's first pass over the samples.

    Returns
    -------
    Bs : array, shape (Dl * d * d, L * Dr)
        The updated working block.
    f_before : array, shape (n, L)
        Outputs of the block before the update.
    grams : tuple of GramMatrix or None
        ``(left, right)``, present when ``want_grams`` or ``opts.precondition``;
        each carries its eigendecomposition for the split.
    """
    return _SOLVER_FUNCS[opts.solver](problem, Bs, y, opts, want_grams)
