"""Adam, the stochastic local solver of blocks that sit below a non-linearity.

A block of a multilinear stack has a local quadratic (MSE) or convex (CE) problem
that :mod:`tnlearn.solvers` solves from cached environments.  A block below a
non-linearity (the TT layer of a TT-net) does not: its local problem is solved
by a few passes of minibatch Adam (Kingma & Ba 2015) over the samples, with the
rest of the network fixed except the small dense parameters above it.
"""

from __future__ import annotations

import numpy as np

#: Adam steps per bond, at least, with ``epochs_per_bond="auto"``.
MIN_STEPS_PER_BOND = 100


def steps_per_bond(epochs_per_bond, n_samples, batch_size):
    """Adam steps at every bond: ``epochs_per_bond`` passes over the samples.

    ``"auto"``: half an epoch, but at least ``MIN_STEPS_PER_BOND`` steps (1,347
    digits make 11 minibatches an epoch: half an epoch alone leaves a block undertrained).
    """
    if epochs_per_bond == "auto":
        return max(MIN_STEPS_PER_BOND, int(round(0.5 * n_samples / batch_size)))
    return max(1, int(round(epochs_per_bond * n_samples / batch_size)))


class Adam:
    """Adam updates of a fixed set of named arrays.

    Parameters
    ----------
    learning_rate : float
    beta1, beta2, eps : float
    xp : module
        numpy or cupy.
    """

    def __init__(self, learning_rate=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, xp=np):
        if not learning_rate > 0:
            raise ValueError(f"learning_rate={learning_rate!r}: must be > 0, e.g. 1e-3")
        self.learning_rate = float(learning_rate)
        self.beta1, self.beta2, self.eps = beta1, beta2, eps
        self.xp = xp
        self._m, self._v, self._t = {}, {}, {}

    def reset(self, name):
        """Forget the moments of one parameter (its shape is about to change)."""
        for store in (self._m, self._v, self._t):
            store.pop(name, None)

    def step(self, name, param, grad):
        """Return ``param`` after one Adam step along ``-grad``.

        Parameters
        ----------
        name : str
            Key of the parameter's moments.
        param, grad : array
            Same shape.

        Returns
        -------
        array
        """
        xp = self.xp
        if name not in self._m or self._m[name].shape != param.shape:
            self._m[name] = xp.zeros_like(param)
            self._v[name] = xp.zeros_like(param)
            self._t[name] = 0
        self._t[name] += 1
        t = self._t[name]
        m = self._m[name]
        v = self._v[name]
        m *= self.beta1
        m += (1 - self.beta1) * grad
        v *= self.beta2
        v += (1 - self.beta2) * (grad * grad)
        lr = self.learning_rate * np.sqrt(1 - self.beta2**t) / (1 - self.beta1**t)
        return param - (lr * m / (xp.sqrt(v) + self.eps)).astype(param.dtype)


def minibatch_adam(adam, params, gradients, draw_order, steps, batch_size, average_from=None):
    """``steps`` minibatch Adam steps on named arrays: the local solver of a block below a non-linearity.

    Parameters
    ----------
    adam : Adam
        Its moments of ``params``' names are used and updated (reset the
        ones that must start afresh before the call).
    params : dict of str -> array
        The arrays moved (e.g. the merged block and the dense layers above it), in update order.
    gradients : callable
        ``gradients(idx, params) -> dict`` of the loss's gradients with respect to
        every entry of ``params`` on the minibatch ``idx`` (global sample indices).
    draw_order : callable
        ``draw_order() -> permutation`` of all samples; called at the start and
        whenever an epoch is used up (the last minibatch of an epoch may be short).
    steps, batch_size : int
    average_from : int, optional
        From this step on (0-based) also keep the running average of the iterates
        (Polyak-Ruppert averaging: less minibatch noise than the last iterate).

    Returns
    -------
    last : dict
        ``params`` after the last step.
    mean : dict or None
        Average of the iterates of steps ``average_from ..`` (None without ``average_from``).
    """
    params = dict(params)
    mean, count = None, 0
    order = draw_order()
    pos = 0
    for step in range(steps):
        if pos >= len(order):
            order, pos = draw_order(), 0
        idx = order[pos : pos + batch_size]
        pos += len(idx)
        grads = gradients(idx, params)
        params = {name: adam.step(name, value, grads[name]) for name, value in params.items()}
        if average_from is not None and step >= average_from:
            count += 1
            mean = dict(params) if mean is None else {k: v + (params[k] - v) / count for k, v in mean.items()}
    return params, mean
