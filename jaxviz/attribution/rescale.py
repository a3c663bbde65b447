"""DeepLIFT with the rescale rule, and DeepLIFT-SHAP, on any JAX model (Shrikumar et al. 2017; Captum's ``DeepLift``
and ``DeepLiftShap``).

DeepLIFT explains ``f(x) - f(x0)`` for a baseline ``x0``: each nonlinearity's gradient is replaced by the ratio
of its output and input differences between the two, ``(y - y0) / (z - z0)`` (its plain gradient where the
input difference is below ``eps``), and the attribution is ``(x - x0)`` times the resulting multipliers. jaxviz
runs the image and its baseline as one batch ``[x; x0]`` through the model's traced program, finds the ReLUs
(and tanh, sigmoid) and max pools there (:mod:`jaxviz.models.layerwise`; functional ReLUs included, which
Captum cannot hook) and gives them Captum's rules:

* activations: ``g * (y - y0) / (z - z0)`` where ``|z - z0| >= eps``, else the plain gradient;
* max pools (Captum's ``maxpool`` rule): the output difference split at the cross maximum ``max(y, y0)``,
  ``(max - y0)`` routed to the image's argmax and ``(y - max)`` to the baseline's, the sum divided by the
  input difference ``x - x0``.

Captum applies its max-pool rule through a backward hook on the pool's input tensor, which is also the output
tensor of the ReLU before it; the ReLU's hook on that tensor runs first and captures the *plain* gradient of the
pool, so on a network whose max pools directly follow ReLUs (VGG) Captum's ReLU rule is applied to the pool's
ordinary gradient and its own max-pool rule only reaches the ReLU's fallback branch. Its attributions then no
longer sum to ``f(x) - f(x0)`` (convergence deltas of a few percent; measured in ``tests/test_deeplift.py``).
jaxviz applies the max-pool rule as documented (``max_pool="rescale"``, the default: deltas at float round-off);
``max_pool="gradient"`` gives Captum's numbers on such networks.

Linear layers, sums and average pools keep their gradient (their multipliers are their weights). The
attributions sum to ``f(x) - f(x0)`` up to the convergence delta ``sum(attr) - (f(x) - f(x0))`` that Captum
returns; it is small on ReLU networks with max pools (and 0 without them). As in Captum, the backward pass
starts from the target's score of both halves of the batch.

DeepLIFT-SHAP averages DeepLIFT over a distribution of baselines (every image against every baseline).

Reference: A. Shrikumar, P. Greenside, A. Kundaje, "Learning Important Features Through Propagating
Activation Differences", ICML 2017; S. Lundberg, S.-I. Lee, "A Unified Approach to Interpreting Model
Predictions", NeurIPS 2017.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import execution
from ..errors import InputError
from ..models import layerwise
from . import _common

__all__ = ["deeplift", "deeplift_shap", "MAX_POOL_RULES"]

#: ``max_pool=`` values: Captum's documented max-pool rule, or the pool's plain gradient (see the module).
MAX_POOL_RULES = ("rescale", "gradient")


def _halves(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    n = a.shape[0] // 2
    return a[:n], a[n:]


def _twice(a: jax.Array) -> jax.Array:
    return jnp.concatenate([a, a])


def _ratio(num: jax.Array, den: jax.Array, eps: float, fallback: jax.Array) -> jax.Array:
    small = jnp.abs(den) < eps
    return jnp.where(small, fallback, num / jnp.where(small, jnp.ones((), den.dtype), den))


@dataclasses.dataclass(frozen=True)
class _Rescale:
    """Captum's ``nonlinear`` rule for an activation, on the batch [x; x0]."""

    eps: float

    def relevance(self, aff: layerwise.Affine, z: jax.Array, g: jax.Array) -> jax.Array:
        y, pull = jax.vjp(lambda v: aff.lin(v, None), z)
        (grad,) = pull(g)
        z1, z0 = _halves(z)
        y1, y0 = _halves(y)
        return _ratio(g * _twice(y1 - y0), _twice(z1 - z0), self.eps, grad)


