"""ROAD (Rong et al., ICML 2022) and pytorch-grad-cam's confidence-change metrics, on device.

ROAD removes a share of the pixels a map ranks most (or least) relevant and
fills them by *noisy linear imputation*: every removed pixel becomes the
weighted mean of its 8 neighbours (1/6 for edge neighbours, 1/12 for
diagonal ones; the weights of neighbours outside the image are left out),
which is one sparse linear system over the removed pixels, plus Gaussian
noise. pytorch-grad-cam solves the system on the host with SuperLU
(``scipy.sparse.linalg.spsolve``), one image and one percentile at a time;
here it is solved by conjugate gradients on the image grid (the system is
symmetric positive definite: the weights are symmetric and every removed
region touches a kept pixel), preconditioned by one multigrid V-cycle
(Galerkin coarse grids of 2x2 aggregates), as part of the same jitted,
vmapped program that scores the imputed images.

The two answers agree to float32 round-off amplified by the system's
conditioning: ~1e-6 relative at 32 px, up to ~4e-4 at 224 px with 90% of
the pixels removed (a Laplace problem on a 200-px domain).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .. import _checks, execution
from ..errors import InputError
from . import _common

__all__ = ["Road", "road", "noisy_linear_imputation", "confidence_change", "drop_in_confidence",
           "increase_in_confidence"]

#: Neighbour weights of the imputation (pytorch-grad-cam's / the ROAD authors' ``neighbors_weights``).
NEIGHBOUR_WEIGHTS = np.array([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0.0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]], np.float32)
#: Default percentiles (pytorch-grad-cam's ROAD*Average).
PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)


def _neighbour_sum(z: jax.Array) -> jax.Array:
    """sum_q w_q z[p + q] over the 8 neighbours, zero outside: (..., H, W, C)."""
    h, w = z.shape[-3], z.shape[-2]
    pad = [(0, 0)] * (z.ndim - 3) + [(1, 1), (1, 1), (0, 0)]
    p = jnp.pad(z, pad)
    out = jnp.zeros_like(z)
    for dy in range(3):
        for dx in range(3):
            if NEIGHBOUR_WEIGHTS[dy, dx]:
                out = out + float(NEIGHBOUR_WEIGHTS[dy, dx]) * p[..., dy:dy + h, dx:dx + w, :]
    return out


#: Coarser grids of the multigrid preconditioner (each halves the grid); the fine grid is padded with
#: kept pixels to a multiple of 2**LEVELS so that every grid halves evenly.
LEVELS = 4
#: Damped-Jacobi sweeps before and after each coarse correction, and on the coarsest grid.
SMOOTHING, COARSEST_SWEEPS, JACOBI_DAMPING = 2, 30, 0.8


def _apply(k: jax.Array, z: jax.Array) -> jax.Array:
    """A 3x3 stencil with per-pixel coefficients: ``out[p] = sum_d k[d][p] z[p + d]`` (zero outside).
    k: (9, h, w) (d row-major over the 3x3 offsets), z: (h, w, C)."""
    h, w = z.shape[0], z.shape[1]
    p = jnp.pad(z, ((1, 1), (1, 1), (0, 0)))
    out = k[4][:, :, None] * z
    for d in range(9):
        if d != 4:
            dy, dx = divmod(d, 3)
            out = out + k[d][:, :, None] * p[dy:dy + h, dx:dx + w]
    return out


def _fine_stencil(r: jax.Array, s: jax.Array) -> jax.Array:
    """The imputation's operator on the (padded) grid as a stencil: ``S_p`` on the diagonal and ``-w_d``
    between two removed pixels; identity on kept pixels. r: (h, w) 1.0 where removed; s: summed weights."""
    h, w = r.shape
    rp = jnp.pad(r, 1)
    k = [None] * 9
    for d in range(9):
        dy, dx = divmod(d, 3)
        if d == 4:
            k[d] = s * r + (1.0 - r)
        else:
            k[d] = -float(NEIGHBOUR_WEIGHTS[dy, dx]) * r * rp[dy:dy + h, dx:dx + w]
    return jnp.stack(k)


def _coarsen(k: jax.Array, r: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Galerkin coarse operator ``P^T A P`` for piecewise-constant aggregation of 2x2 blocks, restricted to
    removed pixels (a coarse pixel is removed when any of its four is), as a 3x3 stencil again."""
    h, w = r.shape
    kr = k.at[4].add(-(1.0 - r))  # the kept pixels' identity is not part of the aggregated operator
    kc = [0.0] * 9
    for py in range(2):
        for px in range(2):
            for d in range(9):
                dy, dx = divmod(d, 3)
                cy, cx = (py + dy - 1) // 2 + 1, (px + dx - 1) // 2 + 1
                kc[cy * 3 + cx] = kc[cy * 3 + cx] + kr[d, py::2, px::2]
    rc = jnp.max(r.reshape(h // 2, 2, w // 2, 2), axis=(1, 3))
    kc[4] = kc[4] + (1.0 - rc)
    return jnp.stack(kc), rc


def _jacobi(k: jax.Array, b: jax.Array, x: jax.Array, sweeps: int) -> jax.Array:
    # a loop, not unrolled sweeps: XLA would fuse unrolled stencils and recompute each one's neighbours
    diag = k[4][:, :, None]
    return jax.lax.fori_loop(0, sweeps, lambda _, v: v + JACOBI_DAMPING * (b - _apply(k, v)) / diag, x)


def _vcycle(levels: list, b: jax.Array, level: int = 0) -> jax.Array:
    """One symmetric V-cycle (damped Jacobi smoothing): an SPD approximation of the operator's inverse."""
    k, r = levels[level]
    if level == len(levels) - 1:
        return _jacobi(k, b, jnp.zeros_like(b), COARSEST_SWEEPS)
    x = _jacobi(k, b, jnp.zeros_like(b), SMOOTHING)
    res = (b - _apply(k, x)) * r[..., None]
    h, w, c = res.shape
    coarse = _vcycle(levels, res.reshape(h // 2, 2, w // 2, 2, c).sum((1, 3)), level + 1)
    up = jnp.broadcast_to(coarse[:, None, :, None, :], (h // 2, 2, w // 2, 2, c)).reshape(h, w, c)
    return _jacobi(k, b, x + up * r[..., None], SMOOTHING)


def _solve(image: jax.Array, removed: jax.Array, tol: float, max_iter: int) -> jax.Array:
    """The linear imputation of one (H, W, C) image: removed (H, W) bool -> the filled image.

    For each removed pixel p: ``S_p x_p - sum_{q removed} w_q x_q = sum_{q kept} w_q v_q`` (``S_p`` the summed
    weights of p's neighbours inside the image), solved by conjugate gradients preconditioned with one
    multigrid V-cycle (~20-30 iterations at 224 px where plain CG takes ~350), with the kept pixels pinned
    by an identity block so the operator is SPD on the whole grid.
    """
    h, w, _ = image.shape
    r = removed.astype(image.dtype)
    s = _neighbour_sum(jnp.ones((h, w, 1), image.dtype))[..., 0]
    b = r[..., None] * _neighbour_sum((1.0 - r[..., None]) * image)
    # pad with kept pixels (no couplings, zero right-hand side) to a size that halves LEVELS times
    m = 2 ** LEVELS
    ph, pw = (-h) % m, (-w) % m
    r_p, s_p = jnp.pad(r, ((0, ph), (0, pw))), jnp.pad(s, ((0, ph), (0, pw)))
    b = jnp.pad(b, ((0, ph), (0, pw), (0, 0)))
    k = _fine_stencil(r_p, s_p)
    levels = [(k, r_p)]
    while len(levels) <= LEVELS and min(levels[-1][1].shape) >= 16:
        levels.append(_coarsen(*levels[-1]))
    bb = jnp.vdot(b, b)

    def cond(state):
        _, res, _, _, _, it = state
        return (jnp.vdot(res, res) > (tol * tol) * bb) & (it < max_iter)

    def body(state):
        x, res, z, p, rz, it = state
        ap = _apply(k, p)
        alpha = rz / jnp.vdot(p, ap)
        x = x + alpha * p
        res = res - alpha * ap
        z = _vcycle(levels, res)
        rz_new = jnp.vdot(res, z)
        return x, res, z, z + (rz_new / rz) * p, rz_new, it + 1

    z0 = _vcycle(levels, b)
    start = (jnp.zeros_like(b), b, z0, z0, jnp.vdot(b, z0), jnp.int32(0))
    x = jax.lax.while_loop(cond, body, start)[0]  # nothing removed: b = 0 and the loop does not run
    return jnp.where(r[..., None] > 0, x[:h, :w], image)


def noisy_linear_imputation(images: jax.Array, removed: jax.Array, *, noise: float = 0.01,
                            key: jax.Array | None = None, tol: float = 1e-6, max_iter: int = 10_000) -> jax.Array:
    """Fills the removed pixels of images by noisy linear imputation (ROAD's ``NoisyLinearImputer``).

    Args:
      images: (N, H, W, C) float images.
      removed: (N, H, W) or (H, W) bool, True where a pixel is to be filled.
      noise: standard deviation of the Gaussian noise added to the filled pixels (0: the plain solution).
      key: PRNG key or int seed for the noise (None: ``jax.random.key(0)``); image i uses ``fold_in(key, i)``.
      tol: conjugate-gradient stopping rule, residual norm relative to the right-hand side's.
      max_iter: conjugate-gradient iteration cap.

    Returns:
      (N, H, W, C) images, kept pixels unchanged.

    Example::

        filled = metrics.noisy_linear_imputation(images, heat > 0.8, noise=0.0)
    """
    images = jnp.asarray(images)
    if images.ndim != 4 or not _checks.is_floating(images.dtype):
        raise InputError(f"images: expected float (N, H, W, C) images, got {images.dtype}{tuple(images.shape)}")
    removed = jnp.asarray(removed)
    if removed.shape == images.shape[1:3]:
        removed = jnp.broadcast_to(removed, images.shape[:3])
    if removed.shape != images.shape[:3]:
        raise InputError(f"removed: expected shape {tuple(images.shape[:3])} or {tuple(images.shape[1:3])}, "
                         f"got {tuple(removed.shape)}")
    _checks.positive_number(tol, "tol")
    max_iter = _checks.positive_int(max_iter, "max_iter")
    _check_noise(noise)
    key = _checks.prng_key(key)
    return _impute(images.astype(jnp.float32), removed.astype(bool), jnp.float32(noise), key, float(tol), max_iter)


def _fill(images, removed, noise, key, items, tol, max_iter):
    """Noisy linear imputation of a stack of images; item ``items[m]``'s noise from ``fold_in(key, items[m])``."""
    filled = jax.vmap(lambda x, r: _solve(x, r, tol, max_iter))(images, removed)
    eps = _common.normal_noise(key, items, images.shape[1:], 1)
    return jnp.where(removed[..., None], filled + noise * eps, images)


@functools.partial(jax.jit, static_argnames=("tol", "max_iter"))
def _impute(images, removed, noise, key, tol, max_iter):
    return _fill(images, removed, noise, key, jnp.arange(images.shape[0]), tol, max_iter)


def _check_noise(noise: Any) -> None:
    if float(noise) < 0:
        raise InputError(f"noise: expected a standard deviation >= 0, got {noise!r}")


# --------------------------------------------------------------------------------------------
# ROAD


class Road(NamedTuple):
    """The result of :func:`road`.

    Attributes:
      percentiles: (P,) the percentiles p: each step removes the pixels whose map value is at or above
        (MoRF) / at or below (LeRF) the map's p-th / (100 - p)-th percentile, i.e. about (100 - p)% of them.
      morf: (N, P) score after imputation minus score before, most relevant removed first (more negative is
        better): pytorch-grad-cam's ``ROADMostRelevantFirst(p)``.
      lerf: (N, P) the same, least relevant removed first (closer to 0 is better).
      combined: (N,) ``(mean(lerf) - mean(morf)) / 2`` over the percentiles (higher is better):
        pytorch-grad-cam's ``ROADCombined``; ``morf.mean(1)`` and ``lerf.mean(1)`` are its
        ``ROADMostRelevantFirstAverage`` and ``ROADLeastRelevantFirstAverage``.
    """

    percentiles: np.ndarray
    morf: jax.Array
    lerf: jax.Array
    combined: jax.Array


@functools.partial(jax.jit, static_argnames=("net", "target_fn", "batch_size", "probabilities", "tol", "max_iter"))
def _road_core(net, params, images, maps, percentiles, noise, key, target_idx, *, target_fn, batch_size,
               probabilities, tol, max_iter):
    _common.count_trace("road")
    n = images.shape[0]
    p = percentiles.shape[0]
    f = _common.forward(net)
    before = _common.target_scores(f(params, images), target_fn, target_idx, probabilities)
    flat = maps.reshape(n, -1)
    # pytorch-grad-cam: keep = map < percentile(map, p); LeRF runs the same on 1 - map
    thr_m = jnp.percentile(flat, percentiles, axis=1).T  # (n, p)
    thr_l = jnp.percentile(1.0 - flat, percentiles, axis=1).T

    def body(k):  # item k = (image i, order o, percentile j)
        i, o, j = k // (2 * p), (k // p) % 2, k % p
        m = jnp.where(o[:, None, None] == 0, maps[i], 1.0 - maps[i])
        thr = jnp.where(o == 0, thr_m[i, j], thr_l[i, j])
        x = _fill(images[i], m >= thr[:, None, None], noise, key, k, tol, max_iter)
        return _common.target_scores(f(params, x), target_fn, _common.gather_target(target_idx, i), probabilities)

    after = execution.chunked_map(body, n * 2 * p, batch_size, even=True).reshape(n, 2, p)
    diff = after - before[:, None, None]
    morf, lerf = diff[:, 0], diff[:, 1]
    return morf, lerf, (jnp.mean(lerf, axis=1) - jnp.mean(morf, axis=1)) / 2


def road(net: Any, params: Any, images: jax.Array, target: Any, maps: jax.Array, *,
         percentiles: Sequence[float] = PERCENTILES, noise: float = 0.01, key: jax.Array | None = None,
         probabilities: bool = True, batch_size: int = 8, tol: float = 1e-6, max_iter: int = 10_000) -> Road:
    """ROAD: RemOve And Debias (Rong et al. 2022), pytorch-grad-cam's ``ROADCombined`` and its parts.

    For each percentile p and each order, the pixels ranked most (MoRF) or least (LeRF) relevant by the map
    are removed and filled by :func:`noisy_linear_imputation`, and the target's score is compared with the
    clean image's. All ``N * 2 * P`` imputations and forward passes run in one jitted program,
    ``batch_size`` at a time.

    Args:
      net: a jaxviz model, or any ``f(params, images) -> logits``.
      params: the model's parameters.
      images: (N, H, W, 3) float RGB in [0, 1].
      target: class index, one index per image (N,), or a callable on the (softmaxed, with
        ``probabilities``) outputs (N, K) -> (N,).
      maps: (N, H, W) maps at the image's size (an upsampled CAM), or (N, H, W, C) summed over C.
        pytorch-grad-cam's thresholds assume maps in [0, 1] for LeRF (it ranks ``1 - map``); any scale ranks
        the same.
      percentiles: the p's (pytorch-grad-cam's default 10, 20, ..., 90).
      noise: standard deviation of the imputation noise (pytorch-grad-cam: 0.01).
      key: PRNG key or int seed for the noise (None: ``jax.random.key(0)``); item ``(i * 2 + o) * P + j``
        (image i, order o = 0 MoRF / 1 LeRF, percentile j) uses ``fold_in(key, item)``.
      probabilities: score the softmax probability (pytorch-grad-cam's ``ClassifierOutputSoftmaxTarget``,
        as its ROAD tutorial does) rather than the logit (``ClassifierOutputTarget``).
      batch_size: imputed images per forward pass (results do not depend on it); the chunks are evened out
        (18 items at 8 run as 3 of 6: one compiled program).
      tol, max_iter: the conjugate-gradient solve (see :func:`noisy_linear_imputation`).

    Returns:
      :class:`Road`.

    Example::

        heat = attribution.grad_cam(net, params, images, 207, upsample=True)
        metrics.road(net, params, images, 207, heat).combined
    """
    _common.check_net(net, "road")
    images = _common.check_images(images, net)
    n, h, w, _ = images.shape
    maps = _common.pixel_map(maps, n, h, w)
    pct = np.asarray(percentiles, np.float64).ravel()
    if pct.size == 0 or not np.all((pct > 0) & (pct < 100)):
        raise InputError(f"percentiles: expected one or more values in (0, 100), got {percentiles!r}")
    _check_noise(noise)
    batch_size = _common.check_batch_size(batch_size)
    _checks.positive_number(tol, "tol")
    max_iter = _checks.positive_int(max_iter, "max_iter")
    key = _checks.prng_key(key)
    fn, idx = _common.prepare_target(target, n, net, params, images)
    morf, lerf, combined = _road_core(net, params, images, maps, jnp.asarray(pct, jnp.float32), jnp.float32(noise),
                                      key, idx, target_fn=fn, batch_size=batch_size,
                                      probabilities=bool(probabilities), tol=float(tol), max_iter=max_iter)
    return Road(pct, morf, lerf, combined)


# --------------------------------------------------------------------------------------------
# confidence change when the image is weighted by the map


@functools.partial(jax.jit, static_argnames=("net", "target_fn", "batch_size", "probabilities"))
def _confidence_core(net, params, images, maps, baseline, target_idx, *, target_fn, batch_size, probabilities):
    _common.count_trace("confidence_change")
    f = _common.forward(net)
    before = _common.target_scores(f(params, images), target_fn, target_idx, probabilities)

    def body(i):
        x = baseline[i] + (images[i] - baseline[i]) * maps[i][..., None]
        return _common.target_scores(f(params, x), target_fn, _common.gather_target(target_idx, i), probabilities)

    return execution.chunked_map(body, images.shape[0], batch_size) - before


def confidence_change(net: Any, params: Any, images: jax.Array, target: Any, maps: jax.Array, *,
                      baseline: Any = 0.0, probabilities: bool = True, batch_size: int = 32) -> jax.Array:
    """Score of the image weighted by its map minus the score of the image (pytorch-grad-cam's
    ``CamMultImageConfidenceChange``).

    The weighted image is ``baseline + (image - baseline) * map``: with the default baseline 0 the image is
    multiplied by the map. pytorch-grad-cam multiplies the *normalised* tensor, i.e. weights the image
    towards the normalisation mean: pass ``baseline=models.vgg.IMAGENET_MEAN`` to do the same for a
    torchvision-normalised model.

    Args:
      net, params, images, target: as for :func:`road`.
      maps: (N, H, W) maps in [0, 1] at the image's size (``normalize=True, upsample=True`` CAMs).
      baseline: a number or an image broadcastable to the input.
      probabilities: score the softmax probability rather than the logit.
      batch_size: images per forward pass.

    Returns:
      (N,) score change (negative: the map lost evidence).

    Example::

        metrics.confidence_change(net, params, images, 207, heat)
    """
    _common.check_net(net, "confidence_change")
    images = _common.check_images(images, net)
    n, h, w, _ = images.shape
    maps = _common.pixel_map(maps, n, h, w)
    base = _common.broadcast_baseline(baseline, images, "baseline")
    batch_size = _common.check_batch_size(batch_size)
    fn, idx = _common.prepare_target(target, n, net, params, images)
    return _confidence_core(net, params, images, maps, base, idx, target_fn=fn, batch_size=batch_size,
                            probabilities=bool(probabilities))


def drop_in_confidence(net: Any, params: Any, images: jax.Array, target: Any, maps: jax.Array, **options) -> jax.Array:
    """``max(0, -confidence_change)`` per image (pytorch-grad-cam's ``DropInConfidence``; lower is better).

    Options as for :func:`confidence_change`.

    Example::

        metrics.drop_in_confidence(net, params, images, 207, heat).mean()
    """
    return jnp.maximum(-confidence_change(net, params, images, target, maps, **options), 0.0)


def increase_in_confidence(net: Any, params: Any, images: jax.Array, target: Any, maps: jax.Array,
                           **options) -> jax.Array:
    """1.0 where the map-weighted image scores higher than the image, else 0.0 (pytorch-grad-cam's
    ``IncreaseInConfidence``; its mean over a dataset is the share of increases, higher is better).

    Options as for :func:`confidence_change`.

    Example::

        metrics.increase_in_confidence(net, params, images, 207, heat).mean()
    """
    return (confidence_change(net, params, images, target, maps, **options) > 0).astype(jnp.float32)
