"""Faithfulness metrics by progressive or random perturbation, as Quantus defines them (Hedström et al.,
JMLR 2023): pixel flipping, region perturbation, IROF, monotonicity and faithfulness correlation.

*Features.* An attribution of shape (N, H, W) ranks pixels (a feature is a pixel, all its channels change
together); an attribution of shape (N, H, W, C) ranks every value (a feature is one channel of one pixel),
which is how Quantus counts features when it is given channel-wise attributions.

*Baselines.* What a removed feature becomes: a number, an array broadcastable to the images, or
``"mean"``/``"black"``/``"white"``: the image's own mean / minimum / maximum over all its values (Quantus'
names). Quantus takes these statistics of the array it is perturbing at each step (for pixel flipping the
partly perturbed image, for IROF the whole batch); jaxviz takes them of the original image, so that a
step does not change what the later ones write. Numeric baselines give Quantus' numbers exactly.

Every perturbed image of every step runs through the model in one jitted program, ``batch_size`` at a
time; ranks break ties by position (a stable sort), where Quantus' ``np.argsort`` leaves them to its sort.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import _checks, execution
from ..errors import InputError
from . import _common

__all__ = ["Flipping", "pixel_flipping", "region_perturbation", "irof", "monotonicity", "faithfulness_correlation",
           "grid_segments", "slic_segments"]

BASELINES = ("mean", "black", "white")


class Flipping(NamedTuple):
    """A pixel-flipping curve (:func:`pixel_flipping`).

    Attributes:
      fractions: (S,) fraction of the features removed after each step.
      scores: (N, S) the target's score after each step (Quantus' ``PixelFlipping`` curve).
      auc: (N,) trapezoid area under ``scores`` over ``fractions`` (lower is better). Quantus'
        ``return_auc_per_sample`` integrates with unit steps: ``auc * S`` when ``features_in_step`` divides
        the number of features (the steps are then 1/S apart).
    """

    fractions: np.ndarray
    scores: jax.Array
    auc: jax.Array


def _features(attributions: Any, images: jax.Array) -> jax.Array:
    """(N, H, W) -> (N, H, W, 1) pixel features, (N, H, W, C) as it is; checked and finite."""
    a = jnp.asarray(attributions, jnp.float32)
    n, h, w, c = images.shape
    if a.shape == (n, h, w):
        a = a[..., None]
    if a.shape not in ((n, h, w, 1), (n, h, w, c)):
        raise InputError(f"attributions: expected shape ({n}, {h}, {w}) (one value per pixel) or ({n}, {h}, {w}, {c}) "
                         f"(one per value), got {tuple(jnp.shape(attributions))}")
    if not isinstance(a, jax.core.Tracer) and not bool(jnp.isfinite(a).all()):
        raise InputError("attributions: expected finite values, got NaN or inf (the feature order would be arbitrary)")
    return a


def _baseline(baseline: Any, images: jax.Array) -> jax.Array:
    if isinstance(baseline, str):
        _checks.one_of(baseline, "baseline", BASELINES)
        stat = {"mean": jnp.mean, "black": jnp.min, "white": jnp.max}[baseline]
        return jnp.broadcast_to(stat(images, axis=(1, 2, 3), keepdims=True), images.shape)
    return _common.broadcast_baseline(baseline, images, "baseline")


def _ranks(order_scores: jax.Array) -> jax.Array:
    """Rank 0 for the largest score (stable: ties by position): (N, ...) -> int32 of the same shape."""
    n = order_scores.shape[0]
    flat = order_scores.reshape(n, -1)
    order = jnp.argsort(-flat, axis=1, stable=True)
    size = flat.shape[1]
    ranks = jnp.zeros((n, size), jnp.int32).at[jnp.arange(n)[:, None], order].set(jnp.arange(size, dtype=jnp.int32))
    return ranks.reshape(order_scores.shape)


@functools.partial(jax.jit, static_argnames=("net", "target_fn", "batch_size", "insert", "probabilities"))
def _progressive(net, params, images, ranks, base, counts, target_idx, *, target_fn, batch_size, insert,
                 probabilities):
    """Scores (N, S) of the images with the features of rank < counts[s] replaced (``insert``: kept, the rest
    replaced) by the baseline, and the clean scores (N,)."""
    _common.count_trace("progressive_perturbation")
    n, steps = images.shape[0], counts.shape[0]
    f = _common.forward(net)
    clean = _common.target_scores(f(params, images), target_fn, target_idx, probabilities)

    def build(i, s):
        changed = ranks[i] < counts[s]
        return jnp.where(changed, images[i], base[i]) if insert else jnp.where(changed, base[i], images[i])

    def body(k):
        i, s = k // steps, k % steps
        return _common.target_scores(f(params, jax.vmap(build)(i, s)), target_fn, _common.gather_target(target_idx, i),
                                     probabilities)

    return execution.chunked_map(body, n * steps, batch_size).reshape(n, steps), clean


def _prepare(net, params, images, target, name):
    _common.check_net(net, name)
    images = _common.check_images(images, net)
    fn, idx = _common.prepare_target(target, images.shape[0], net, params, images)
    return images, fn, idx


def _trapezoid(y: jax.Array, x: np.ndarray) -> jax.Array:
    if y.shape[-1] < 2:
        return jnp.zeros(y.shape[:-1], y.dtype)
    dx = jnp.asarray(np.diff(x), y.dtype)
    return jnp.sum(0.5 * (y[..., 1:] + y[..., :-1]) * dx, axis=-1)


def pixel_flipping(net: Any, params: Any, images: jax.Array, target: Any, attributions: jax.Array, *,
                   features_in_step: int = 1, baseline: Any = 0.0, probabilities: bool = True,
                   batch_size: int = 32) -> Flipping:
    """Pixel flipping (Bach et al., PLoS ONE 2015), Quantus' ``PixelFlipping``.

    The features are removed (set to the baseline) in order of decreasing attribution, ``features_in_step``
    more at each step, until all are; the target's score is read after every step. A faithful map makes the
    curve fall fast.

    Args:
      net: a jaxviz model, or any ``f(params, images) -> logits``.
      params: the model's parameters.
      images: (N, H, W, 3) float RGB in [0, 1].
      target: class index, one index per image (N,), or a callable on the (softmaxed, with
        ``probabilities``) outputs (N, K) -> (N,).
      attributions: (N, H, W) (pixel features) or (N, H, W, 3) (value features).
      features_in_step: features removed per step (Quantus' default 1 is one forward pass per feature:
        ``H * W / 64`` is a usual choice at 224 px).
      baseline: a number, an array broadcastable to the images, or "mean" / "black" / "white".
      probabilities: score the softmax probability (Quantus' ``softmax=True`` default) or the logit.
      batch_size: perturbed images per forward pass (results do not depend on it).

    Returns:
      :class:`Flipping`.

    Example::

        attr = attribution.saliency(net, params, images, 3)
        metrics.pixel_flipping(net, params, images, 3, attr, features_in_step=256).auc
    """
    images, fn, idx = _prepare(net, params, images, target, "pixel_flipping")
    a = _features(attributions, images)
    k = _checks.positive_int(features_in_step, "features_in_step")
    batch_size = _common.check_batch_size(batch_size)
    total = math.prod(a.shape[1:])
    counts = np.minimum(np.arange(1, math.ceil(total / k) + 1) * k, total)
    scores, _ = _progressive(net, params, images, _ranks(a), _baseline(baseline, images), jnp.asarray(counts, jnp.int32),
                             idx, target_fn=fn, batch_size=batch_size, insert=False,
                             probabilities=bool(probabilities))
    fractions = counts / total
    return Flipping(fractions, scores, _trapezoid(scores, fractions))


def monotonicity(net: Any, params: Any, images: jax.Array, target: Any, attributions: jax.Array, *,
                 features_in_step: int = 1, baseline: Any = 0.0, probabilities: bool = True,
                 batch_size: int = 32, return_curve: bool = False) -> Any:
    """Monotonicity (Arya et al. 2019, AIX360's ``monotonicity_metric``).

    Starting from the baseline image, the features are put back in order of *increasing* attribution,
    ``features_in_step`` at a time; the map is monotonic for an image when the target's score never falls
    from one step to the next.

    Quantus 0.6's ``Monotonicity`` writes the baseline value into its all-baseline image at each step
    instead of the image's values, so its curve stays flat and it answers True for every map; jaxviz
    inserts the features (the definition), so it is checked against a constructed model here rather than
    against Quantus.

    Args:
      net, params, images, target, attributions, features_in_step, baseline, probabilities, batch_size:
        as for :func:`pixel_flipping`.
      return_curve: also return the (N, S) scores after each step.

    Returns:
      (N,) bool, or ``(monotonic, scores)`` with ``return_curve``.

    Example::

        metrics.monotonicity(net, params, images, 3, attr, features_in_step=256).mean()
    """
    images, fn, idx = _prepare(net, params, images, target, "monotonicity")
    a = _features(attributions, images)
    k = _checks.positive_int(features_in_step, "features_in_step")
    batch_size = _common.check_batch_size(batch_size)
    total = math.prod(a.shape[1:])
    counts = np.minimum(np.arange(1, math.ceil(total / k) + 1) * k, total)
    scores, _ = _progressive(net, params, images, _ranks(-a), _baseline(baseline, images),
                             jnp.asarray(counts, jnp.int32), idx, target_fn=fn, batch_size=batch_size, insert=True,
                             probabilities=bool(probabilities))
    mono = jnp.all(jnp.diff(scores, axis=1) >= 0, axis=1)
    return (mono, scores) if return_curve else mono


# --------------------------------------------------------------------------------------------
# segments


def grid_segments(shape: tuple[int, ...], size: int, *, centered: bool = False) -> np.ndarray:
    """Square segments of ``size`` px numbered row-major: ``(H, W)`` or ``(N, H, W, ...)`` -> an (H, W) int32
    label image.

    When ``size`` does not divide a side, the cells at its end are cut short; with ``centered`` the grid is
    centred instead, cutting the cells at both ends (Quantus' region perturbation pads the image by half the
    remainder on each side).

    Example::

        metrics.grid_segments(images.shape, 16)
    """
    size = _checks.positive_int(size, "size")
    h, w = (shape[1], shape[2]) if len(shape) >= 3 else (shape[0], shape[1])
    oy, ox = ((-h) % size // 2, (-w) % size // 2) if centered else (0, 0)
    cols = -(-(w + ox) // size)
    yy, xx = np.mgrid[:h, :w]
    return (((yy + oy) // size) * cols + (xx + ox) // size).astype(np.int32)


def slic_segments(images: Any, **options: Any) -> np.ndarray:
    """SLIC superpixels of each image (scikit-image's ``slic(image, start_label=0, **options)``, Quantus'
    IROF default): (N, H, W, 3) -> (N, H, W) int32.

    Raises:
      InputError: scikit-image is not installed.
    """
    try:
        from skimage.segmentation import slic
    except ImportError:
        raise InputError("segments: 'slic' needs scikit-image (pip install scikit-image); or pass an int (square "
                         "segments of that size) or an (N, H, W) label array") from None
    x = np.asarray(images, np.float64)
    return np.stack([slic(img, start_label=0, **options) for img in x]).astype(np.int32)


def segment_labels(segments: Any, images: jax.Array) -> tuple[np.ndarray, np.ndarray]:
    """Labels relabelled 0..S_i-1 per image (in order of the original labels) and S_i: ((N, H, W), (N,))."""
    n, h, w, _ = images.shape
    if isinstance(segments, str):
        _checks.one_of(segments, "segments", ("slic",))
        labels = slic_segments(images)
    elif isinstance(segments, (int, np.integer)) and not isinstance(segments, bool):
        labels = np.broadcast_to(grid_segments(images.shape, int(segments)), (n, h, w))
    else:
        labels = np.asarray(segments)
        if labels.shape == (h, w):
            labels = np.broadcast_to(labels, (n, h, w))
        if labels.shape != (n, h, w) or not np.issubdtype(labels.dtype, np.integer):
            raise InputError(f"segments: expected 'slic', a segment size (int) or integer labels of shape ({n}, {h}, "
                             f"{w}) or ({h}, {w}), got {labels.dtype}{tuple(labels.shape)}")
    out = np.empty((n, h, w), np.int32)
    counts = np.empty((n,), np.int32)
    for i in range(n):
        uniq, inv = np.unique(labels[i], return_inverse=True)
        out[i] = inv.reshape(h, w)
        counts[i] = len(uniq)
    return out, counts


def _segment_ranks(a: jax.Array, labels: np.ndarray, counts: np.ndarray, reduce: str, order: str,
                   key: jax.Array) -> jax.Array:
    """Each pixel's segment's rank (0 first), from the segments' summed or mean attributions: (N, H, W, 1)."""
    n = a.shape[0]
    s_max = int(counts.max())
    lab = jnp.asarray(labels)
    per_pixel = jnp.sum(a, axis=-1)  # all channels of the pixel
    sums = jax.vmap(lambda v, l: jax.ops.segment_sum(v.ravel(), l.ravel(), s_max))(per_pixel, lab)
    if reduce == "mean":
        sizes = jax.vmap(lambda l: jax.ops.segment_sum(jnp.ones(l.size, jnp.float32), l.ravel(), s_max))(lab)
        sums = sums / jnp.maximum(sizes * a.shape[-1], 1.0)
    if order == "lerf":
        sums = -sums
    elif order == "random":
        sums = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(key, i), (s_max,)))(jnp.arange(n))
    present = jnp.arange(s_max)[None, :] < jnp.asarray(counts)[:, None]
    sums = jnp.where(present, sums, -jnp.inf)  # absent labels last
    seg_rank = _ranks(sums)
    return jnp.take_along_axis(seg_rank, lab.reshape(n, -1), axis=1).reshape(lab.shape)[..., None]


