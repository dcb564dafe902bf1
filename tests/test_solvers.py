"""Local solvers and the Kronecker-factored preconditioner."""

import numpy as np
import pytest

from tnlearn.backend import get_backend
from tnlearn.gram import damped_inverse
from tnlearn.local_problem import LocalProblem
from tnlearn.solvers import KroneckerPreconditioner, SolverOptions, loss_value, solve_local

NP = get_backend("numpy")


def _problem(rng, n=40, Dl=3, d=2, L=3, Dr=2, chunk_size=7):
    left, right = rng.standard_normal((n, Dl)), rng.standard_normal((n, Dr))
    phi_a, phi_b = rng.random((n, d)), rng.random((n, d))
    zeros = np.zeros(n)
    return LocalProblem(left, zeros, phi_a, phi_b, right, zeros, L, NP, chunk_size, normalize_samples=True)


def _design(prob):
    """Dense design matrix of the block's outputs, shape (n * L, Dl d d L Dr)."""
    n, L = prob.n_samples, prob.n_labels
    cols = []
    for k in range(np.prod(prob.shape)):
        e = np.zeros(prob.shape)
        e.flat[k] = 1.0
        cols.append(prob.forward(e).reshape(n * L))
    return np.stack(cols, axis=1)


def test_preconditioner_is_the_inverse_of_the_kronecker_factored_gram(rng):
    prob = _problem(rng)
    gl, gr = prob.grams()
    damping = 1e-2
    apply = KroneckerPreconditioner((gl, gr), prob, damping)
    g = rng.standard_normal(prob.shape)
    Dl, d, L, Dr = prob.Dl, prob.d, prob.n_labels, prob.Dr
    # explicit: rows (a, s), columns (t, l, b); the right factor acts on (t, b)
    W = np.einsum("xy,ytlb->xtlb", damped_inverse(gl, damping), g.reshape(Dl * d, d, L, Dr))
    W = np.einsum("xtlb,tbuc->xulc", W, damped_inverse(gr, damping).reshape(d, Dr, d, Dr))
    np.testing.assert_allclose(apply(g), W.reshape(prob.shape), rtol=1e-10)
    # and damped_inverse really inverts the damped matrix
    shift = damping * np.trace(gl) / len(gl)
    np.testing.assert_allclose(damped_inverse(gl, damping) @ (gl + shift * np.eye(len(gl))), np.eye(len(gl)), atol=1e-8)


def test_preconditioned_cg_reaches_the_least_squares_block(rng):
    """With as many iterations as unknowns, PCGLS solves the local normal equations exactly."""
    prob = _problem(rng, n=60, Dl=2, d=2, L=2, Dr=2)
    y = np.eye(2)[rng.integers(0, 2, prob.n_samples)]
    A = _design(prob)
    exact = np.linalg.lstsq(A, y.reshape(-1), rcond=None)[0].reshape(prob.shape)
    opts = SolverOptions("cg", "mse", n_iter=int(np.prod(prob.shape)), precondition=True, damping=1e-3)
    Bs, _, _ = solve_local(prob, np.zeros(prob.shape), y, opts)
    np.testing.assert_allclose(prob.forward(Bs), prob.forward(exact), atol=1e-6)


@pytest.mark.parametrize("solver,loss", [("gd", "mse"), ("gd", "cross_entropy"), ("cg", "mse")])
def test_preconditioned_steps_lower_the_local_loss_more_than_plain_ones(rng, solver, loss):
    """On ill-conditioned environments one preconditioned step beats one plain step."""
    n, Dl, Dr = 200, 4, 4
    scales = np.array([1.0, 0.3, 0.05, 0.01])  # strongly anisotropic environments
    left, right = rng.standard_normal((n, Dl)) * scales, rng.standard_normal((n, Dr)) * scales
    phi_a, phi_b = rng.random((n, 2)), rng.random((n, 2))
    zeros = np.zeros(n)
    prob = LocalProblem(left, zeros, phi_a, phi_b, right, zeros, 3, NP, 64, normalize_samples=True)
    y = np.eye(3)[rng.integers(0, 3, n)]
    B0 = rng.standard_normal(prob.shape) * 0.1
    before = float(loss_value(prob.forward(B0), y, loss, np))
    after = {}
    for pre in (False, True):
        opts = SolverOptions(solver, loss, n_iter=2, line_search_samples=None, precondition=pre)
        Bs, _, _ = solve_local(prob, B0, y, opts)
        after[pre] = float(loss_value(prob.forward(Bs), y, loss, np))
    assert after[False] < before and after[True] < before
    assert after[True] < after[False]