@dataclasses.dataclass(frozen=True)
class _MaxPool:
    """Captum's ``maxpool`` rule, on the batch [x; x0]."""

    eps: float

    def relevance(self, aff: layerwise.Affine, z: jax.Array, g: jax.Array) -> jax.Array:
        y, unpool = jax.vjp(aff.own, z)  # routes each half's cotangent to that half's first maxima
        (grad,) = unpool(g)
        y1, y0 = _halves(y)
        top = jnp.maximum(y1, y0)
        (moved,) = unpool(g * jnp.concatenate([top - y0, y1 - top]))
        a, b = _halves(moved)
        z1, z0 = _halves(z)
        return _ratio(_twice(a + b), _twice(z1 - z0), self.eps, grad)


@dataclasses.dataclass(frozen=True)
class _FirstMax:
    """The max pool's plain gradient, routed to the first maximum of each window (PyTorch's choice on ties;
    ``reduce_max``'s own gradient would split a tie, e.g. a window of zeros after a ReLU)."""

    def relevance(self, aff: layerwise.Affine, z: jax.Array, g: jax.Array) -> jax.Array:
        return jax.vjp(aff.own, z)[1](g)[0]


def _pairs(net, params, x, x0, idx, target_fn, eps, max_pool):
    """Multipliers of m image/baseline pairs (m, H, W, 3) and ``f(x) - f(x0)`` of their targets (m,)."""
    f = _common.plain_forward(net)
    rescale, maxpool = _Rescale(eps), (_MaxPool(eps) if max_pool == "rescale" else _FirstMax())

    def choose(layer):
        return rescale if layer.kind == "activation" else maxpool if layer.kind == "max_pool" else None

    def run(v):
        out, _ = layerwise.propagate(f, (params, jnp.concatenate([v, x0])), 1, choose, max_pool_rule=True,
                                    pass_scaling=False)
        return out

    logits, pull = jax.vjp(run, x)
    both = None if idx is None else _twice(idx)
    score = lambda o: _common.scores(o, target_fn, both)  # noqa: E731
    g = jax.grad(lambda o: jnp.sum(score(o)))(logits)
    (mult,) = pull(g)
    s1, s0 = _halves(score(logits))
    return mult, s1 - s0


def _items(net, params, images, base, idx, k, target_fn, per, shared, eps, max_pool):
    """Pairs ``k = i * per + b``: their attributions and their convergence deltas in column ``b`` (m, per)."""
    i = k // per
    x = images[i]
    x0 = base[k % per] if shared else base[i]
    mult, diff = _pairs(net, params, x, x0, None if idx is None else idx[i], target_fn, eps, max_pool)
    attr = (x - x0) * mult
    return attr, _common.draw_columns(jnp.sum(attr, axis=tuple(range(1, attr.ndim))) - diff, k, per)


@functools.partial(jax.jit, static_argnames=("net", "target_fn", "per", "shared", "eps", "max_pool"))
def _chunk(net, params, images, base, idx, k, *, target_fn, per, shared, eps, max_pool):
    _common.count_trace("deeplift")
    out = _items(net, params, images, base, idx, k, target_fn, per, shared, eps, max_pool)
    return jax.tree.map(lambda v: jax.ops.segment_sum(v, k // per, images.shape[0]), out)


@functools.partial(jax.jit, static_argnames=("net", "target_fn", "per", "shared", "eps", "max_pool", "batch_size"))
def _traced(net, params, images, base, idx, *, target_fn, per, shared, eps, max_pool, batch_size):
    _common.count_trace("deeplift")
    n = images.shape[0]
    img_of = jnp.arange(n * per, dtype=jnp.int32) // per
    return execution.chunked_sum(
        lambda k: _items(net, params, images, base, idx, k, target_fn, per, shared, eps, max_pool), n * per,
        batch_size, img_of, n)


def _check_eps(eps: Any) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.number)) or not eps > 0:
        raise InputError(f"eps: expected a positive number, got {eps!r}")
    return float(eps)


