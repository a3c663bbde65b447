"""Metrics of the map itself, or of the map against a ground truth or another class's map, as Quantus
defines them: sparseness (Gini), complexity (entropy), pointing game, relevance mass accuracy, random logit.

Maps are (N, H, W) or (N, H, W, C) (channels count as features for sparseness and complexity and are summed
for the localisation metrics, which compare with an (N, H, W) mask).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from .. import _checks
from ..errors import InputError
from . import _common

__all__ = ["sparseness", "complexity", "pointing_game", "relevance_mass", "random_logit", "ssim", "box_masks"]

#: Quantus' Sparseness adds this to every |attribution| (its guard against an all-zero map).
GINI_EPS = 1e-7


def _maps(attributions: Any, name: str = "attributions") -> jax.Array:
    a = jnp.asarray(attributions, jnp.float32)
    if a.ndim not in (3, 4):
        raise InputError(f"{name}: expected maps of shape (N, H, W) or (N, H, W, C), got {tuple(a.shape)}")
    return a


@jax.jit
def _gini(a):
    n = a.shape[0]
    flat = jnp.sort(jnp.abs(a.reshape(n, -1)) + GINI_EPS, axis=1)
    m = flat.shape[1]
    i = jnp.arange(1, m + 1, dtype=jnp.float32)
    return jnp.sum((2 * i - m - 1) * flat, axis=1) / (m * jnp.sum(flat, axis=1))


def sparseness(attributions: Any) -> jax.Array:
    """Gini index of the absolute attributions (Chalasani et al., ICML 2020), Quantus' ``Sparseness``.

    ``sum_i (2i - F - 1) a_(i) / (F sum_i a_(i))`` over the F sorted values ``a_(i) = |a| + 1e-7`` (Quantus'
    guard, kept so the numbers agree); 0 for a flat map, towards 1 for a map concentrated on one value.

    Args:
      attributions: (N, H, W) or (N, H, W, C) maps.

    Returns:
      (N,) Gini index (higher is sparser).

    Example::

        metrics.sparseness(attribution.saliency(net, params, images, 3))
    """
    return _gini(_maps(attributions))


@jax.jit
def _entropy(a):
    n = a.shape[0]
    p = jnp.abs(a.reshape(n, -1))
    total = jnp.sum(p, axis=1, keepdims=True)
    p = p / jnp.where(total == 0, 1.0, total)
    return -jnp.sum(p * jnp.log(p + 1e-12), axis=1)


def complexity(attributions: Any) -> jax.Array:
    """Entropy of the absolute attributions' share of their total (Bhatt et al., IJCAI 2020), Quantus'
    ``Complexity``: ``-sum_i p_i log(p_i + 1e-12)``, ``p = |a| / sum |a|`` (natural log).

    Args:
      attributions: (N, H, W) or (N, H, W, C) maps.

    Returns:
      (N,) entropy (lower is simpler; ``log F`` for a flat map of F values, 0 for an all-zero map).

    Example::

        metrics.complexity(attribution.saliency(net, params, images, 3))
    """
    return _entropy(_maps(attributions))


def box_masks(boxes: Any, shape: tuple[int, ...]) -> np.ndarray:
    """Boxes (N, 4) as ``(top, left, bottom, right)`` pixel edges (bottom and right exclusive), or one box
    (4,) for all, -> (N, H, W) bool masks, for ``shape`` (N, H, W, ...).

    Example::

        masks = metrics.box_masks([[8, 8, 24, 24]], images.shape)
    """
    n, h, w = shape[0], shape[1], shape[2]
    b = np.asarray(boxes)
    if b.shape == (4,):
        b = np.broadcast_to(b, (n, 4))
    if b.shape != (n, 4) or not np.issubdtype(b.dtype, np.integer):
        raise InputError(f"boxes: expected integer boxes (top, left, bottom, right) of shape ({n}, 4) or (4,), got "
                         f"{b.dtype}{tuple(b.shape)}")
    yy, xx = np.mgrid[:h, :w]
    return np.stack([(yy >= t) & (yy < bo) & (xx >= le) & (xx < r) for t, le, bo, r in b])


def _mask(attributions: jax.Array, masks: Any, boxes: Any) -> tuple[jax.Array, jax.Array]:
    a = _maps(attributions)
    if a.ndim == 4:
        a = jnp.sum(a, axis=-1)
    if (masks is None) == (boxes is None):
        raise InputError("masks, boxes: expected exactly one of them (a ground-truth mask per image, or a box)")
    if boxes is not None:
        m = box_masks(boxes, a.shape)
    else:
        m = np.asarray(masks)
        if m.ndim == 4 and m.shape[-1] == 1:
            m = m[..., 0]
        if m.shape == a.shape[1:]:
            m = np.broadcast_to(m, a.shape)
        if m.shape != a.shape:
            raise InputError(f"masks: expected shape {tuple(a.shape)} or {tuple(a.shape[1:])}, got {tuple(m.shape)}")
    return a, jnp.asarray(m.astype(bool))


@functools.partial(jax.jit, static_argnames=("weighted", "tolerance"))
def _pointing(a, m, *, weighted, tolerance):
    n = a.shape[0]
    top = a == jnp.max(a.reshape(n, -1), axis=1)[:, None, None]
    if tolerance:  # Zhang et al.: a hit within `tolerance` px of the mask
        r = tolerance
        yy, xx = jnp.mgrid[-r:r + 1, -r:r + 1]
        disc = ((yy * yy + xx * xx) <= r * r).astype(jnp.float32)[:, :, None, None]
        m = jax.lax.conv_general_dilated(m[..., None].astype(jnp.float32), disc, (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))[..., 0] > 0
    hit = jnp.any(top & m, axis=(1, 2)).astype(jnp.float32)
    if weighted:
        hit = jnp.where(hit > 0, 1.0 - jnp.sum(m, axis=(1, 2)) / m[0].size, 0.0)
    return jnp.where(jnp.any(m, axis=(1, 2)), hit, jnp.nan)


def pointing_game(attributions: Any, *, masks: Any = None, boxes: Any = None, weighted: bool = False,
                  tolerance: int = 0) -> jax.Array:
    """Pointing game (Zhang et al., IJCV 2018), Quantus' ``PointingGame``: 1.0 where the map's maximum
    (any of them, when tied) falls in the ground truth, else 0.0.

    Args:
      attributions: (N, H, W) maps or (N, H, W, C), summed over C.
      masks: (N, H, W) or (H, W) ground-truth masks; or
      boxes: (N, 4) or (4,) ``(top, left, bottom, right)`` boxes (:func:`box_masks`).
      weighted: a hit scores ``1 - mask area / image area`` (Quantus' ``weighted``), rewarding small targets.
      tolerance: count a maximum within this many px of the mask as a hit (Zhang et al. use 15 px;
        Quantus 0).

    Returns:
      (N,) hits (NaN for an empty mask, as Quantus). The mean is the game's accuracy.

    Example::

        metrics.pointing_game(heat, boxes=[[8, 8, 24, 24]] * len(heat)).mean()
    """
    a, m = _mask(attributions, masks, boxes)
    tol = _checks.non_negative_pixels(tolerance, "tolerance")
    return _pointing(a, m, weighted=bool(weighted), tolerance=tol)


@jax.jit
def _mass(a, m):
    inside = jnp.sum(jnp.where(m, a, 0.0), axis=(1, 2))
    return jnp.where(jnp.any(m, axis=(1, 2)), inside / jnp.sum(a, axis=(1, 2)), jnp.nan)


def relevance_mass(attributions: Any, *, masks: Any = None, boxes: Any = None) -> jax.Array:
    """Relevance mass accuracy (Arras et al., Information Fusion 2022), Quantus' ``RelevanceMassAccuracy``:
    the share of the map's total that lies inside the ground truth.

    The map is taken as it is (Quantus' ``abs=False``); Arras et al. score positive relevance, so pass
    ``jnp.maximum(map, 0)`` to follow them. CAMs are non-negative already.

    Args:
      attributions, masks, boxes: as for :func:`pointing_game`.

    Returns:
      (N,) mass inside / total (NaN for an empty mask).

    Example::

        metrics.relevance_mass(heat, masks=objects)
    """
    return _mass(*_mask(attributions, masks, boxes))


# --------------------------------------------------------------------------------------------
# random logit


@functools.partial(jax.jit, static_argnames=("win_size",))
def _ssim_1d(a, b, *, win_size=7):
    """scikit-image's ``structural_similarity`` of two flat vectors (Quantus' ``ssim``), batched: (N, F)."""
    data_range = jnp.abs(jnp.maximum(a.max(1), b.max(1)) - jnp.minimum(a.min(1), b.min(1)))
    k = jnp.ones((win_size,), a.dtype) / win_size

    def box(v):  # the windows that lie wholly inside (scikit-image crops the rest before its mean)
        return jax.vmap(lambda r: jnp.convolve(r, k, mode="valid"))(v)

    ux, uy = box(a), box(b)
    uxx, uyy, uxy = box(a * a), box(b * b), box(a * b)
    cov = win_size / (win_size - 1)
    vx, vy, vxy = cov * (uxx - ux * ux), cov * (uyy - uy * uy), cov * (uxy - ux * uy)
    c1, c2 = ((0.01 * data_range) ** 2)[:, None], ((0.03 * data_range) ** 2)[:, None]
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return jnp.mean(s, axis=1)


def ssim(a: Any, b: Any, *, win_size: int = 7) -> jax.Array:
    """Structural similarity of each pair of flattened maps: scikit-image's ``structural_similarity`` on
    1-D signals (uniform window of ``win_size``, K1 0.01, K2 0.03, sample covariance, data range = the
    pair's max - min), as Quantus' ``ssim`` computes it: (N, ...) x (N, ...) -> (N,).

    Example::

        metrics.ssim(map_a, map_b)
    """
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    if a.shape != b.shape or a.ndim < 2:
        raise InputError(f"a, b: expected two batches of maps of one shape (N, ...), got {a.shape} and {b.shape}")
    win = _checks.positive_int(win_size, "win_size")
    n = a.shape[0]
    if a[0].size < win:
        raise InputError(f"win_size: expected at most the map's size {a[0].size}, got {win}")
    return _ssim_1d(a.reshape(n, -1), b.reshape(n, -1), win_size=win)


def random_logit(net: Any, params: Any, images: Any, target: Any, *, method: str | Callable = "saliency",
                 options: Mapping[str, Any] | None = None, other: Any = None, key: Any = None,
                 similarity: str | Callable = "ssim") -> jax.Array:
    """Random logit (Sixt et al., ICML 2020), Quantus' ``RandomLogit``: the similarity of the map for the
    target class to the map for another class drawn at random. A method that explains the class gives
    dissimilar maps (lower is better).

    Args:
      net, params, images: as for the method.
      target: class index or one per image (the other class is drawn from the rest).
      method: a name from ``attribution.METHODS`` or a callable with the method signature.
      options: keyword options for the method.
      other: the other classes (N,) to use; None: drawn uniformly from the K - 1 classes that are not the
        target, image i with ``fold_in(key, i)``.
      key: PRNG key or int seed (None: ``jax.random.key(0)``).
      similarity: "ssim" (Quantus' default, :func:`ssim`), "spearman", "pearson", or a callable
        ``(maps_a, maps_b) -> (N,)``.

    Returns:
      (N,) similarity.

    Example::

        metrics.random_logit(net, params, images, 3, method="grad_cam", options={"upsample": True})
    """
    from .metrics import spearman

    images = _common.check_images(images, net)
    fn = _common.resolve_method(method)
    options = _common.check_options(fn, options)
    n = images.shape[0]
    _, idx = _common.prepare_target(target, n, net, params, images)
    if idx is None:
        raise InputError("target: random_logit needs class indices (the other class is drawn from the rest), "
                         "got a callable")
    k = _common.output_shape(net, params, images)[1]
    if k < 2:
        raise InputError(f"net: random_logit needs at least 2 classes, the model has {k}")
    if other is None:
        key = _checks.prng_key(key)
        draw = jax.vmap(lambda i: jax.random.randint(jax.random.fold_in(key, i), (), 0, k - 1))(jnp.arange(n))
        other = jnp.where(draw >= idx, draw + 1, draw)  # skip the target
    else:
        _, other = _common.prepare_target(other, n, net, params, images)
        if bool(jnp.any(other == idx)):
            raise InputError("other: expected classes other than the target, got the target for some image")
    a = fn(net, params, images, idx, **options)
    b = fn(net, params, images, other, **options)
    if callable(similarity):
        return jnp.asarray(similarity(a, b))
    _checks.one_of(similarity, "similarity", ("ssim", "spearman", "pearson"))
    if similarity == "ssim":
        return ssim(a, b)
    if similarity == "spearman":
        return jnp.asarray(spearman(np.asarray(a).reshape(n, -1), np.asarray(b).reshape(n, -1)))
    from ._faithfulness import _pearson

    return _pearson(jnp.asarray(a).reshape(n, -1), jnp.asarray(b).reshape(n, -1))
