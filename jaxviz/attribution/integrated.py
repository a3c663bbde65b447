"""Integrated gradients with Gauss-Legendre or Riemann quadrature.

    IG_i(x) = (x_i - b_i) * integral_0^1 d f(b + a (x - b)) / d x_i  da

Every (image, step) pair is one evaluation; evaluations run in chunks of
``batch_size`` images per forward/backward pass and are summed as they come
(memory O(batch_size + N)), so the result does not depend on ``batch_size``.
Called eagerly, one compiled chunk function runs in a host loop; under an
outer ``jit``/``vmap`` the chunks are traced (unrolled up to 8, else a
``lax.scan``; see :mod:`jaxviz.execution`). XLA:CPU runs JAX's own
convolution transpose inside a loop several times slower; jaxviz VGGs are
differentiated with ``conv_grad="auto"`` (see :func:`._common.forward`), which
keeps full speed in the scan.

Reference: M. Sundararajan, A. Taly, Q. Yan, "Axiomatic Attribution for Deep
Networks", ICML 2017.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import _checks, execution
from ..errors import InputError
from . import _common
from .saliency import gradients

__all__ = ["integrated_gradients", "quadrature", "RULES"]

RULES = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")


def quadrature(method: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes ``alphas`` in [0, 1] and weights of an integration rule over [0, 1].

    Args:
      method: one of :data:`RULES`.
      steps: number of nodes (>= 2 for the Riemann rules).

    Returns:
      ``(alphas, weights)``, two float64 arrays of length ``steps``.

    The nodes and weights are Captum's, except ``riemann_trapezoid``: Captum
    uses weights 1/n (halved at both ends), which sum to (n-1)/n; here they are
    the trapezoid rule's 1/(n-1) (halved at the ends), which integrate a
    constant exactly. Multiply by (n-1)/n to get Captum's numbers.
    """
    _checks.one_of(method, "method", RULES)
    steps = _checks.positive_int(steps, "steps")
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return 0.5 * (1.0 + nodes), 0.5 * weights
    if steps < 2:
        raise InputError(f"steps: expected >= 2 for {method}, got {steps}")
    n = steps
    if method == "riemann_trapezoid":
        w = np.full(n, 1.0 / (n - 1))
        w[0] /= 2
        w[-1] /= 2
        return np.linspace(0.0, 1.0, n), w
    w = np.full(n, 1.0 / n)
    if method == "riemann_left":
        return np.linspace(0.0, 1.0 - 1.0 / n, n), w
    if method == "riemann_right":
        return np.linspace(1.0 / n, 1.0, n), w
    return np.linspace(1.0 / (2 * n), 1.0 - 1.0 / (2 * n), n), w  # middle


def _weighted_gradients(net, params, images, baselines, target_idx, alphas, weights, k, target_fn):
    """Weighted gradients of items k (item = step * N + image): (len(k), H, W, 3)."""
    n = images.shape[0]
    i, s = k % n, k // n
    x = baselines[i] + alphas[s][:, None, None, None] * (images[i] - baselines[i])
    g = gradients(net, params, x, target_fn, _common.gather_target(target_idx, i))
    return weights[s][:, None, None, None] * g


def _contributions(net, params, images, baselines, target_idx, alphas, weights, k, target_fn):
    """Weighted gradients of items k, summed per image: (N, H, W, 3)."""
    n = images.shape[0]
    g = _weighted_gradients(net, params, images, baselines, target_idx, alphas, weights, k, target_fn)
    return jax.ops.segment_sum(g, k % n, n)


@functools.partial(jax.jit, static_argnames=("net", "target_fn"))
def _chunk(net, params, images, baselines, target_idx, alphas, weights, k, *, target_fn):
    _common.count_trace("integrated_gradients")
    return _contributions(net, params, images, baselines, target_idx, alphas, weights, k, target_fn)


