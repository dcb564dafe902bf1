"""The sweep engine against plain dense / quimb contractions."""

import numpy as np
import pytest

from conftest import random_head
from tnlearn.backend import get_backend
from tnlearn.embeddings import embed
from tnlearn.environments import EnvironmentCache
from tnlearn.local_problem import LocalProblem
from tnlearn.networks import head_to_quimb, product_state
from tnlearn.solvers import SolverOptions, loss_value
from tnlearn.sweeps import SweepOptions, build_environments, center_outputs, full_sweep, half_sweep
from tnlearn.truncation import Truncation

NP = get_backend("numpy")


def _phi_sites(rng, n, n_sites, dtype=np.float64):
    Phi = embed(rng.random((n, n_sites)), "trig", dtype)
    return np.ascontiguousarray(Phi.transpose(1, 0, 2)), Phi


def _quimb_outputs(head, Phi):
    mps = head_to_quimb(head)
    return np.array([((mps & product_state(row)) ^ all).transpose("label").data for row in Phi])


@pytest.mark.parametrize("center", [0, 2, 5])
def test_decision_function_equals_quimb_contraction(rng, center):
    head = random_head(rng, n_sites=6, center=center)
    phi_sites, Phi = _phi_sites(rng, 7, 6)
    np.testing.assert_allclose(head.decision_function(phi_sites), _quimb_outputs(head, Phi), rtol=1e-10)


@pytest.mark.parametrize("j", [0, 2, 4])
def test_cached_environment_forward_equals_full_contraction(rng, j):
    """The local problem built from cached environments reproduces the whole network's outputs."""
    n_sites = 6
    head = random_head(rng, n_sites=n_sites, center=0)
    phi_sites, Phi = _phi_sites(rng, 9, n_sites)
    envs = build_environments(head, phi_sites, SweepOptions(max_bond=64))
    # move the centre to j with exact (untruncated) splits, updating left environments
    for i in range(j):
        head.split(i, head.merge(i), "right", Truncation())
        envs.advance_left(i, phi_sites[i], head.cores[i])
    left, left_log = envs.get(j)
    right, right_log = envs.get(j + 2)
    problem = LocalProblem(left, left_log, phi_sites[j], phi_sites[j + 1], right, right_log, head.n_labels, NP, 4)
    f = problem.forward(problem.to_scaled(head.merge(j), head.log_norm))
    np.testing.assert_allclose(f, _quimb_outputs(head, Phi), rtol=1e-9)


def test_gradient_is_the_transpose_of_the_forward_map(rng):
    """<A x, w> == <x, A^T w> for random blocks and weights (and chunking is exact)."""
    n, Dl, Dr, d, L = 23, 3, 4, 2, 5
    left, right = rng.standard_normal((n, Dl)), rng.standard_normal((n, Dr))
    phi_a, phi_b = rng.standard_normal((n, d)), rng.standard_normal((n, d))
    logs = rng.standard_normal(n)
    prob = LocalProblem(left, logs, phi_a, phi_b, right, -logs / 2, L, NP, chunk_size=5)
    x = rng.standard_normal(prob.shape)
    w = rng.standard_normal((n, L))
    assert np.sum(prob.forward(x) * w) == pytest.approx(np.sum(x * prob.gradient(w)), rel=1e-10)
    # against an explicit dense design matrix
    scale = np.exp(logs - logs / 2 - np.max(logs - logs / 2))
    rows = np.einsum("na,ns,nt,nb,n->nastb", left, phi_a, phi_b, right, scale).reshape(n, Dl * d * d, Dr)
    dense = np.einsum("nib,ilb->nl", rows, x.reshape(Dl * d * d, L, Dr))
    np.testing.assert_allclose(prob.forward(x), dense, rtol=1e-10)
    f, g = prob.forward_and_gradient(x, lambda fc, sl: w[sl])
    np.testing.assert_allclose(f, dense, rtol=1e-10)
    np.testing.assert_allclose(g, prob.gradient(w), rtol=1e-10)


