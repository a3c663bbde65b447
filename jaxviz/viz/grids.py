"""Grids of tiles, with labels: the layout of every multi-picture figure.

Part of :mod:`jaxviz.viz`; import from there.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .. import _checks
from ..errors import InputError
from .colour import colormap


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


def _text_box(picture, text: str, name: str, place, fill) -> np.ndarray:
    """``text`` in white on a ``fill`` box (PIL's default font, 6 px a character; text wider than the picture cut
    to fit, ending in ".."); ``place(width, height, box_width)`` gives the box and the text's origin."""
    from PIL import Image, ImageDraw

    p = np.asarray(picture, np.float32)
    if p.ndim != 3 or p.shape[-1] != 3:
        raise InputError(f"{name}: expected shape (H, W, 3), got {p.shape}")
    im = Image.fromarray(np.round(np.clip(p, 0, 1) * 255).astype(np.uint8))
    fits = max(1, (im.width - 4) // 6)
    text = str(text)
    text = text if len(text) <= fits else text[: max(1, fits - 2)] + ".."
    box, origin = place(im.width, im.height, 6 * len(text) + 4)
    draw = ImageDraw.Draw(im)
    draw.rectangle(box, fill=fill)
    draw.text(origin, text, fill=(255, 255, 255))
    return np.asarray(im, np.float32) / 255.0


def label(tile, text: str) -> np.ndarray:
    """``text`` in white on a dark box in the tile's top-left corner (PIL's default font, 6 px a character).

    Text wider than the tile is cut to fit and ends in "..".

    Args:
      tile: (H, W, 3) float RGB in [0, 1].
      text: the label.

    Returns:
      A labelled copy, (H, W, 3) float32.
    """
    return _text_box(tile, text, "tile", lambda w, h, bw: ((0, 0, bw, 12), (2, 0)), (0, 0, 0))


def corner_mark(picture, text: str = "random weights") -> np.ndarray:
    """``text`` in white on a red box in the picture's bottom-right corner: a picture made with random weights
    says so on itself, since a PNG copied into a slide leaves the terminal behind.

    Returns:
      A marked copy, (H, W, 3) float32 (text wider than the picture is cut, as :func:`label` cuts it).
    """
    return _text_box(picture, text, "picture", lambda w, h, bw: ((w - bw, h - 13, w, h), (w - bw + 2, h - 12)),
                     (190, 20, 20))


def titled(picture, text: str, *, size: int = 14) -> np.ndarray:
    """``picture`` under a white band with ``text`` in it (wrapped to the picture's width, never cut): what a
    picture shows belongs in the picture, not only on the terminal.

    Returns:
      (H + band, W, 3) float RGB in [0, 1].
    """
    from PIL import Image, ImageDraw, ImageFont

    p = np.asarray(picture, np.float32)
    if p.ndim != 3 or p.shape[-1] != 3:
        raise InputError(f"picture: expected shape (H, W, 3), got {p.shape}")
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width = p.shape[1]
    lines: list[str] = []
    for word in str(text).split():
        trial = f"{lines[-1]} {word}" if lines else word
        if lines and measure.textlength(trial, font=font) <= width - 8:
            lines[-1] = trial
        else:
            while measure.textlength(word, font=font) > width - 8 and len(word) > 1:  # a word wider than the picture
                cut = max(1, int(len(word) * (width - 8) / measure.textlength(word, font=font)))
                lines.append(word[:cut])
                word = word[cut:]
            lines.append(word)
    step = size + 4
    band = Image.new("RGB", (width, 6 + step * max(1, len(lines))), "white")
    draw = ImageDraw.Draw(band)
    for k, line in enumerate(lines):
        draw.text((4, 4 + step * k), line, fill="black", font=font)
    return np.concatenate([np.asarray(band, np.float32) / 255.0, p], axis=0)
