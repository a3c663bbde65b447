"""Quality metrics for attribution maps.

* :func:`deletion` / :func:`insertion` (Petsiuk et al., RISE, BMVC 2018):
  remove (or insert) pixels in order of decreasing attribution and follow the
  target's probability; a good map makes the deletion curve fall fast (small
  area) and the insertion curve rise fast (large area).
* :func:`infidelity` (Yeh et al., NeurIPS 2019): how well ``attr . I``
  predicts the score change ``f(x) - f(x - I)`` under random perturbations
  ``I``; Captum's ``infidelity`` formula (including ``normalize``).
* :func:`max_sensitivity` (Yeh et al. 2019): the largest relative change of
  the map under uniform input noise in an L-infinity ball; Captum's
  ``sensitivity_max`` formula with the Frobenius norm.
* :func:`model_randomization` (Adebayo et al., "Sanity Checks for Saliency
  Maps", NeurIPS 2018): cascading randomisation of the layers from the top,
  with the Spearman rank correlation of each map to the original one. A
  method that explains the model (not just the image) decorrelates fast.

* :func:`road` (Rong et al. 2022) with :func:`noisy_linear_imputation`, and
  :func:`confidence_change` / :func:`drop_in_confidence` /
  :func:`increase_in_confidence`: pytorch-grad-cam's metrics, equal to its numbers.
* Quantus' metrics (Hedström et al. 2023), equal to its numbers where it
  defines them: :func:`pixel_flipping`, :func:`region_perturbation`,
  :func:`irof`, :func:`monotonicity`, :func:`faithfulness_correlation`,
  :func:`avg_sensitivity`, :func:`local_lipschitz`, :func:`sparseness`,
  :func:`complexity`, :func:`pointing_game`, :func:`relevance_mass`,
  :func:`random_logit` (docs/attribution.md lists where and why they differ).

All perturbations are evaluated in chunks of ``batch_size`` images per
forward pass inside one jitted function, and drawn from an explicit key
(item ``i * samples + s`` uses ``fold_in(key, i * samples + s)``), so the
numbers do not depend on ``batch_size``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .. import _checks, execution
from ..errors import InputError
from . import _common

__all__ = [
    "Curve",
    "Randomization",
    "deletion",
    "insertion",
    "auc",
    "infidelity",
    "max_sensitivity",
    "model_randomization",
    "spearman",
    "avg_sensitivity",
    "local_lipschitz",
    "Road",
    "road",
    "noisy_linear_imputation",
    "confidence_change",
    "drop_in_confidence",
    "increase_in_confidence",
    "Flipping",
    "pixel_flipping",
    "region_perturbation",
    "irof",
    "monotonicity",
    "faithfulness_correlation",
    "grid_segments",
    "slic_segments",
    "sparseness",
    "complexity",
    "pointing_game",
    "relevance_mass",
    "box_masks",
    "random_logit",
    "ssim",
]


class Curve(NamedTuple):
    """A deletion or insertion curve.

    Attributes:
      fractions: (steps + 1,) fraction of pixels removed / inserted, 0 .. 1.
      scores: (N, steps + 1) the target's probability (or score) at each fraction.
      auc: (N,) area under the curve (trapezoid rule over [0, 1]).
    """

    fractions: np.ndarray
    scores: jax.Array
    auc: jax.Array


def auc(curve: jax.Array) -> jax.Array:
    """Trapezoid area of curves sampled evenly on [0, 1]: (..., S + 1) -> (...), S + 1 >= 2."""
    curve = jnp.asarray(curve)
    if curve.ndim == 0 or curve.shape[-1] < 2:
        raise InputError(f"curve: expected at least 2 samples along the last axis, got shape {curve.shape}")
    steps = curve.shape[-1] - 1
    return (jnp.sum(curve, axis=-1) - 0.5 * (curve[..., 0] + curve[..., -1])) / steps


@functools.partial(jax.jit, static_argnames=("net", "target_fn", "steps", "batch_size", "insert", "probabilities"))
def _curve_core(net, params, images, maps, baseline, target_idx, *, target_fn, steps, batch_size, insert,
                probabilities):
    _common.count_trace("insertion" if insert else "deletion")
    n, h, w, _ = images.shape
    f = _common.forward(net)
    order = jnp.argsort(-maps.reshape(n, h * w), axis=1, stable=True)
    position = jnp.zeros((n, h * w), jnp.int32).at[jnp.arange(n)[:, None], order].set(jnp.arange(h * w, dtype=jnp.int32))
    position = position.reshape(n, h, w)
    counts = jnp.asarray(np.round(np.arange(steps + 1) * (h * w) / steps).astype(np.int32))

    def build(i, s):
        changed = (position[i] < counts[s])[:, :, None]
        if insert:
            return jnp.where(changed, images[i], baseline[i])
        return jnp.where(changed, baseline[i], images[i])

    def body(k):
        i, s = k // (steps + 1), k % (steps + 1)
        out = f(params, jax.vmap(build)(i, s))
        if probabilities:
            out = jax.nn.softmax(out, axis=-1)
        return _common.scores(out, target_fn, _common.gather_target(target_idx, i))

    curve = execution.chunked_map(body, n * (steps + 1), batch_size).reshape(n, steps + 1)
    return curve, auc(curve)


def _curve(insert, net, params, images, target, attributions, steps, baseline, batch_size, probabilities):
    _common.check_net(net, "insertion" if insert else "deletion")
    images = _common.check_images(images, net)
    steps = _checks.positive_int(steps, "steps")
    batch_size = _common.check_batch_size(batch_size)
    n, h, w, _ = images.shape
    maps = _common.pixel_map(attributions, n, h, w, "attributions")
    base = _common.broadcast_baseline(baseline, images, "baseline")
    fn, idx = _common.prepare_target(target, n, net, params, images)
    curve, area = _curve_core(net, params, images, maps, base, idx, target_fn=fn, steps=steps,
                              batch_size=batch_size, insert=insert, probabilities=bool(probabilities))
    return Curve(np.linspace(0.0, 1.0, steps + 1), curve, area)


def deletion(net: Any, params: Any, images: jax.Array, target: Any, attributions: jax.Array, *, steps: int = 32,
             baseline: Any = 0.0, batch_size: int = 32, probabilities: bool = True) -> Curve:
    """Deletion curve: remove the most important pixels first (Petsiuk et al. 2018).

    Args:
      net: a jaxviz model, or any ``f(params, images) -> logits``.
      params: the model's parameters.
      images: (N, H, W, 3) float RGB in [0, 1].
      target: class index, one index per image (N,), or a callable on the
        (softmaxed, with ``probabilities``) outputs (N, K) -> (N,).
      attributions: (N, H, W, 3) (summed over channels) or (N, H, W) pixel importances.
      steps: the curve has ``steps + 1`` points, removing ``round(k H W / steps)`` pixels at point k.
      baseline: what a removed pixel becomes: a number or an image broadcastable to the input.
      batch_size: perturbed images per forward pass (results do not depend on it).
      probabilities: score the softmax probability (RISE) rather than the raw output.

    Returns:
      :class:`Curve` (lower ``auc`` is better).

    Example::

        attr = attribution.saliency(net, params, images, 3)
        metrics.deletion(net, params, images, 3, attr, steps=16).auc
    """
    return _curve(False, net, params, images, target, attributions, steps, baseline, batch_size, probabilities)


def insertion(net: Any, params: Any, images: jax.Array, target: Any, attributions: jax.Array, *, steps: int = 32,
              baseline: Any = 0.0, batch_size: int = 32, probabilities: bool = True) -> Curve:
    """Insertion curve: start from the baseline and insert the most important pixels first.

    Arguments as for :func:`deletion` (RISE uses a blurred copy of the image as
    ``baseline`` here). Higher ``auc`` is better.

    Returns:
      :class:`Curve`, as for :func:`deletion`, with fractions of pixels inserted.

    Example::

        metrics.insertion(net, params, images, 3, attr, baseline=blurred).auc
    """
    return _curve(True, net, params, images, target, attributions, steps, baseline, batch_size, probabilities)


# --------------------------------------------------------------------------------------------
# infidelity


@functools.partial(jax.jit, static_argnames=("net", "target_fn", "samples", "batch_size", "normalize"))
def _infidelity_core(net, params, images, attributions, stdev, key, target_idx, *, target_fn, samples, batch_size,
                     normalize):
    _common.count_trace("infidelity")
    n = images.shape[0]
    f = _common.forward(net)
    clean = _common.scores(f(params, images), target_fn, target_idx)

    def body(k):
        i = k // samples
        pert = stdev * _common.normal_noise(key, k, images.shape[1:], samples)
        out = _common.scores(f(params, images[i] - pert), target_fn, _common.gather_target(target_idx, i))
        a_dot = jnp.sum((attributions[i] * pert).reshape(k.shape[0], -1), axis=1)
        return a_dot, clean[i] - out

    a_dot, diff = execution.chunked_map(body, n * samples, batch_size)
    a_dot, diff = a_dot.reshape(n, samples), diff.reshape(n, samples)
    if not normalize:
        return jnp.sum((a_dot - diff) ** 2, axis=1) / samples
    s_aa, s_ad, s_dd = jnp.sum(a_dot**2, 1), jnp.sum(a_dot * diff, 1), jnp.sum(diff**2, 1)
    beta = jnp.where(s_aa == 0, 0.0, s_ad / jnp.where(s_aa == 0, 1.0, s_aa))
    return (beta * beta * s_aa - 2 * beta * s_ad + s_dd) / samples


def infidelity(net: Any, params: Any, images: jax.Array, target: Any, attributions: jax.Array, *,
               key: jax.Array | None = None, samples: int = 16, stdev: float = 0.05, normalize: bool = False,
               batch_size: int = 32) -> jax.Array:
    """Infidelity of pixel attributions (Yeh et al. 2019), Captum's formula.

    ``INFD = mean_s (attr . I_s - (f(x) - f(x - I_s)))^2`` with Gaussian
    perturbations ``I_s ~ N(0, stdev^2)`` per pixel; with ``normalize`` the
    attributions are first rescaled by the least-squares optimal ``beta``.

    Args:
      net: a jaxviz model, or any ``f(params, images) -> logits``.
      params: the model's parameters.
      images: (N, H, W, 3) float RGB in [0, 1].
      target: class index, one index per image (N,), or a callable logits (N, K) -> (N,).
      attributions: (N, H, W, 3) maps to judge, or (N, H, W) / (N, H, W, 1)
        maps with one value per pixel (an upsampled Grad-CAM), which count for
        all three channels: ``attr . I_s`` sums ``attr[h, w] * I_s[h, w, c]``,
        the same as the map repeated over the channels (which is what Captum,
        wanting the inputs' shape, must be given).
      key: PRNG key or int seed (None: ``jax.random.key(0)``); perturbation s of image i is
        ``stdev * normal(fold_in(key, i * samples + s))``. Or one key per image,
        shape (N,): ``fold_in(key[i], s)``, independent of the image's place in
        the batch (the form for ``parallel.data_parallel``).
      samples: perturbations per image.
      stdev: perturbation standard deviation.
      normalize: Captum's ``normalize=True``.
      batch_size: perturbed images per forward pass.

    Returns:
      (N,) infidelity (lower is better).

    Example::

        metrics.infidelity(net, params, images, 3, attr, key=jax.random.key(0))
    """
    _common.check_net(net, "infidelity")
    images = _common.check_images(images, net)
    shape = jnp.shape(attributions)
    if shape == images.shape[:3]:  # a pixel map (an upsampled Grad-CAM): the same for every channel
        attributions, shape = jnp.asarray(attributions)[..., None], shape + (1,)
    if shape not in (images.shape, images.shape[:3] + (1,)):
        raise InputError(f"attributions: expected shape {tuple(images.shape)} or {tuple(images.shape[:3])}, got {shape}")
    samples = _checks.positive_int(samples, "samples")
    batch_size = _common.check_batch_size(batch_size)
    _checks.positive_number(stdev, "stdev")
    key = _checks.prng_keys(key, images.shape[0])
    fn, idx = _common.prepare_target(target, images.shape[0], net, params, images)
    return _infidelity_core(net, params, images, jnp.asarray(attributions, jnp.float32), jnp.float32(stdev), key, idx,
                            target_fn=fn, samples=samples, batch_size=batch_size, normalize=bool(normalize))


# --------------------------------------------------------------------------------------------
# max-sensitivity


_SENS_STATIC = ("net", "target_fn", "base", "static_opts", "samples", "batch_size", "pass_batch", "lipschitz")


def _sens_options(static_opts, dyn_opts, pass_batch, batch_size):
    opts = dict(static_opts, **dyn_opts)
    if pass_batch:
        opts["batch_size"] = batch_size
    return opts


@functools.partial(jax.jit, static_argnames=("net", "target_fn", "base", "static_opts", "batch_size", "pass_batch"))
def _sens_reference(net, params, images, target_idx, dyn_opts, *, target_fn, base, static_opts, batch_size,
                    pass_batch):
    """The unperturbed maps, flattened, and their norms (a zero map counts as norm 1): shared by the three
    metrics, so it does not depend on the perturbations' kind or number."""
    _common.count_trace("max_sensitivity")
    opts = _sens_options(static_opts, dyn_opts, pass_batch, batch_size)
    ref = base(net, params, images, target_fn if target_fn is not None else target_idx, **opts)
    ref_flat = ref.reshape(images.shape[0], -1)
    norm = jnp.linalg.norm(ref_flat, axis=1)
    return ref_flat, jnp.where(norm == 0, 1.0, norm)


def _sens_items(net, params, images, radius, key, target_idx, opts, ref_flat, ref_norm, k, target_fn, base, samples,
                lipschitz):
    i = k // samples
    if lipschitz:  # Gaussian noise of standard deviation `radius`; ||a' - a|| / (||x' - x|| + 1e-10)
        d = _common.normal_noise(key, k, images.shape[1:], samples) * radius
    else:  # uniform noise in [-radius, radius); ||a' - a|| / ||a||
        d = _common.uniform_noise(key, k, images.shape[1:], 1.0, samples) * radius
    t = target_fn if target_fn is not None else target_idx[i]
    a = base(net, params, images[i] + d, t, **opts).reshape(k.shape[0], -1)
    change = jnp.linalg.norm(a - ref_flat[i], axis=1)
    if lipschitz:
        return change / (jnp.linalg.norm(d.reshape(k.shape[0], -1), axis=1) + 1e-10)
    return change / ref_norm[i]


@functools.partial(jax.jit, static_argnames=_SENS_STATIC)
def _sens_chunk(net, params, images, radius, key, target_idx, dyn_opts, ref_flat, ref_norm, k, *, target_fn, base,
                static_opts, samples, batch_size, pass_batch, lipschitz):
    _common.count_trace("max_sensitivity")
    opts = _sens_options(static_opts, dyn_opts, pass_batch, batch_size)
    return _sens_items(net, params, images, radius, key, target_idx, opts, ref_flat, ref_norm, k, target_fn, base,
                       samples, lipschitz)


@functools.partial(jax.jit, static_argnames=_SENS_STATIC)
def _sens_traced(net, params, images, radius, key, target_idx, dyn_opts, ref_flat, ref_norm, *, target_fn, base,
                 static_opts, samples, batch_size, pass_batch, lipschitz):
    _common.count_trace("max_sensitivity")
    opts = _sens_options(static_opts, dyn_opts, pass_batch, batch_size)
    return execution.chunked_map(
        lambda k: _sens_items(net, params, images, radius, key, target_idx, opts, ref_flat, ref_norm, k, target_fn,
                              base, samples, lipschitz),
        images.shape[0] * samples, batch_size, unroll=True)


def max_sensitivity(net: Any, params: Any, images: jax.Array, target: Any, *, method: str | Callable = "saliency",
                    options: Mapping[str, Any] | None = None, key: jax.Array | None = None, samples: int = 10,
                    radius: float = 0.02, batch_size: int = 16) -> jax.Array:
    """Max-sensitivity of an attribution method (Yeh et al. 2019), Captum's ``sensitivity_max``.

    ``max_s ||attr(x + d_s) - attr(x)|| / ||attr(x)||`` with ``d_s`` uniform in
    ``[-radius, radius]`` per pixel (Frobenius norms; a zero map counts as norm 1).

    Args:
      net, params, images, target: as for the method.
      method: a name from ``METHODS`` or a callable with the method signature.
      options: keyword options for the method.
      key: PRNG key or int seed (None: ``jax.random.key(0)``); noise s of image i uses ``fold_in(key, i * samples + s)``,
        or ``fold_in(key[i], s)`` for one key per image, shape (N,) (as in :func:`infidelity`).
      samples: perturbations per image.
      radius: half-width of the uniform noise.
      batch_size: perturbed images per method call.

    Returns:
      (N,) max-sensitivity (lower is better).

    Example::

        metrics.max_sensitivity(net, params, images, 3, method="saliency", radius=0.02)
    """
    return jnp.max(_sensitivity(net, params, images, target, method, options, key, samples, radius, batch_size,
                                False), axis=1)


def _sensitivity(net, params, images, target, method, options, key, samples, radius, batch_size, lipschitz):
    """(N, samples) per-perturbation values of max_sensitivity / avg_sensitivity (relative change of the map
    under uniform noise) or local_lipschitz (map change over input change under Gaussian noise)."""
    images = _common.check_images(images, net)
    base = _common.resolve_method(method)
    samples = _checks.positive_int(samples, "samples")
    batch_size = _common.check_batch_size(batch_size)
    key = _checks.prng_keys(key, images.shape[0])
    options = _common.check_options(base, options)
    _checks.positive_number(radius, "stdev" if lipschitz else "radius")
    if "batch_size" in options:
        raise InputError("options: pass batch_size to max_sensitivity itself (it is handed on to the method)")
    static_opts, dyn_opts = _common.split_options(options)
    fn, idx = _common.prepare_target(target, images.shape[0], net, params, images)
    shared = dict(target_fn=fn, base=base, static_opts=static_opts, batch_size=batch_size,
                  pass_batch=_common.accepts(base, "batch_size"))
    kw = dict(shared, samples=samples, lipschitz=lipschitz)
    ref_flat, ref_norm = _sens_reference(net, params, images, idx, dyn_opts, **shared)
    radius = jnp.float32(radius)
    n = images.shape[0]
    if execution.is_traced(params, images, key, idx, dyn_opts):
        sens = _sens_traced(net, params, images, radius, key, idx, dyn_opts, ref_flat, ref_norm, **kw)
    else:  # eager: host loop over one compiled chunk function (see execution.host_sum)
        sens = execution.host_map(
            lambda k: _sens_chunk(net, params, images, radius, key, idx, dyn_opts, ref_flat, ref_norm, k, **kw),
            n * samples, batch_size)
    return sens.reshape(n, samples)


def avg_sensitivity(net: Any, params: Any, images: jax.Array, target: Any, *, method: str | Callable = "saliency",
                    options: Mapping[str, Any] | None = None, key: jax.Array | None = None, samples: int = 200,
                    radius: float = 0.2, batch_size: int = 16) -> jax.Array:
    """Average sensitivity of an attribution method (Yeh et al. 2019), Quantus' ``AvgSensitivity``.

    ``mean_s ||attr(x + d_s) - attr(x)|| / ||attr(x)||`` with ``d_s`` uniform in ``[-radius, radius]`` per
    value (Frobenius norms; a zero map counts as norm 1). Quantus' defaults: 200 samples, ``lower_bound``
    0.2 (its name for the radius).

    Args:
      net, params, images, target, method, options, key, batch_size: as for :func:`max_sensitivity`.
      samples: perturbations per image.
      radius: half-width of the uniform noise.

    Returns:
      (N,) average sensitivity (lower is better).

    Example::

        metrics.avg_sensitivity(net, params, images, 3, method="saliency", samples=50)
    """
    return jnp.mean(_sensitivity(net, params, images, target, method, options, key, samples, radius, batch_size,
                                 False), axis=1)


def local_lipschitz(net: Any, params: Any, images: jax.Array, target: Any, *, method: str | Callable = "saliency",
                    options: Mapping[str, Any] | None = None, key: jax.Array | None = None, samples: int = 200,
                    stdev: float = 0.1, batch_size: int = 16) -> jax.Array:
    """Local Lipschitz estimate of an attribution method (Alvarez-Melis and Jaakkola 2018), Quantus'
    ``LocalLipschitzEstimate``.

    ``max_s ||attr(x + d_s) - attr(x)|| / (||d_s|| + 1e-10)`` with Gaussian ``d_s ~ N(0, stdev^2)`` per value
    (Euclidean norms). Quantus' defaults: 200 samples, ``perturb_std`` 0.1; Quantus also rescales each map by
    its largest absolute value first (``normalise=True``): give it ``normalise=False`` to compare.

    Args:
      net, params, images, target, method, options, key, batch_size: as for :func:`max_sensitivity`.
      samples: perturbations per image.
      stdev: standard deviation of the noise.

    Returns:
      (N,) Lipschitz estimate (lower is better).

    Example::

        metrics.local_lipschitz(net, params, images, 3, method="saliency", samples=50)
    """
    return jnp.max(_sensitivity(net, params, images, target, method, options, key, samples, stdev, batch_size,
                                True), axis=1)


# --------------------------------------------------------------------------------------------
# model randomisation


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Row-wise ranks 1..n, ties sharing their average rank (scipy.stats.rankdata's default)."""
    out = np.empty_like(x)
    for r, row in enumerate(x):
        order = np.argsort(row, kind="mergesort")
        v = row[order]
        starts = np.flatnonzero(np.r_[True, v[1:] != v[:-1]])  # first index of each run of equal values
        ends = np.r_[starts[1:], len(v)]
        avg = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
        out[r, order] = np.repeat(avg, ends - starts)
    return out


def spearman(a: Any, b: Any) -> np.ndarray:
    """Row-wise Spearman rank correlation (average ranks for ties): (N, ...) x (N, ...) -> (N,).

    Two 1-D arrays are one pair of rankings: (L,) x (L,) -> a scalar.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim == 0:
        raise InputError(f"a, b: expected two arrays of one shape, (N, ...) or (L,), got {a.shape} and {b.shape}")
    if a.ndim == 1:
        return spearman(a[None], b[None])[0]
    a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    ra, rb = _average_ranks(a), _average_ranks(b)
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    den = np.sqrt((ra**2).sum(1) * (rb**2).sum(1))
    return np.where(den == 0, 0.0, (ra * rb).sum(1) / np.where(den == 0, 1.0, den))


class Randomization(NamedTuple):
    """Result of :func:`model_randomization`.

    Attributes:
      layers: the layers randomised, top first; entry j has layers[:j+1] randomised.
      spearman: (len(layers), N) rank correlation of each map to the original one.
      maps: the maps themselves ((len(layers), ...) ) when asked for, else None.
    """

    layers: tuple[str, ...]
    spearman: np.ndarray
    maps: Any


def _layer_order(net: Any, params: Mapping, images: jax.Array) -> list[str]:
    """The parameter groups (keys of ``params["params"]``) from the output down, in the order the model reads
    them, measured from its traced program (:func:`jaxviz.models._jaxpr.first_use`): a params dict's key order
    is no guide (a converted file's keys come sorted, ``fc`` before ``layer1_0``)."""
    from ..models import _jaxpr

    nested = "params" in params
    inner = params["params"] if nested else params
    names = list(inner.keys())
    f = _common.forward(net)
    x = jax.ShapeDtypeStruct((1,) + tuple(images.shape[1:]), images.dtype)
    firsts = _jaxpr.first_use(lambda p, v: f(p, v), params, x)
    where: dict = {}
    flat, _ = jax.tree_util.tree_flatten_with_path(params)  # the same order as (params, x)'s leading leaves
    for (path, _), first in zip(flat, firsts):
        keys = [getattr(k, "key", None) for k in path]
        if nested and keys[0] != "params":
            continue  # other collections (batch statistics) are not randomised
        name = keys[1] if nested else keys[0]
        where[name] = min(where.get(name, float("inf")), first)
    return sorted(names, key=lambda n: (where.get(n, float("inf")), names.index(n)), reverse=True)


def _randomize(tree: Any, key: jax.Array) -> Any:
    # host-side numpy draws seeded from the key: a re-initialisation is not a hot path, and per-shape
    # jax.random programs would each cost a compilation
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    new = [jnp.asarray(rng.standard_normal(np.shape(v)) * float(np.std(np.asarray(v))), jnp.float32) for v in leaves]
    return jax.tree_util.tree_unflatten(treedef, new)


def model_randomization(net: Any, params: Any, images: jax.Array, target: Any, *,
                        method: str | Callable = "saliency", options: Mapping[str, Any] | None = None,
                        layers: Sequence[str] | None = None, key: jax.Array | None = None, absolute: bool = True,
                        return_maps: bool = False) -> Randomization:
    """Cascading model-parameter randomisation sanity check (Adebayo et al. 2018).

    Starting from the output layer, each parameterised layer in turn is
    re-drawn (and stays re-drawn): every array becomes Gaussian noise with the
    original array's standard deviation (zero arrays stay zero), shapes kept
    (drawn with numpy, seeded from ``fold_in(key, j)``).
    After each step the method's map is recomputed and compared to the
    original by Spearman rank correlation (of absolute values with
    ``absolute``). Correlations that stay near 1 mean the method does not
    depend on what the model learned.

    Args:
      net, params, images, target: as for the method.
      method: a name from ``METHODS`` or a callable with the method signature.
      options: keyword options for the method.
      layers: parameter groups (keys of ``params["params"]``) to randomise, in
        order; None: every one, from the output down.
      key: PRNG key or int seed (None: ``jax.random.key(0)``); layer j uses ``fold_in(key, j)``.
      absolute: correlate absolute values (Adebayo et al.'s main figure).
      return_maps: keep every recomputed map.

    Returns:
      :class:`Randomization`.

    Raises:
      InputError: an unknown layer name.

    Example::

        r = metrics.model_randomization(net, params, images, 3, method="guided_backprop")
        dict(zip(r.layers, r.spearman.mean(1)))
    """
    images = _common.check_images(images, net)
    fn = _common.resolve_method(method)
    options = _common.check_options(fn, options)
    key = _checks.prng_key(key)
    nested = "params" in params
    inner = dict(params["params"] if nested else params)
    order = _layer_order(net, params, images) if layers is None else [layers] if isinstance(layers, str) else list(layers)
    for name in order:
        if name not in inner:
            raise InputError(f"layers: unknown parameter group {name!r}; expected some of {', '.join(inner)}")

    def prep(m):
        m = np.asarray(m, np.float64)
        return np.abs(m) if absolute else m

    original = prep(fn(net, params, images, target, **options))
    rho, maps = [], []
    for j, name in enumerate(order):
        inner[name] = _randomize(inner[name], jax.random.fold_in(key, j))
        current = dict(params, params=dict(inner)) if nested else dict(inner)
        m = fn(net, current, images, target, **options)
        rho.append(spearman(original, prep(m)))
        if return_maps:
            maps.append(np.asarray(m))
    return Randomization(tuple(order), np.stack(rho) if rho else np.zeros((0, images.shape[0])),
                         np.stack(maps) if return_maps and maps else None)


# --------------------------------------------------------------------------------------------
# ROAD and the confidence changes (pytorch-grad-cam's metrics): see _road.py

from ._road import (  # noqa: E402
    Road,
    confidence_change,
    drop_in_confidence,
    increase_in_confidence,
    noisy_linear_imputation,
    road,
)
from ._faithfulness import (  # noqa: E402
    Flipping,
    faithfulness_correlation,
    grid_segments,
    irof,
    monotonicity,
    pixel_flipping,
    region_perturbation,
    slic_segments,
)
from ._properties import box_masks, complexity, pointing_game, random_logit, relevance_mass, sparseness, ssim  # noqa: E402,E501