def region_perturbation(net: Any, params: Any, images: jax.Array, target: Any, attributions: jax.Array, *,
                        patch_size: int = 8, regions: int = 100, order: str = "morf", baseline: Any = 0.0,
                        probabilities: bool = True, key: Any = None, batch_size: int = 32) -> jax.Array:
    """Region perturbation (Samek et al., IEEE TNNLS 2017), Quantus' ``RegionPerturbation``.

    The image is cut into ``patch_size`` squares (a centred grid, whose cells at the borders are cut short
    when the size does not divide the image: Quantus pads the image by half the remainder on each side,
    which perturbs the same pixels); squares are removed one more per step in order of their summed
    attribution.

    Args:
      net, params, images, target, attributions, baseline, probabilities, batch_size: as for
        :func:`pixel_flipping`.
      patch_size: side of the squares.
      regions: steps (at most the number of squares).
      order: "morf" (most relevant first), "lerf" (least relevant first) or "random".
      key: PRNG key or int seed for ``order="random"``.

    Returns:
      (N, steps) clean score minus the score after each step (Quantus' curve: larger falls first is better
      for MoRF).

    Example::

        metrics.region_perturbation(net, params, images, 3, attr, patch_size=16, regions=50).mean(0)
    """
    images, fn, idx = _prepare(net, params, images, target, "region_perturbation")
    a = _features(attributions, images)
    size = _checks.positive_int(patch_size, "patch_size")
    regions = _checks.positive_int(regions, "regions")
    _checks.one_of(order, "order", ("morf", "lerf", "random"))
    batch_size = _common.check_batch_size(batch_size)
    labels, counts = segment_labels(grid_segments(images.shape, size, centered=True), images)
    ranks = _segment_ranks(a, labels, counts, "sum", order, _checks.prng_key(key))
    steps = min(regions, int(counts.max()))
    scores, clean = _progressive(net, params, images, ranks, _baseline(baseline, images),
                                 jnp.arange(1, steps + 1, dtype=jnp.int32), idx, target_fn=fn, batch_size=batch_size,
                                 insert=False, probabilities=bool(probabilities))
    return clean[:, None] - scores


