"""Pictures at the edge: colormaps, heatmap overlays and grids as float RGB arrays.

Library functions return arrays; these turn them into images a person would
rather look at than read. Everything here takes and returns NumPy arrays,
float RGB in [0, 1] with the channel last; save them with
:func:`jaxviz.image.save`.

Example:
    >>> from jaxviz import viz, image
    >>> pic = viz.overlay(img[0], attr[0])           # attribution (H, W, 3) over the image
    >>> image.save(pic, "saliency.png")
"""

from __future__ import annotations

import math
import numbers
from typing import Sequence

import numpy as np

from . import _checks
from .errors import InputError

__all__ = [
    "reduce_channels",
    "normalize",
    "colormap",
    "heatmap",
    "overlay",
    "grid",
    "channel_grid",
    "upsample_nearest",
    "label",
    "value_range",
    "colorbar",
    "with_colorbar",
]

_REDUCTIONS = ("abs_sum", "sum", "max_abs", "l2")


def reduce_channels(attr, how: str = "abs_sum") -> np.ndarray:
    """Reduces an attribution's channel axis: (..., H, W, C) -> (..., H, W).

    Args:
      attr: attribution with the input's shape.
      how: ``"abs_sum"`` (sum of |a|), ``"sum"`` (signed), ``"max_abs"`` (max |a|,
        Simonyan et al.'s saliency), ``"l2"`` (Euclidean norm).
    """
    a = np.asarray(attr, np.float32)
    if a.ndim < 3:
        raise InputError(f"attr: expected (..., H, W, C) with a channel axis, got shape {a.shape} "
                         "(a map without channels needs no reduction)")
    if how == "abs_sum":
        return np.abs(a).sum(-1)
    if how == "sum":
        return a.sum(-1)
    if how == "max_abs":
        return np.abs(a).max(-1)
    if how == "l2":
        return np.sqrt((a * a).sum(-1))
    raise InputError(f"how: expected one of {', '.join(map(repr, _REDUCTIONS))}; got {how!r}")


def normalize(values, *, signed: bool = False, percentile: float = 99.5) -> np.ndarray:
    """Scales a map to [0, 1] (or [-1, 1] when ``signed``), clipping at a percentile.

    Unsigned: (v - min) / (p - min) with p the ``percentile`` of v, clipped to
    [0, 1]. Signed: v / percentile(|v|), clipped to [-1, 1], so 0 stays 0.
    A constant map becomes all zeros.

    The scale comes from the finite values only: +inf and -inf clip to the
    ends of the range and NaN stays NaN (:func:`colormap` draws it grey), so a
    few bad pixels do not blank the whole map.
    """
    v = np.asarray(values, np.float32)
    lo, hi = value_range(v, signed=signed, percentile=percentile)
    with np.errstate(invalid="ignore"):
        if signed:
            if hi > 0:
                return np.clip(v / hi, -1, 1)
            return np.where(np.isnan(v), np.nan, np.sign(v)).astype(np.float32)
        if hi > lo:
            return np.clip((v - lo) / (hi - lo), 0, 1)
        return np.where(np.isnan(v), np.nan, v == np.inf).astype(np.float32)


def value_range(values, *, signed: bool = False, percentile: float = 99.5) -> tuple[float, float]:
    """The values :func:`normalize` maps to the ends of its range: what a colour bar under the picture reads.

    Args:
      values: the map.
      signed: as in :func:`normalize`.
      percentile: as in :func:`normalize`.

    Returns:
      ``(lo, hi)``: unsigned, lo is the smallest finite value and hi the
      ``percentile`` (the largest finite value where that is not above lo);
      signed, ``(-s, s)`` with s the ``percentile`` of |values|. Both 0.0
      for a map without finite values.

    Example:
      >>> viz.value_range(np.arange(101.0), percentile=90)
      (0.0, 90.0)
    """
    v = np.asarray(values, np.float32)
    if isinstance(percentile, bool) or not isinstance(percentile, numbers.Real) or not 0 < percentile <= 100:
        raise InputError(f"percentile: expected a value in (0, 100], got {percentile!r}")
    finite = v[np.isfinite(v)]
    if not finite.size:
        return 0.0, 0.0
    if signed:
        scale = float(np.percentile(np.abs(finite), percentile))
        return -scale, scale
    lo, hi = float(finite.min()), float(np.percentile(finite, percentile))
    if hi <= lo:
        hi = float(finite.max())
    return lo, hi


