"""Heatmaps drawn over the images they explain.

Part of :mod:`jaxviz.viz`; import from there.
"""

from __future__ import annotations

import numbers

import numpy as np

from .. import _checks
from ..errors import InputError
from .colour import _non_empty, _one_map, colormap, normalize, reduce_channels


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