def test_environments_do_not_underflow_on_long_float32_chains(rng):
    """784 sites in float32: raw environments would be ~2**-392; normalised ones stay O(1)."""
    n_sites, n = 784, 16
    phi_sites, _ = _phi_sites(rng, n, n_sites, np.float32)
    cores = [np.array([1.0, 0.0], np.float32).reshape(1, 2, 1) for _ in range(n_sites)]
    envs = EnvironmentCache(n_sites, n, 1, np.float32, NP)
    for i in range(n_sites - 1, 1, -1):
        envs.advance_right(i, phi_sites[i], cores[i])
    values, logs = envs.get(2)
    assert np.all(np.isfinite(values)) and np.allclose(np.abs(values), 1.0)
    expected = np.sum(np.log(phi_sites[2:, :, 0].astype(np.float64)), axis=0)  # prod of cos(pi x / 2)
    np.testing.assert_allclose(logs, expected, rtol=1e-4)
    assert np.all(logs < -100)  # far below float32's smallest normal number (~1e-38)


def _sweep_setup(rng, loss="mse", solver="gd", n_iter=1, max_bond=4, dtype=np.float64):
    n, n_sites, L = 60, 8, 3
    head = random_head(rng, n_sites=n_sites, n_labels=L, bond=2, dtype=dtype)
    phi_sites, Phi = _phi_sites(rng, n, n_sites, dtype)
    y = np.zeros((n, L), dtype)
    y[np.arange(n), (Phi[:, :3, 1].sum(1) * 2).astype(int) % L] = 1
    opts = SweepOptions(max_bond=max_bond, cutoff=1e-12, solver=SolverOptions(solver, loss, n_iter))
    return head, phi_sites, y, opts


@pytest.mark.parametrize("loss,solver,n_iter", [("mse", "gd", 1), ("mse", "cg", 3), ("cross_entropy", "gd", 2)])
def test_a_sweep_lowers_the_training_loss(rng, loss, solver, n_iter):
    head, phi_sites, y, opts = _sweep_setup(rng, loss, solver, n_iter, max_bond=8)
    envs = build_environments(head, phi_sites, opts)
    norm = opts.normalize_samples
    before = float(loss_value(center_outputs(head, envs, phi_sites, normalized=norm), y, loss, np))
    full_sweep(head, envs, phi_sites, y, opts)
    after = float(loss_value(center_outputs(head, envs, phi_sites, normalized=norm), y, loss, np))
    assert after < 0.9 * before


def test_label_moves_with_the_sweep_and_bonds_respect_max_bond(rng):
    head, phi_sites, y, opts = _sweep_setup(rng, max_bond=3)
    envs = build_environments(head, phi_sites, opts)
    seen = []
    infos = half_sweep(head, envs, phi_sites, y, "right", opts, on_bond=seen.append)
    assert head.center == head.n_sites - 1
    assert [i.bond for i in infos] == list(range(head.n_sites - 1)) and seen == infos
    assert max(head.bond_dims) <= 3
    infos = half_sweep(head, envs, phi_sites, y, "left", opts)
    assert head.center == 0 and [i.bond for i in infos] == list(range(head.n_sites - 2, -1, -1))
    assert max(head.bond_dims) <= 3 and all(0 <= i.discarded_weight < 1 for i in infos)
    # mixed canonical form: every site right of the label is right-canonical
    for core in head.cores[1:]:
        np.testing.assert_allclose(np.einsum("asb,csb->ac", core, core), np.eye(core.shape[0]), atol=1e-10)


def test_center_outputs_match_decision_function_after_sweeps(rng):
    head, phi_sites, y, opts = _sweep_setup(rng)
    envs = build_environments(head, phi_sites, opts)
    full_sweep(head, envs, phi_sites, y, opts)
    np.testing.assert_allclose(center_outputs(head, envs, phi_sites), head.decision_function(phi_sites), rtol=1e-9)


