"""A procedural image dataset: coloured shapes on textured backgrounds, with their masks.

Pretrained ImageNet weights are not always at hand (offline machines, CI), and
attributions on a random network are numerically right but say nothing. A
small CNN trained for a few seconds on these pictures gives attribution maps
that a person can check at a glance: the evidence for "triangle" should sit
on the triangle. Each picture holds one shape (circle, square, triangle,
cross) of random size, position, rotation and colour on one of three
textures (noise, a linear gradient, stripes), and comes with the shape's
pixel mask, so tests can measure how much attribution mass falls on the
object.

Everything is NumPy, vectorised over the batch, and deterministic from the
seed: ``shapes(n, seed=s)[:k]`` equals ``shapes(k, seed=s)`` is *not*
promised, but the same arguments always give the same arrays.

Example::

    from jaxviz import datasets
    data = datasets.shapes(256, size=32, seed=0)
    data.images.shape, data.labels.shape, data.masks.shape
    # ((256, 32, 32, 3), (256,), (256, 32, 32))
    datasets.CLASSES[data.labels[0]]
    # 'triangle'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from . import _checks
from .errors import InputError

__all__ = ["CLASSES", "BACKGROUNDS", "Shapes", "shapes"]

#: Shape classes, in label order.
CLASSES = ("circle", "square", "triangle", "cross")
#: Background textures.
BACKGROUNDS = ("noise", "gradient", "stripes")


@dataclass(frozen=True)
class Shapes:
    """A batch of the procedural dataset.

    Indexing with a slice, an index array or a boolean mask gives a
    :class:`Shapes` with those pictures; ``len()`` is the number of pictures.

    Attributes:
      images: (N, H, W, 3) float32 RGB in [0, 1].
      labels: (N,) int32 class indices into ``classes``.
      masks: (N, H, W) bool, True on the shape's pixels.
      classes: the class names.
    """

    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    classes: tuple[str, ...] = CLASSES

    def __getitem__(self, index) -> "Shapes":
        if isinstance(index, (int, np.integer)):
            index = slice(int(index), int(index) + 1 if index != -1 else None)
        return Shapes(self.images[index], self.labels[index], self.masks[index], self.classes)

    def __len__(self) -> int:
        return len(self.labels)


def _shape_masks(u: np.ndarray, v: np.ndarray, r: np.ndarray, kind: np.ndarray) -> np.ndarray:
    """Boolean masks (N, H, W) of each image's shape.

    ``u, v``: (N, H, W) coordinates in the shape's rotated frame, centred on
    it, ``v`` pointing "up"; ``r``: (N, 1, 1) radius; ``kind``: (N,) index
    into :data:`CLASSES`.
    """
    masks = np.empty(u.shape, bool)
    s3 = np.float32(np.sqrt(3.0) / 2)
    for k in range(len(CLASSES)):
        sel = kind == k
        if not sel.any():
            continue
        a, b, rk = u[sel], v[sel], r[sel]
        if k == 0:  # circle
            m = a * a + b * b <= rk * rk
        elif k == 1:  # square, about the circle's area
            m = np.maximum(np.abs(a), np.abs(b)) <= 0.82 * rk
        elif k == 2:  # equilateral triangle, circumradius r: three half-planes r/2 from the centre
            t = 0.5 * rk
            m = (b <= t) & (s3 * a - 0.5 * b <= t) & (-s3 * a - 0.5 * b <= t)
        else:  # cross: two bars
            aa, ab, bar = np.abs(a), np.abs(b), 0.3 * rk
            m = ((aa <= rk) & (ab <= bar)) | ((aa <= bar) & (ab <= rk))
        masks[sel] = m
    return masks


def _backgrounds(rng: np.random.Generator, n: int, size: int, kinds: np.ndarray) -> np.ndarray:
    """(n, size, size, 3) float32 textures; ``kinds`` indexes :data:`BACKGROUNDS`."""
    f32 = np.float32
    lin = np.linspace(-1, 1, size, dtype=f32)
    c0 = rng.uniform(0.0, 1.0, (n, 1, 1, 3)).astype(f32)
    c1 = rng.uniform(0.0, 1.0, (n, 1, 1, 3)).astype(f32)
    angle = rng.uniform(0, np.pi, (n, 1, 1)).astype(f32)
    period = rng.uniform(0.25, 0.6, (n, 1, 1)).astype(f32)
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 1)).astype(f32)
    coarse = rng.standard_normal((n, 8, 8, 3), dtype=f32) * f32(0.12)
    out = np.empty((n, size, size, 3), f32)

    noise = kinds == 0  # blocky value noise around c0
    rows = np.arange(size) * 8 // size
    out[noise] = c0[noise] + coarse[noise][:, rows][:, :, rows]

    ramp = kinds != 0
    proj = np.cos(angle[ramp]) * lin[None, None, :] + np.sin(angle[ramp]) * lin[None, :, None]
    grad_t = (proj + f32(np.sqrt(2))) / f32(2 * np.sqrt(2))  # gradient: c0 -> c1
    wave = f32(0.25) + f32(0.25) * np.tanh(3 * np.sin(f32(2 * np.pi) * proj / period[ramp] + phase[ramp]))
    t = np.where((kinds[ramp] == 1)[:, None, None], grad_t, wave)  # stripes: half the contrast
    out[ramp] = c0[ramp] + (c1[ramp] - c0[ramp]) * t[..., None]
    out += rng.standard_normal(out.shape, dtype=f32) * f32(0.03)  # fine grain on every texture
    return out


def shapes(
    n: int,
    *,
    size: int = 32,
    seed: int = 0,
    classes: Sequence[str] = CLASSES,
    min_radius: float = 0.2,
    max_radius: float = 0.38,
) -> Shapes:
    """Generates ``n`` pictures of one shape each on a textured background.

    Labels are balanced (``i % len(classes)`` shuffled). Each shape has a
    random centre (the whole shape stays inside the picture), radius (a fraction of the side,
    from ``min_radius`` to ``max_radius``), rotation and colour; the colour is
    pushed away from the background's so the shape always stands out, but it
    is random, so the class can only be told by the shape.

    Args:
      n: number of pictures.
      size: side in pixels (square pictures), at least 8.
      seed: the pictures are a deterministic function of all arguments.
      classes: which shapes, a subset of :data:`CLASSES` (label ``i`` is
        ``classes[i]``).
      min_radius, max_radius: shape radius range as a fraction of ``size``.

    Returns:
      :class:`Shapes` with ``images`` (n, size, size, 3) float32 in [0, 1],
      ``labels`` (n,) int32 and ``masks`` (n, size, size) bool.

    Raises:
      InputError: a non-positive ``n``, ``size`` below 8, an unknown class, or
        radii outside 0 < min_radius <= max_radius <= 0.42 (the shape must fit).
    """
    n = _checks.positive_int(n, "n")
    size = _checks.positive_int(size, "size")
    if size < 8:
        raise InputError(f"size: expected at least 8 pixels, got {size}")
    classes = tuple(classes)
    if not classes or len(set(classes)) != len(classes):
        raise InputError(f"classes: expected distinct names from {', '.join(CLASSES)}, got {classes!r}")
    for c in classes:
        if c not in CLASSES:
            raise InputError(f"classes: unknown class {c!r}; expected names from {', '.join(CLASSES)}")
    if not 0 < min_radius <= max_radius <= 0.42:
        raise InputError(
            f"min_radius, max_radius: expected 0 < min_radius <= max_radius <= 0.42, got {min_radius}, {max_radius}"
        )
    rng = np.random.default_rng([seed, n, size])
    labels = rng.permutation(np.arange(n) % len(classes)).astype(np.int32)
    kind = np.array([CLASSES.index(c) for c in classes])[labels]

    f32 = np.float32
    r = (rng.uniform(min_radius, max_radius, n) * size).astype(f32)
    reach = f32(1.17) * r  # farthest any rotated shape reaches from its centre (the square's corner)
    cy = rng.uniform(reach, size - reach).astype(f32)
    cx = rng.uniform(reach, size - reach).astype(f32)
    theta = rng.uniform(-np.pi / 6, np.pi / 6, n).astype(f32)
    pix = np.arange(size, dtype=f32) + f32(0.5)
    dy = pix[None, :, None] - cy[:, None, None]  # (n, H, 1)
    dx = pix[None, None, :] - cx[:, None, None]  # (n, 1, W)
    c, s = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    u = c * dx + s * dy
    v = s * dx - c * dy  # image rows grow downwards; v points "up"
    r3 = r[:, None, None]
    masks = _shape_masks(u, v, r3, kind)

    bg = _backgrounds(rng, n, size, rng.integers(0, len(BACKGROUNDS), n))
    colour = rng.uniform(0.0, 1.0, (n, 3))
    bg_mean = bg.mean(axis=(1, 2))
    # push the colour away from the background: flip channels that sit too close
    close = np.abs(colour - bg_mean) < 0.3
    colour = np.where(close, np.where(bg_mean > 0.5, bg_mean - 0.45, bg_mean + 0.45), colour)
    colour = np.clip(colour, 0.0, 1.0).astype(f32)
    shade = f32(1.0) + f32(0.15) * (u / r3)[..., None]  # a little shading across the shape
    obj = colour[:, None, None, :] * shade + rng.standard_normal(bg.shape, dtype=f32) * f32(0.02)
    images = np.where(masks[..., None], obj, bg)
    images = np.clip(images, 0.0, 1.0, out=images)
    return Shapes(images, labels, masks, classes)