def colormap(values, cmap: str = "inferno") -> np.ndarray:
    """Maps values in [0, 1] through a Matplotlib colormap: (...) -> (..., 3) float RGB; NaN is mid grey."""
    from matplotlib import colormaps

    try:
        cm = colormaps[cmap]
    except KeyError:
        raise InputError(f"cmap: unknown colormap {cmap!r} (try 'inferno', 'viridis', 'jet', 'RdBu_r')") from None
    v = np.asarray(values, np.float32)
    rgb = np.asarray(cm(np.clip(v, 0, 1)))[..., :3].astype(np.float32)  # () -> (3,) too
    return np.where(np.isnan(v)[..., None], np.float32(0.5), rgb)


def heatmap(attr, *, cmap: str | None = None, signed: bool = False, percentile: float = 99.5,
            how: str = "abs_sum") -> np.ndarray:
    """An attribution map as a colour picture.

    Args:
      attr: (H, W) map, or (H, W, C) attribution reduced with ``how``; a
        leading batch axis of 1 is dropped, so ``grad_cam``'s (1, h, w) for
        one image is an (h, w) map.
      cmap: colormap (default ``"inferno"``, or ``"RdBu_r"`` when ``signed``).
      signed: keep the sign (blue negative, red positive).
      percentile: clipping percentile (see :func:`normalize`).

    Returns:
      (H, W, 3) float RGB in [0, 1].
    """
    a = _one_map(np.asarray(attr, np.float32))
    if a.ndim == 3:
        a = reduce_channels(a, "sum" if signed else how)
    if a.ndim != 2:
        raise InputError(f"attr: expected shape (H, W) or (H, W, C), got {a.shape}")
    _non_empty(a, "attr")
    v = normalize(a, signed=signed, percentile=percentile)
    if signed:
        v = (v + 1) / 2
    return colormap(v, cmap or ("RdBu_r" if signed else "inferno"))


def _one_map(a: np.ndarray) -> np.ndarray:
    """Drops a leading batch axis of 1: (1, h, w) and (1, h, w, C) are one image's map (a map 1 px tall is not)."""
    return a[0] if a.ndim in (3, 4) and a.shape[0] == 1 else a


def _non_empty(a: np.ndarray, name: str) -> None:
    if 0 in a.shape[:2]:
        raise InputError(f"{name}: expected a map of at least 1 x 1 pixels, got shape {a.shape}")