def test_split_truncation_error_is_the_discarded_weight(rng):
    head = random_head(rng, n_sites=4, bond=6, center=1)
    block = head.merge(1)
    Dl, d, _, L, Dr = block.shape
    s = np.linalg.svd(block.reshape(Dl * d, -1), compute_uv=False)
    info = head.split(1, block, "right", Truncation(max_bond=2))
    assert info.kept == 2 and head.center == 2
    assert info.discarded_weight == pytest.approx((s[2:] ** 2).sum() / (s**2).sum(), rel=1e-10)


def test_each_gram_matrix_is_decomposed_once_for_preconditioner_and_split(rng, monkeypatch):
    """One ``eigh`` per Gram matrix, shared by the preconditioner and the data-metric split."""
    from dataclasses import replace

    from tnlearn import gram

    head, phi_sites, y, opts = _sweep_setup(rng, max_bond=5)
    opts = replace(opts, solver=replace(opts.solver, precondition=True))
    envs = build_environments(head, phi_sites, opts)
    decomposed, made = [], []
    real_eigh, real_init = gram.symmetric_eigh, gram.GramMatrix.__init__

    def init(self, matrix):
        made.append(self)
        real_init(self, matrix)

    monkeypatch.setattr(gram, "symmetric_eigh", lambda G: decomposed.append(id(G)) or real_eigh(G))
    monkeypatch.setattr(gram.GramMatrix, "__init__", init)
    infos = full_sweep(head, envs, phi_sites, y, opts) + full_sweep(head, envs, phi_sites, y, opts)
    assert len(decomposed) == len(made) == len(set(decomposed))  # every Gram once, none twice
    assert len(made) < 2 * len(infos)  # and reused ones are not decomposed again
    for g in made:  # the cached factors are the pure functions' results
        np.testing.assert_array_equal(g.damped_inverse(opts.solver.damping), gram.damped_inverse(g.matrix, opts.solver.damping))
        for a, b in zip(g.sqrt_and_inv_sqrt(), gram.psd_sqrt(g.matrix)):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("gram_samples", [None, 37])
def test_reused_gram_matrices_leave_sweeps_bit_identical(rng, monkeypatch, gram_samples):
    """Grams kept while their environment slot is unchanged equal fresh ones, and are reused."""
    import copy
    from dataclasses import replace

    head, phi_sites, y, opts = _sweep_setup(rng, max_bond=5)
    opts = replace(opts, solver=replace(opts.solver, precondition=True, gram_samples=gram_samples))
    fresh_head = copy.deepcopy(head)

    envs = build_environments(head, phi_sites, opts)
    hits = []
    kept = EnvironmentCache.cached_grams

    def counting(self, j, key):
        out = kept(self, j, key)
        hits.extend(g is not None for g in out)
        for g, slot_env, phi in ((out[0], self.get(j)[0], phi_sites[j]), (out[1], self.get(j + 2)[0], phi_sites[j + 1])):
            if g is not None:  # a kept Gram is the Gram of what the slot holds now
                rows = slice(None) if gram_samples is None else slice(0, gram_samples)
                x = np.einsum("na,ns->nas", slot_env[rows], phi[rows]).reshape(len(slot_env[rows]), -1)
                if g is out[1]:
                    x = np.einsum("ns,na->nsa", phi[rows], slot_env[rows]).reshape(len(slot_env[rows]), -1)
                np.testing.assert_allclose(g, x.T @ x, rtol=1e-10)
        return out

    monkeypatch.setattr(EnvironmentCache, "cached_grams", counting)
    infos = full_sweep(head, envs, phi_sites, y, opts) + full_sweep(head, envs, phi_sites, y, opts)
    # after the first half-sweep (which starts from freshly built environments) every
    # visit reuses at least one of its two halves
    assert sum(hits) >= len(infos) - (head.n_sites - 1)

    monkeypatch.setattr(EnvironmentCache, "cached_grams", lambda self, j, key: (None, None))
    fresh_envs = build_environments(fresh_head, phi_sites, opts)
    fresh_infos = full_sweep(fresh_head, fresh_envs, phi_sites, y, opts) + full_sweep(fresh_head, fresh_envs, phi_sites, y, opts)
    assert infos == fresh_infos
    for a, b in zip(head.cores, fresh_head.cores):
        np.testing.assert_array_equal(a, b)