@functools.partial(jax.jit, static_argnames=("net", "target_fn", "return_delta"))
def _finish(net, params, images, baselines, target_idx, total, *, target_fn, return_delta):
    _common.count_trace("integrated_gradients")
    attr = total * (images - baselines)
    if not return_delta:
        return attr
    n = images.shape[0]
    f = _common.forward(net)
    ends = _common.scores(
        f(params, jnp.concatenate([images, baselines], 0)), target_fn,
        None if target_idx is None else jnp.concatenate([target_idx, target_idx]),
    )
    delta = jnp.sum(attr.reshape(n, math.prod(attr.shape[1:])), axis=1) - (ends[:n] - ends[n:])
    return attr, delta


@functools.partial(jax.jit, static_argnames=("net", "target_fn", "batch_size", "return_delta"))
def _traced(net, params, images, baselines, target_idx, alphas, weights, *, target_fn, batch_size, return_delta):
    # under an outer transform: the chunks run inside this trace (see execution.chunked_sum)
    _common.count_trace("integrated_gradients")
    n, steps = images.shape[0], alphas.shape[0]

    def body(k):
        return _weighted_gradients(net, params, images, baselines, target_idx, alphas, weights, k, target_fn)

    items = steps * n
    total = execution.chunked_sum(body, items, batch_size, jnp.arange(items, dtype=jnp.int32) % n, n)
    return _finish(net, params, images, baselines, target_idx, total, target_fn=target_fn, return_delta=return_delta)


def integrated_gradients(
    net: Any,
    params: Any,
    images: jax.Array,
    target: Any,
    *,
    baselines: Any = None,
    steps: int = 50,
    method: str = "gausslegendre",
    batch_size: int = 16,
    return_delta: bool = False,
):
    """Integrated gradients (Sundararajan et al. 2017).

    Args:
      net: a jaxviz model, or any ``f(params, images) -> logits``.
      params: the model's parameters.
      images: (N, H, W, 3) float RGB in [0, 1].
      target: class index, one index per image (N,), or a callable logits (N, K) -> (N,).
      baselines: the integration's starting point: None (black, zeros), a
        number, or an array broadcastable to (N, H, W, 3).
      steps: number of quadrature nodes.
      method: ``"gausslegendre"`` (Captum's default), ``"riemann_left"``,
        ``"riemann_right"``, ``"riemann_middle"`` or ``"riemann_trapezoid"``
        (see :func:`quadrature` for the one difference from Captum).
      batch_size: images per forward/backward pass (any value gives the same result).
      return_delta: also return the completeness error
        ``sum(attr) - (f(x) - f(baseline))`` per image.

    Returns:
      (N, H, W, 3) attributions, or ``(attributions, delta (N,))`` with ``return_delta``.

    Raises:
      InputError: bad ``images``, ``target``, ``baselines``, ``steps``, ``method`` or ``batch_size``.

    Example::

        attr, delta = integrated_gradients(net, params, images, 207, steps=64, return_delta=True)
    """
    _common.check_net(net, "integrated_gradients")
    images = _common.check_images(images, net)
    _checks.one_of(method, "method", RULES)
    steps = _checks.positive_int(steps, "steps")
    alphas, weights = quadrature(method, steps)
    batch_size = _common.check_batch_size(batch_size)
    base = _common.broadcast_baseline(baselines, images)
    fn, idx = _common.prepare_target(target, images.shape[0], net, params, images)
    alphas, weights = jnp.asarray(alphas, jnp.float32), jnp.asarray(weights, jnp.float32)
    if execution.is_traced(params, images, base, idx):
        return _traced(net, params, images, base, idx, alphas, weights, target_fn=fn, batch_size=batch_size,
                       return_delta=bool(return_delta))
    # eager: one compiled chunk function, looped over on the host (no while loop around the backward pass)
    total = execution.host_sum(
        lambda k: _chunk(net, params, images, base, idx, alphas, weights, k, target_fn=fn),
        steps * images.shape[0], batch_size)
    return _finish(net, params, images, base, idx, total, target_fn=fn, return_delta=bool(return_delta))