def irof(net: Any, params: Any, images: jax.Array, target: Any, attributions: jax.Array, *,
         segments: Any = "slic", baseline: Any = "mean", probabilities: bool = True, batch_size: int = 32,
         return_curve: bool = False) -> Any:
    """Iterative Removal Of Features (Rieger and Hansen 2020), Quantus' ``IROF``.

    Segments are removed one more per step in order of their *mean* attribution; the score after each step,
    over the clean score, traces a curve from about 1 down; IROF is the area over it,
    ``S - trapz(curve)`` with unit steps over the image's ``S`` segments (higher is better).

    Args:
      net, params, images, target, attributions, probabilities, batch_size: as for :func:`pixel_flipping`.
      segments: "slic" (scikit-image's SLIC with ``start_label=0``, Quantus' default), a segment size in px
        (squares, :func:`grid_segments`), or integer labels (N, H, W) or (H, W).
      baseline: as for :func:`pixel_flipping`; default "mean", the image's mean (Quantus' default name).
      return_curve: also return the (N, S_max) curve (steps past an image's own S are 0).

    Returns:
      (N,) IROF, or ``(irof, curve)`` with ``return_curve``.

    Example::

        metrics.irof(net, params, images, 3, attr, segments=16)
    """
    images, fn, idx = _prepare(net, params, images, target, "irof")
    a = _features(attributions, images)
    batch_size = _common.check_batch_size(batch_size)
    labels, counts = segment_labels(segments, images)
    ranks = _segment_ranks(a, labels, counts, "mean", "morf", jax.random.key(0))
    s_max = int(counts.max())
    scores, clean = _progressive(net, params, images, ranks, _baseline(baseline, images),
                                 jnp.arange(1, s_max + 1, dtype=jnp.int32), idx, target_fn=fn, batch_size=batch_size,
                                 insert=False, probabilities=bool(probabilities))
    own = jnp.arange(s_max)[None, :] < jnp.asarray(counts)[:, None]
    curve = jnp.where(own, scores / clean[:, None], 0.0)
    # the trapezoid over each image's own S steps (the zero padding past them is not part of its curve)
    area = jnp.sum(curve, axis=1) - 0.5 * (curve[:, 0] + jnp.take_along_axis(curve, jnp.asarray(counts)[:, None] - 1,
                                                                            axis=1)[:, 0])
    area = jnp.where(jnp.asarray(counts) < 2, 0.0, area)
    out = jnp.asarray(counts, jnp.float32) - area
    return (out, curve) if return_curve else out