def upsample_nearest(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an (h, w, ...) array to ``shape`` (H, W).

    Raises:
      InputError: ``a`` has fewer than 2 axes or no pixels, or ``shape`` is
        not two positive ints.
    """
    a = np.asarray(a)
    if a.ndim < 2:
        raise InputError(f"a: expected an (h, w, ...) array, got shape {a.shape}")
    _non_empty(a, "a")
    if (isinstance(shape, (str, bytes)) or np.ndim(shape) != 1 or len(shape) != 2
            or not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n > 0 for n in shape)):
        raise InputError(f"shape: expected (height, width) as two positive ints, got {shape!r}")
    rows = (np.arange(shape[0]) * a.shape[0] // shape[0]).clip(0, a.shape[0] - 1)
    cols = (np.arange(shape[1]) * a.shape[1] // shape[1]).clip(0, a.shape[1] - 1)
    return a[rows][:, cols]


def overlay(img, attr, *, alpha: float = 0.5, cmap: str = "jet", percentile: float = 99.5,
            how: str = "abs_sum") -> np.ndarray:
    """A heatmap blended over the image it explains (the classic Grad-CAM picture).

    Args:
      img: (H, W, 3) float RGB in [0, 1] (a leading batch axis of 1 is dropped).
      attr: (h, w) or (h, w, C) map, resized to (H, W) if smaller; a leading
        batch axis of 1 is dropped (``grad_cam``'s (1, h, w) for one image).
      alpha: heatmap opacity; the colour is weighted by the map's value too, so
        unimportant regions show the image.
      cmap: colormap name (see :func:`colormap`; jet is the heatmap people know).
      percentile: the map is scaled so this percentile of its values is 1
        (see :func:`normalize`); a few extreme pixels then do not wash it out.
      how: how a (h, w, C) map becomes (h, w) (see :func:`reduce_channels`).

    Returns:
      (H, W, 3) float RGB in [0, 1].

    Raises:
      InputError: ``img`` not (H, W, 3) RGB in [0, 1], ``alpha`` outside [0, 1],
        or an unknown ``cmap`` or ``how``.
    """
    img = np.asarray(img, np.float32)
    if img.ndim == 4 and img.shape[0] == 1:
        img = img[0]
    if img.ndim != 3 or img.shape[-1] != 3:
        raise InputError(f"img: expected shape (H, W, 3), got {img.shape}")
    _checks.images(img[None], "img", unit_range=True)
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 <= alpha <= 1:
        raise InputError(f"alpha: expected a number in [0, 1], got {alpha!r}")
    a = _one_map(np.asarray(attr, np.float32))
    if a.ndim == 3 and a.shape[0] == 3 and a.shape[1:] == img.shape[:2] and a.shape[:2] != img.shape[:2]:
        raise InputError(f"attr: expected (H, W, C) or (H, W), got {a.shape}, which looks channels-first "
                         "(move the channel axis last)")
    if a.ndim == 3:
        a = reduce_channels(a, how)
    if a.ndim != 2:
        raise InputError(f"attr: expected (H, W, C) or (H, W) for one image, got shape {np.shape(attr)}")
    _non_empty(a, "attr")
    if a.shape != img.shape[:2]:
        a = upsample_nearest(a, img.shape[:2])
    v = normalize(a, percentile=percentile)
    colour = colormap(v, cmap)
    w = alpha * np.nan_to_num(v)[..., None]  # a NaN pixel of the map shows the image
    return np.clip((1 - w) * img + w * colour, 0, 1)


def grid(images: Sequence[np.ndarray] | np.ndarray, *, ncols: int | None = None, pad: int = 2,
         pad_value: float = 1.0) -> np.ndarray:
    """Tiles images (N, H, W, 3) or (N, H, W) into one picture, row by row.

    Args:
      images: a sequence of (H, W, 3) or (H, W) tiles, or one stacked array.
        Greyscale tiles are repeated to RGB; tiles of different sizes are
        placed top-left in cells of the largest size.
      ncols: tiles per row (default ceil(sqrt(N))).
      pad: pixels between tiles and around the edge.
      pad_value: the padding's grey level.

    Returns:
      (rows * h + (rows + 1) * pad, ncols * w + (ncols + 1) * pad, 3) float32.

    Raises:
      InputError: no tiles, a tile that is not (H, W, 3) or (H, W), or a
        ``pad`` that is not a non-negative int.
    """
    try:
        shape = np.shape(images)
    except ValueError:  # tiles of different shapes: fine, each is checked below
        shape = None
    if shape is not None and len(shape) == 3 and shape[-1] == 3:
        raise InputError(f"images: expected a sequence of tiles or an (N, H, W, 3) array, got one picture of shape "
                         f"{shape} (wrap it in a list)")
    if ncols is not None:
        ncols = _checks.positive_int(ncols, "ncols")
    pad = _checks.non_negative_pixels(pad, "pad")
    tiles = [np.asarray(t, np.float32) for t in images]
    if not tiles:
        raise InputError("images: expected at least one image, got none")
    tiles = [np.repeat(t[..., None], 3, -1) if t.ndim == 2 else t for t in tiles]
    for t in tiles:
        if t.ndim != 3 or t.shape[-1] != 3:
            raise InputError(f"images: expected tiles of shape (H, W, 3) or (H, W), got {t.shape}")
    n = len(tiles)
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    th = max(t.shape[0] for t in tiles)
    tw = max(t.shape[1] for t in tiles)
    out = np.full((nrows * th + (nrows + 1) * pad, ncols * tw + (ncols + 1) * pad, 3), pad_value, np.float32)
    for i, t in enumerate(tiles):
        r, c = divmod(i, ncols)
        y, x = pad + r * (th + pad), pad + c * (tw + pad)
        out[y : y + t.shape[0], x : x + t.shape[1]] = t
    return out


def channel_grid(maps, *, order: str = "mean", limit: int | None = 64, cmap: str = "viridis",
                 ncols: int | None = None, pad: int = 2) -> np.ndarray:
    """Feature maps (H, W, C) as a grid of per-channel pictures, each scaled to its own range.

    Args:
      maps: one image's activations at a tap, (H, W, C) (a batch axis of 1 is dropped).
      order: ``"mean"`` (strongest mean activation first) or ``"index"`` (as given).
      limit: show at most this many channels (None for all).
      cmap: colormap for the tiles (see :func:`colormap`).
      ncols, pad: as for :func:`grid`.

    Returns:
      The grid picture, float32 RGB in [0, 1] (see :func:`grid`).

    Raises:
      InputError: ``maps`` not (H, W, C), or an unknown ``order``.
    """
    m = np.asarray(maps, np.float32)
    if m.ndim == 4 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 3:
        raise InputError(f"maps: expected shape (H, W, C), got {m.shape}")
    if order == "mean":
        idx = np.argsort(-m.mean((0, 1)), kind="stable")
    elif order == "index":
        idx = np.arange(m.shape[-1])
    else:
        raise InputError(f"order: expected 'mean' or 'index', got {order!r}")
    if limit is not None:
        idx = idx[:limit]
    tiles = []
    for c in idx:
        ch = m[..., c]
        lo, hi = ch.min(), ch.max()
        tiles.append(colormap((ch - lo) / (hi - lo) if hi > lo else np.zeros_like(ch), cmap))
    return grid(tiles, ncols=ncols, pad=pad)


def label(tile, text: str) -> np.ndarray:
    """``text`` in white on a dark box in the tile's top-left corner (PIL's default font, 6 px a character).

    Text wider than the tile is cut to fit and ends in "..".

    Args:
      tile: (H, W, 3) float RGB in [0, 1].
      text: the label.

    Returns:
      A labelled copy, (H, W, 3) float32.
    """
    from PIL import Image, ImageDraw

    t = np.asarray(tile, np.float32)
    if t.ndim != 3 or t.shape[-1] != 3:
        raise InputError(f"tile: expected shape (H, W, 3), got {t.shape}")
    im = Image.fromarray(np.round(np.clip(t, 0, 1) * 255).astype(np.uint8))
    fits = max(1, (im.width - 4) // 6)
    text = str(text)
    text = text if len(text) <= fits else text[: max(1, fits - 2)] + ".."
    draw = ImageDraw.Draw(im)
    draw.rectangle((0, 0, 6 * len(text) + 4, 12), fill=(0, 0, 0))
    draw.text((2, 0), text, fill=(255, 255, 255))
    return np.asarray(im, np.float32) / 255.0


COLORBAR_HEIGHT = 24  #: rows :func:`colorbar` adds under a picture


def colorbar(width: int, lo: float, hi: float, *, cmap: str = "jet", title: str = "") -> np.ndarray:
    """A colour scale as a strip to put under a picture: the colormap from ``lo`` (left) to ``hi`` (right),
    the two values written under its ends and ``title`` between them.

    Args:
      width: the strip's width in pixels (at least 16).
      lo, hi: the values the colormap's ends stand for (see :func:`value_range`).
      cmap: colormap name (see :func:`colormap`).
      title: what the values are, e.g. ``"|gradient|"``; cut to fit.

    Returns:
      (:data:`COLORBAR_HEIGHT`, width, 3) float RGB in [0, 1], white around the bar.

    Example:
      >>> strip = viz.colorbar(224, 0.0, 0.37, title="score drop")
    """
    from PIL import Image, ImageDraw

    if isinstance(width, bool) or not isinstance(width, numbers.Integral) or width < 16:
        raise InputError(f"width: expected an int >= 16, got {width!r}")
    for name, v in (("lo", lo), ("hi", hi)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise InputError(f"{name}: expected a finite number, got {v!r}")
    strip = np.ones((COLORBAR_HEIGHT, width, 3), np.float32)
    strip[2:10, 2:width - 2] = colormap(np.linspace(0, 1, width - 4), cmap)[None]
    im = Image.fromarray(np.round(strip * 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    left, right = f"{lo:.3g}", f"{hi:.3g}"
    draw.text((2, 11), left, fill=(0, 0, 0))
    draw.text((width - 2 - 6 * len(right), 11), right, fill=(0, 0, 0))
    room = (width - 6 * (len(left) + len(right)) - 16) // 6  # characters that fit between the two values
    if title and room >= 3:
        text = title if len(title) <= room else title[: room - 2] + ".."
        draw.text(((width - 6 * len(text)) // 2, 11), text, fill=(0, 0, 0))
    return np.asarray(im, np.float32) / 255.0


def with_colorbar(picture, lo: float, hi: float, *, cmap: str = "jet", title: str = "") -> np.ndarray:
    """``picture`` with :func:`colorbar` under it: (H, W, 3) -> (H + :data:`COLORBAR_HEIGHT`, W, 3).

    Args:
      picture: (H, W, 3) float RGB in [0, 1], at least 16 px wide.
      lo, hi, cmap, title: as in :func:`colorbar`.

    Returns:
      The picture and its colour scale, float RGB in [0, 1].

    Example:
      >>> lo, hi = viz.value_range(heat, percentile=99.5)
      >>> pic = viz.with_colorbar(viz.overlay(img, heat), lo, hi, title="|gradient|")
    """
    p = np.asarray(picture, np.float32)
    if p.ndim != 3 or p.shape[-1] != 3:
        raise InputError(f"picture: expected shape (H, W, 3), got {p.shape}")
    return np.concatenate([p, colorbar(p.shape[1], lo, hi, cmap=cmap, title=title)], axis=0)