def _run(name, net, params, images, target, base, shared, eps, return_delta, batch_size, max_pool):
    if max_pool not in MAX_POOL_RULES:
        raise InputError(f"max_pool: expected one of {', '.join(map(repr, MAX_POOL_RULES))}, got {max_pool!r}")
    n = images.shape[0]
    per = base.shape[0] if shared else 1
    batch_size = _common.check_batch_size(batch_size)
    eps = _check_eps(eps)
    if not isinstance(return_delta, (bool, np.bool_)):
        raise InputError(f"return_delta: expected True or False, got {return_delta!r}")
    fn, idx = _common.prepare_target(target, n, net, params, images)
    if execution.is_traced(params, images, base, idx):
        total, delta = _traced(net, params, images, base, idx, target_fn=fn, per=per, shared=shared, eps=eps,
                               max_pool=max_pool, batch_size=batch_size)
    else:  # eager: one compiled chunk looped over on the host (see execution.host_sum)
        total, delta = execution.host_sum(
            lambda k: _chunk(net, params, images, base, idx, k, target_fn=fn, per=per, shared=shared, eps=eps,
                             max_pool=max_pool),
            n * per, batch_size)
    attr = total / per
    if not return_delta:
        return attr
    return attr, (delta if shared else delta[:, 0])


def deeplift(net: Any, params: Any, images: jax.Array, target: Any, *, baselines: Any = 0.0, eps: float = 1e-10,
             return_delta: bool = False, batch_size: int = 16, max_pool: str = "rescale") -> Any:
    """DeepLIFT with the rescale rule (Shrikumar et al. 2017), equal to Captum's ``DeepLift``.

    Args:
      net: a jaxviz model, flax module, adapted model or ``f(params, images) -> logits`` with ReLUs.
      params: the model's parameters.
      images: (N, H, W, 3) float RGB in [0, 1].
      target: class index, one index per image (N,), or a callable logits (N, K) -> (N,).
      baselines: a number (Captum's default 0), one image (H, W, 3), or one per image (N, H, W, 3) (e.g.
        ``image.gaussian_blur(images, 8)``, a blurred copy of each).
      eps: input differences below this take the plain gradient (Captum's ``eps``).
      return_delta: also return the convergence delta ``sum(attr) - (f(x) - f(x0))`` per image (N,).
      batch_size: images per pass (each pass runs the images and their baselines: twice as many rows).
      max_pool: ``"rescale"`` (Captum's max-pool rule; the attributions then sum to ``f(x) - f(x0)``) or
        ``"gradient"`` (the pool's plain gradient: Captum's numbers on a network whose max pools directly follow
        ReLUs, such as VGG; see the module docstring).

    Returns:
      (N, H, W, 3) attributions, or ``(attributions, delta)``.

    Raises:
      InputError: bad ``net``, ``images``, ``target``, ``baselines``, ``eps`` or ``batch_size``.

    Example::

        attr, delta = deeplift(net, params, images, 207, baselines=image.gaussian_blur(images, 8),
                               return_delta=True)
    """
    net, images = _common.rule_model(net, images, "deeplift")
    base = _common.broadcast_baseline(baselines, images)
    return _run("deeplift", net, params, images, target, base, False, eps, return_delta, batch_size, max_pool)


def deeplift_shap(net: Any, params: Any, images: jax.Array, target: Any, *, baselines: Any = 0.0,
                  eps: float = 1e-10, return_delta: bool = False, batch_size: int = 16,
                  max_pool: str = "rescale") -> Any:
    """DeepLIFT-SHAP: DeepLIFT averaged over a distribution of baselines (Captum's ``DeepLiftShap``).

    Args:
      net, params, images, target, eps, max_pool: as for :func:`deeplift`.
      baselines: the distribution: B images (B, H, W, 3) (Captum wants several), one image, or a number.
      return_delta: also return the convergence delta of every image/baseline pair, (N, B) (Captum returns the
        same numbers flat, image-major).
      batch_size: image/baseline pairs per pass.

    Returns:
      (N, H, W, 3) attributions: the mean over the baselines of DeepLIFT's, or ``(attributions, delta)``.

    Example::

        blurred = jnp.stack([image.gaussian_blur(x, s) for s in (4, 8, 16)])  # one image x, three baselines
        attr = deeplift_shap(net, params, images, 207, baselines=blurred)
    """
    net, images = _common.rule_model(net, images, "deeplift_shap")
    base = _common.baseline_set(baselines, images)
    return _run("deeplift_shap", net, params, images, target, base, True, eps, return_delta, batch_size, max_pool)
