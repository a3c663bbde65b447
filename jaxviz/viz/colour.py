"""Values to colours: channel reductions, robust scaling, colormaps, heatmaps and colour bars.

Part of :mod:`jaxviz.viz`; import from there.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from ..errors import InputError


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
      >>> from jaxviz import viz
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


_LINE = 12  # pixels per extra line of a colour bar's title
COLORBAR_HEIGHT = 24  #: rows :func:`colorbar` adds under a picture


def colorbar(width: int, lo: float, hi: float, *, cmap: str = "jet", title: str = "") -> np.ndarray:
    """A colour scale as a strip to put under a picture: the colormap from ``lo`` (left) to ``hi`` (right),
    the two values written under its ends and ``title`` between them.

    Args:
      width: the strip's width in pixels (at least 16).
      lo, hi: the values the colormap's ends stand for (see :func:`value_range`).
      cmap: colormap name (see :func:`colormap`).
      title: what the values are, e.g. ``"|gradient|"``: between the two
        values when it fits there, else on lines of its own under them
        (wrapped to the width), never cut.

    Returns:
      (:data:`COLORBAR_HEIGHT` + 12 per extra line, width, 3) float RGB in
      [0, 1], white around the bar.

    Example:
      >>> from jaxviz import viz
      >>> strip = viz.colorbar(224, 0.0, 0.37, title="score drop")
      >>> strip.shape == (viz.COLORBAR_HEIGHT, 224, 3)
      True
    """
    from PIL import Image, ImageDraw

    if isinstance(width, bool) or not isinstance(width, numbers.Integral) or width < 16:
        raise InputError(f"width: expected an int >= 16, got {width!r}")
    for name, v in (("lo", lo), ("hi", hi)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise InputError(f"{name}: expected a finite number, got {v!r}")
    import textwrap

    left, right = f"{lo:.3g}", f"{hi:.3g}"
    room = (width - 6 * (len(left) + len(right)) - 16) // 6  # characters that fit between the two values
    per_line = max(1, (width - 4) // 6)  # characters that fit on a line of their own
    lines = [] if not title or len(title) <= room else textwrap.wrap(title, per_line, break_long_words=True)
    strip = np.ones((COLORBAR_HEIGHT + _LINE * len(lines), width, 3), np.float32)
    strip[2:10, 2:width - 2] = colormap(np.linspace(0, 1, width - 4), cmap)[None]
    im = Image.fromarray(np.round(strip * 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    draw.text((2, 11), left, fill=(0, 0, 0))
    draw.text((width - 2 - 6 * len(right), 11), right, fill=(0, 0, 0))
    if title and not lines:  # beside the values
        draw.text(((width - 6 * len(title)) // 2, 11), title, fill=(0, 0, 0))
    for k, text in enumerate(lines):  # too long to sit between the values: on lines of its own, wrapped
        draw.text(((width - 6 * len(text)) // 2, COLORBAR_HEIGHT - 2 + _LINE * k), text, fill=(0, 0, 0))
    return np.asarray(im, np.float32) / 255.0


def with_colorbar(picture, lo: float, hi: float, *, cmap: str = "jet", title: str = "") -> np.ndarray:
    """``picture`` with :func:`colorbar` under it: (H, W, 3) -> (H + :data:`COLORBAR_HEIGHT`, W, 3).

    Args:
      picture: (H, W, 3) float RGB in [0, 1], at least 16 px wide.
      lo, hi, cmap, title: as in :func:`colorbar`.

    Returns:
      The picture and its colour scale, float RGB in [0, 1].

    Example:
      >>> from jaxviz import viz
      >>> img = np.full((32, 96, 3), 0.5, np.float32)
      >>> heat = np.outer(np.arange(32.0), np.ones(96))       # a map (H, W), e.g. |gradient|
      >>> lo, hi = viz.value_range(heat, percentile=100)
      >>> (lo, hi)
      (0.0, 31.0)
      >>> viz.with_colorbar(viz.overlay(img, heat), lo, hi, title="|gradient|").shape
      (56, 96, 3)
    """
    p = np.asarray(picture, np.float32)
    if p.ndim != 3 or p.shape[-1] != 3:
        raise InputError(f"picture: expected shape (H, W, 3), got {p.shape}")
    return np.concatenate([p, colorbar(p.shape[1], lo, hi, cmap=cmap, title=title)], axis=0)