@pytest.mark.parametrize("normalize", [True, False])
def test_grams_from_the_fused_pass_equal_the_separate_pass(rng, normalize):
    n, Dl, Dr = 37, 3, 4
    left, right = rng.standard_normal((n, Dl)), rng.standard_normal((n, Dr))
    logs = rng.standard_normal(n)
    prob = LocalProblem(left, logs, rng.random((n, 2)), rng.random((n, 2)), right, -logs / 3, 3, NP, 8, normalize)
    w = rng.standard_normal((n, 3))
    f, g, (gl, gr) = prob.forward_and_gradient(rng.standard_normal(prob.shape), lambda fc, sl: w[sl], with_grams=True)
    gl2, gr2 = prob.grams()
    np.testing.assert_allclose(gl, gl2, rtol=1e-12)
    np.testing.assert_allclose(gr, gr2, rtol=1e-12)
    # and against the definition
    x = np.einsum("na,ns->nas", left, prob.phi_a).reshape(n, -1)
    np.testing.assert_allclose(gl, np.einsum("ni,n,nj->ij", x, prob.scale, x), rtol=1e-10)
    np.testing.assert_allclose(g, prob.gradient(w), rtol=1e-12)


def test_solvers_return_grams_only_when_needed(rng):
    prob = _problem(rng)
    y = np.eye(3)[rng.integers(0, 3, prob.n_samples)]
    B0 = rng.standard_normal(prob.shape)
    for solver in ("gd", "cg"):
        assert solve_local(prob, B0, y, SolverOptions(solver, precondition=False))[2] is None
        gl, gr = solve_local(prob, B0, y, SolverOptions(solver, precondition=False), want_grams=True)[2]
        np.testing.assert_allclose(gl, prob.grams()[0], rtol=1e-12)


def test_grams_of_the_first_rows(rng):
    """gram_rows / rows restrict the Gram estimate to a prefix of the samples, across chunk edges."""
    n, Dl, Dr = 50, 3, 2
    left, right = rng.standard_normal((n, Dl)), rng.standard_normal((n, Dr))
    zeros = np.zeros(n)
    full = LocalProblem(left, zeros, rng.random((n, 2)), rng.random((n, 2)), right, zeros, 3, NP, 8, True)
    head = LocalProblem(left[:21], zeros[:21], full.phi_a[:21], full.phi_b[:21], right[:21], zeros[:21], 3, NP, 8, True)
    w = rng.standard_normal((n, 3))
    _, _, (gl, gr) = full.forward_and_gradient(np.ones(full.shape), lambda fc, sl: w[sl], True, gram_rows=21)
    np.testing.assert_allclose(gl, head.grams()[0], rtol=1e-12)
    np.testing.assert_allclose(gr, head.grams()[1], rtol=1e-12)
    np.testing.assert_allclose(full.grams(rows=21)[0], gl, rtol=1e-12)


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize("normalize", [True, False])
def test_fused_target_residual_pass_equals_the_generic_callable_pass(rng, loss, normalize):
    """The compiled fast path (TargetResidual) against the plain per-chunk reference."""
    from tnlearn.local_problem import TargetResidual
    from tnlearn.solvers import softmax

    n, Dl, Dr, L = 45, 3, 4, 5
    left, right = rng.standard_normal((n, Dl)), rng.standard_normal((n, Dr))
    logs = rng.standard_normal(n)
    prob = LocalProblem(left, logs, rng.random((n, 2)), rng.random((n, 2)), right, -logs / 3, L, NP, 8, normalize)
    y = np.eye(L)[rng.integers(0, L, n)]
    Bs = rng.standard_normal(prob.shape)
    if loss == "mse":
        generic = lambda fc, sl: y[sl] - fc  # noqa: E731
    else:
        generic = lambda fc, sl: y[sl] - softmax(fc, np)  # noqa: E731
    f_ref, g_ref, grams_ref = prob.forward_and_gradient(Bs, generic, with_grams=True)
    f, g, grams = prob.forward_and_gradient(Bs, TargetResidual(loss, y), with_grams=True)
    np.testing.assert_allclose(f, f_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(g, g_ref, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(grams[0], grams_ref[0], rtol=1e-12)
    np.testing.assert_allclose(f, prob.forward(Bs), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("solver,loss", [("gd", "mse"), ("gd", "cross_entropy"), ("cg", "mse")])
@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_a_float32_block_stays_float32_through_every_step(rng, solver, loss, alpha):
    """The penalty's float64 weight must not promote the block: later passes would run in float64 (2x slower)."""
    f32 = np.float32
    n, Dl, d, L, Dr = 50, 3, 2, 3, 2
    left, right = rng.standard_normal((n, Dl)).astype(f32), rng.standard_normal((n, Dr)).astype(f32)
    phi_a, phi_b = rng.random((n, d)).astype(f32), rng.random((n, d)).astype(f32)
    zeros = np.zeros(n)
    prob = LocalProblem(left, zeros, phi_a, phi_b, right, zeros, L, NP, 16, normalize_samples=True)
    seen = []
    for name in ("forward", "forward_and_gradient", "gradient"):
        original = getattr(prob, name)

        def recording(block, *a, _original=original, **k):
            seen.append(block.dtype)
            return _original(block, *a, **k)

        setattr(prob, name, recording)
    y = np.eye(L, dtype=f32)[rng.integers(0, L, n)]
    B0 = (0.1 * rng.standard_normal(prob.shape)).astype(f32)
    opts = SolverOptions(solver, loss, n_iter=3, precondition=True, alpha=alpha)
    Bs, _, _ = solve_local(prob, B0, y, opts)
    assert Bs.dtype == f32
    assert len(seen) >= 3 and set(seen) == {np.dtype(f32)}, seen