# --------------------------------------------------------------------------------------------
# faithfulness correlation


def _pearson(a: jax.Array, b: jax.Array) -> jax.Array:
    a = a - jnp.mean(a, axis=-1, keepdims=True)
    b = b - jnp.mean(b, axis=-1, keepdims=True)
    den = jnp.sqrt(jnp.sum(a * a, -1) * jnp.sum(b * b, -1))
    return jnp.where(den == 0, 0.0, jnp.sum(a * b, -1) / jnp.where(den == 0, 1.0, den))


@functools.partial(jax.jit, static_argnames=("net", "target_fn", "runs", "subset_size", "batch_size",
                                             "probabilities"))
def _fc_core(net, params, images, a, base, key, target_idx, *, target_fn, runs, subset_size, batch_size,
             probabilities):
    _common.count_trace("faithfulness_correlation")
    n = images.shape[0]
    f = _common.forward(net)
    clean = _common.target_scores(f(params, images), target_fn, target_idx, probabilities)
    flat = a.reshape(n, -1)
    size = flat.shape[1]

    def body(k):
        i = k // runs
        pick = jax.vmap(lambda kk: jax.random.choice(_common.item_key(key, kk, runs), size, (subset_size,),
                                                     replace=False))(k)
        chosen = jnp.zeros((k.shape[0], size), bool).at[jnp.arange(k.shape[0])[:, None], pick].set(True)
        chosen = chosen.reshape((k.shape[0],) + a.shape[1:])
        x = jnp.where(chosen, base[i], images[i])
        out = _common.target_scores(f(params, x), target_fn, _common.gather_target(target_idx, i), probabilities)
        return clean[i] - out, jnp.sum(jnp.where(chosen, a[i], 0.0).reshape(k.shape[0], -1), axis=1)

    delta, sums = execution.chunked_map(body, n * runs, batch_size)
    return _pearson(sums.reshape(n, runs), delta.reshape(n, runs))


