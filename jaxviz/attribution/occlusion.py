"""Occlusion: slide a window over the image, replace it by a baseline, record the score drop.

Windows of ``window = (wh, ww)`` pixels cover all three channels and move by
``stride = (sh, sw)``. Along a dimension of length L there are
``ceil((L - w) / s) + 1`` windows starting at 0, s, 2s, ...; the last one may
hang over the edge and is clipped there (Captum's ``Occlusion`` does exactly
this). Each pixel's attribution is the mean, over the windows covering it, of
``f(x) - f(x occluded)``.

All occluded images are built and scored inside one jitted function: item k
(image ``k // windows``, window ``k % windows``) is built with ``vmap`` and
scored in chunks of ``batch_size`` images per forward pass.

For jaxviz VGG networks the default (``method="auto"``) is exact incremental
inference (:mod:`._incremental`, Nakandala et al. 2019): each layer is
recomputed only on the region the window changes, about a quarter of the
work at 224 px with a 32 px window, a twentieth at 512 px; same numbers.

Matching Captum: ``Occlusion(f).attribute(x_nchw, sliding_window_shapes=(3, wh,
ww), strides=(3, sh, sw), baselines=b, target=t)`` gives the same numbers
(broadcast over the channel axis). Captum asserts stride <= window; so do we.

Reference: M. D. Zeiler, R. Fergus, "Visualizing and Understanding
Convolutional Networks", ECCV 2014.
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
from . import _common, _incremental

__all__ = ["occlusion", "window_starts", "plan", "auto_groups", "OCCLUSION_METHODS", "AUTO_THRESHOLD", "AUTO_GROUPS",
           "AUTO_GROUPS_SAVED_MACS"]

OCCLUSION_METHODS = ("auto", "full", "incremental")
#: "auto" uses the incremental method when it does less than this fraction of the full convolution work.
AUTO_THRESHOLD = 0.7
#: ``groups=None`` uses this many window groups per dimension when it saves enough work (see :func:`auto_groups`).
AUTO_GROUPS = 4
#: Multiply-adds the groups must save over one group before ``groups=None`` uses them, per JAX backend: each group
#: is one more batched program to compile, which on a CPU costs about as much as 1e11 multiply-adds of work
#: (``python benchmarks/attribution.py``; docs/performance.md).
AUTO_GROUPS_SAVED_MACS = {"cpu": 1e12}
#: ... on other backends (accelerators run the saved work far faster; compilation is no cheaper).
AUTO_GROUPS_SAVED_MACS_OTHER = 1e14


def window_starts(length: int, window: int, stride: int) -> np.ndarray:
    """Start offsets of the windows along one dimension: ``ceil((L - w) / s) + 1`` of them."""
    count = math.ceil((length - window) / stride) + 1
    return np.arange(count, dtype=np.int64) * stride


def _coverage(length: int, window: int, starts: np.ndarray) -> np.ndarray:
    """(windows, L) 0/1 matrix: row j marks the pixels window j covers (clipped at the edge)."""
    pos = np.arange(length)
    return ((pos[None, :] >= starts[:, None]) & (pos[None, :] < starts[:, None] + window)).astype(np.float32)


def combine(diffs: jax.Array, rows: np.ndarray, cols: np.ndarray) -> jax.Array:
    """Per-pixel mean of window differences: diffs (N, nh, nw) -> (N, H, W).

    The window masks are separable (row mask x column mask), so the sum over
    windows and the coverage counts are two small matrix products.
    """
    total = jnp.einsum("ih,nij,jw->nhw", jnp.asarray(rows), diffs, jnp.asarray(cols),
                       precision=jax.lax.Precision.HIGHEST)
    count = np.outer(rows.sum(0), cols.sum(0))
    return total / jnp.asarray(count, diffs.dtype)


@functools.partial(jax.jit, static_argnames=("net", "target_fn", "window", "stride", "batch_size", "incremental",
                                             "approximate", "groups"))
def _core(net, params, images, baseline, target_idx, *, target_fn, window, stride, batch_size, incremental,
          approximate=None, groups=1):
    _common.count_trace("occlusion")
    n, h, w, _ = images.shape
    if n == 0:  # no image to index into: the empty result of the same layout
        return jnp.zeros(images.shape, jnp.float32)
    f = _common.forward(net)
    sh, sw = window_starts(h, window[0], stride[0]), window_starts(w, window[1], stride[1])
    nh, nw = len(sh), len(sw)

    if incremental:
        plan = _incremental.make_plan(net, (h, w), window, sh, sw, approximate, groups)
        state = _incremental.prepare(net, params, images, baseline, plan)
        parts, where = [], []
        for g in plan.groups:
            nr, nc = len(g.rows), len(g.cols)

            def body(k, g=g, per=nr * nc, nc=nc):
                i, r = k // per, k % per
                out = _incremental.occluded_outputs(net, params, state, g, (h, w), i, r // nc, r % nc)
                return _common.scores(out, target_fn, _common.gather_target(target_idx, i))

            parts.append(execution.chunked_map(body, n * nr * nc, batch_size, even=len(plan.groups) > 1))
            ii, rr, cc = np.meshgrid(np.arange(n), np.asarray(g.rows), np.asarray(g.cols), indexing="ij")
            where.append(((ii * nh + rr) * nw + cc).ravel())
        flat = parts[0] if len(parts) == 1 else jnp.concatenate(parts)
        occluded = flat[np.argsort(np.concatenate(where))].reshape(n, nh, nw)
    else:
        starts_h, starts_w = jnp.asarray(sh, jnp.int32), jnp.asarray(sw, jnp.int32)
        rows_i, cols_i = jnp.arange(h), jnp.arange(w)
        per_image = nh * nw

        def occlude(i, j):
            r0, c0 = starts_h[j // nw], starts_w[j % nw]
            mask = (((rows_i >= r0) & (rows_i < r0 + window[0]))[:, None]
                    & ((cols_i >= c0) & (cols_i < c0 + window[1]))[None, :])
            return jnp.where(mask[:, :, None], baseline[i], images[i])

        def body(k):
            i, j = k // per_image, k % per_image
            x = jax.vmap(occlude)(i, j)
            return _common.scores(f(params, x), target_fn, _common.gather_target(target_idx, i))

        occluded = execution.chunked_map(body, n * per_image, batch_size).reshape(n, nh, nw)
    clean = _common.scores(f(params, images), target_fn, target_idx)
    maps = combine(clean[:, None, None] - occluded, _coverage(h, window[0], sh), _coverage(w, window[1], sw))
    return jnp.broadcast_to(maps[..., None], images.shape)


def plan(net: Any, image_size: tuple[int, int], *, window: Any = 16, stride: Any = None,
         approximate: float | None = None, groups: int = 1):
    """The incremental method's patch plan for a jaxviz VGG (``None`` when it does not apply).

    Args:
      net: the model (a plan exists for jaxviz VGG networks only).
      image_size: (H, W) of the images to occlude.
      window, stride, approximate, groups: as for :func:`occlusion`
        (``groups`` an int here: the plan for exactly that many runs).

    Returns:
      None for other models, else a plan whose ``cost`` is the fraction of
      the full network's convolution multiply-adds the incremental method
      does per occluded image (averaged over the windows), ``full_macs`` those
      of the full network on one image, and ``groups`` the batched programs:
      which rows and columns of the window grid each covers (``rows``,
      ``cols``), its ``cost`` and the tap where the model takes over
      (``fallback``).

    Example::

        A.occlusion_plan(models.vgg19(), (224, 224), window=32, stride=16).cost   # about 0.231
    """
    if not _incremental.applies(net):
        return None
    window = _common.pair(window, "window")
    stride = tuple(max(1, v // 2) for v in window) if stride is None else _common.pair(stride, "stride")
    sh = window_starts(image_size[0], window[0], stride[0])
    sw = window_starts(image_size[1], window[1], stride[1])
    return _incremental.make_plan(net, tuple(image_size), window, sh, sw, approximate, groups)


def auto_groups(net: Any, image_size: tuple[int, int], *, window: Any = 16, stride: Any = None,
                images: int = 1, approximate: float | None = None, backend: str | None = None) -> int:
    """What ``groups=None`` picks: :data:`AUTO_GROUPS` when that saves at least
    :data:`AUTO_GROUPS_SAVED_MACS` multiply-adds over ``images`` images on
    ``backend`` (default: JAX's), else 1.

    Pass the total number of images when one compiled call is reused for many
    (the ``jaxviz attribute`` command passes the folder's count).

    Args:
      net, image_size, window, stride, approximate: as for :func:`plan`.
      images: how many images the compiled call will occlude in all.
      backend: "cpu", "gpu", "tpu" (None: ``jax.default_backend()``).

    Returns:
      The ``groups`` value to pass to :func:`occlusion`: 1 or :data:`AUTO_GROUPS`
      (always 1 for models without an incremental plan).
    """
    one = plan(net, tuple(image_size), window=window, stride=stride, approximate=approximate)
    if one is None:
        return 1
    many = plan(net, tuple(image_size), window=window, stride=stride, approximate=approximate, groups=AUTO_GROUPS)
    windows = sum(g.windows for g in one.groups)
    saved = (one.cost - many.cost) * one.full_macs * windows * images
    backend = backend or jax.default_backend()
    return AUTO_GROUPS if saved >= AUTO_GROUPS_SAVED_MACS.get(backend, AUTO_GROUPS_SAVED_MACS_OTHER) else 1


def _check_geometry(images, window, stride):
    window = _common.pair(window, "window")
    stride = tuple(max(1, v // 2) for v in window) if stride is None else _common.pair(stride, "stride")
    _, h, w, _ = images.shape
    for d, (length, win, st) in enumerate(zip((h, w), window, stride)):
        if win > length:
            raise InputError(f"window: expected at most the image size {h}x{w}, got {window[0]}x{window[1]}")
        if st > win and length > win:
            raise InputError(
                f"stride: expected at most the window {window} so every pixel is covered, got {stride}"
            )
    return window, stride


def occlusion(
    net: Any,
    params: Any,
    images: jax.Array,
    target: Any,
    *,
    window: int | tuple[int, int] = 16,
    stride: int | tuple[int, int] | None = None,
    baseline: Any = 0.0,
    batch_size: int = 32,
    method: str = "auto",
    approximate: float | None = None,
    groups: int | None = None,
) -> jax.Array:
    """Occlusion sensitivity (Zeiler & Fergus 2014).

    Args:
      net: a jaxviz model, or any ``f(params, images) -> logits``.
      params: the model's parameters.
      images: (N, H, W, 3) float RGB in [0, 1].
      target: class index, one index per image (N,), or a callable logits (N, K) -> (N,).
      window: occluding window (wh, ww) in pixels (an int for squares), across all channels.
      stride: window step (sh, sw), at most the window; None: half the window
        (rounded down, at least 1).
      baseline: the occluder: a number (0 = black, Captum's default; 0.5 = grey)
        or an image broadcastable to (N, H, W, 3) (e.g. a blurred copy).
      batch_size: occluded images per forward pass; the result does not depend on it.
      method: ``"full"`` recomputes the whole network for every window;
        ``"incremental"`` (jaxviz VGG networks only) recomputes each layer only
        on the region the window changes (exact, see :mod:`._incremental`);
        ``"auto"`` picks incremental for a VGG when its plan does less than
        ``AUTO_THRESHOLD`` of the full convolution work, else full.
      approximate: incremental method only, optional: cap each layer's
        recomputed patch at this fraction (0, 1] of its map's side (Krypton's
        projective-field threshold); values beyond the cap are taken from the
        clean image. Faster, not exact: measure the error against the exact
        map for your model (``benchmarks/attribution.py --approximate``).
      groups: incremental method only: split the window positions along each
        dimension into at most this many runs whose patches are sized
        separately (patches are clipped to their maps, so windows near an edge
        change less than interior ones). More groups do less work but compile
        more batched programs (2 * groups - 1). None: :func:`auto_groups` for
        this call's images. The result does not depend on it.

    Returns:
      (N, H, W, 3) attributions (the same value in the three channels).

    Raises:
      InputError: bad ``images``, ``target``, ``window``, ``stride``, ``baseline``, ``batch_size``,
        ``method``, ``approximate`` or ``groups``.

    Example::

        attr = occlusion(net, params, images, 207, window=32, stride=16, baseline=0.5)
    """
    _common.check_net(net, "occlusion")
    images = _common.check_images(images, net)
    window, stride = _check_geometry(images, window, stride)
    batch_size = _common.check_batch_size(batch_size)
    _checks.one_of(method, "method", OCCLUSION_METHODS)
    base = _common.broadcast_baseline(baseline, images, "baseline")
    fn, idx = _common.prepare_target(target, images.shape[0], net, params, images)
    if approximate is not None:
        if isinstance(approximate, bool) or not isinstance(approximate, (int, float)) or not 0 < approximate <= 1:
            raise InputError(f"approximate: expected a fraction in (0, 1] or None, got {approximate!r}")
        if method == "full":
            raise InputError("approximate: only the incremental method approximates; got method='full'")
        method, approximate = "incremental", float(approximate)
    if groups is not None and (isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups < 1):
        raise InputError(f"groups: expected a positive int or None, got {groups!r}")
    if groups is not None and method == "full":
        raise InputError(f"groups: only the incremental method groups windows; got groups={groups} with method='full'")
    incremental = _use_incremental(net, method, images.shape[1:3], window, stride)
    if not incremental:
        groups = 1
    elif groups is None:
        groups = auto_groups(net, images.shape[1:3], window=window, stride=stride, images=images.shape[0],
                             approximate=approximate)
    return _core(net, params, images, base, idx, target_fn=fn, window=window, stride=stride, batch_size=batch_size,
                 incremental=incremental, approximate=approximate if incremental else None, groups=int(groups))


def _use_incremental(net, method, size, window, stride) -> bool:
    if method == "full":
        return False
    p = plan(net, tuple(size), window=window, stride=stride)
    if method == "incremental":
        if p is None:
            raise InputError(
                f"method: 'incremental' needs a jaxviz VGG network, got {type(net).__name__}; use 'full' or 'auto'"
            )
        return True
    return p is not None and p.cost < AUTO_THRESHOLD