def faithfulness_correlation(net: Any, params: Any, images: jax.Array, target: Any, attributions: jax.Array, *,
                             subset_size: int = 224, runs: int = 100, baseline: Any = 0.0,
                             probabilities: bool = False, key: Any = None, batch_size: int = 32) -> jax.Array:
    """Faithfulness correlation (Bhatt et al., IJCAI 2020), Quantus' ``FaithfulnessCorrelation``.

    ``runs`` times, a random subset of ``subset_size`` features is set to the baseline; the Pearson
    correlation, over the runs, between the subset's summed attribution and the score's fall
    ``f(x) - f(x_subset)`` (higher is better).

    Args:
      net, params, images, target, attributions, baseline, batch_size: as for :func:`pixel_flipping`.
      subset_size: features per subset (Quantus' default 224; at most the number of features).
      runs: subsets per image (Quantus' default 100).
      probabilities: score the softmax probability; default False, the logit (Quantus' ``softmax=False``).
      key: PRNG key or int seed (None: ``jax.random.key(0)``); subset r of image i is drawn from
        ``fold_in(key, i * runs + r)``, or ``fold_in(key[i], r)`` for one key per image.

    Returns:
      (N,) correlation in [-1, 1].

    Example::

        metrics.faithfulness_correlation(net, params, images, 3, attr, subset_size=256, runs=50, key=0)
    """
    images, fn, idx = _prepare(net, params, images, target, "faithfulness_correlation")
    a = _features(attributions, images)
    runs = _checks.positive_int(runs, "runs")
    if runs < 2:
        raise InputError(f"runs: expected at least 2 (a correlation over the runs), got {runs}")
    subset_size = _checks.positive_int(subset_size, "subset_size")
    total = math.prod(a.shape[1:])
    if subset_size > total:
        raise InputError(f"subset_size: expected at most the number of features ({total}), got {subset_size}")
    batch_size = _common.check_batch_size(batch_size)
    key = _checks.prng_keys(key, images.shape[0])
    return _fc_core(net, params, images, a, _baseline(baseline, images), key, idx, target_fn=fn, runs=runs,
                    subset_size=subset_size, batch_size=batch_size, probabilities=bool(probabilities))
