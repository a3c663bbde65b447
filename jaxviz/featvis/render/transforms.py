"""Random, differentiable image transforms for transformation robustness (each draws from its own PRNG key).

Part of :mod:`jaxviz.featvis.render`; import from there.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ... import _checks
from ...errors import InputError

class _Transform:
    """Base of the random transforms: ``t(key, x)`` draws two uniforms from ``key`` and calls ``t.apply(u, x)``."""

    def __call__(self, key, x):
        return self.apply(jax.random.uniform(key, (2,)), x)

    def apply(self, u, x):  # pragma: no cover - overridden
        raise NotImplementedError


def _number_tuple(values, name: str, positive: bool = False) -> tuple[float, ...]:
    """A non-empty tuple of finite numbers (a single number is one choice)."""
    if isinstance(values, (int, float, np.number)) and not isinstance(values, bool):
        values = (values,)
    try:
        out = tuple(float(v) for v in values if not isinstance(v, bool))
        ok = len(out) == len(tuple(values)) > 0 and all(np.isfinite(out)) and (not positive or min(out) > 0)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InputError(f"{name}: expected a non-empty sequence of {'positive ' if positive else ''}numbers, "
                         f"got {values!r}")
    return out


def _pick(values, u):
    """values[floor(u * len)]: a uniform choice from a static tuple given u in [0, 1)."""
    table = jnp.asarray(values, jnp.float32)
    return table[jnp.clip(jnp.floor(u * len(values)).astype(jnp.int32), 0, len(values) - 1)]


@dataclasses.dataclass(frozen=True)
class Pad(_Transform):
    """Pads ``width`` pixels of constant ``value`` on every side (deterministic)."""

    width: int
    value: float = 0.5

    def __post_init__(self):
        _checks.non_negative_pixels(self.width, "Pad: width")

    def apply(self, u, x):
        w = self.width
        return jnp.pad(x, ((0, 0), (w, w), (w, w), (0, 0)), constant_values=self.value)


@dataclasses.dataclass(frozen=True)
class Jitter(_Transform):
    """Random crop losing ``d`` pixels in height and width (a random shift of 0..d pixels per axis)."""

    d: int

    def __post_init__(self):
        _checks.non_negative_pixels(self.d, "Jitter: d")

    def apply(self, u, x):
        if self.d == 0:
            return x
        n, h, w, c = x.shape
        off = jnp.clip(jnp.floor(u * (self.d + 1)).astype(jnp.int32), 0, self.d)
        return lax.dynamic_slice(x, (0, off[0], off[1], 0), (n, h - self.d, w - self.d, c))


def _affine(x, scale, angle):
    """Zoom by ``scale`` and rotate by ``angle`` (radians) about the centre; same size, bilinear,
    edge pixels repeated outside the image."""
    n, h, w, c = x.shape
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    yy = jnp.arange(h, dtype=jnp.float32)[:, None] - cy
    xx = jnp.arange(w, dtype=jnp.float32)[None, :] - cx
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    sy = jnp.clip((cos * yy - sin * xx) / scale + cy, 0.0, h - 1.0)
    sx = jnp.clip((sin * yy + cos * xx) / scale + cx, 0.0, w - 1.0)
    y0, x0 = jnp.floor(sy), jnp.floor(sx)
    wy, wx = (sy - y0)[..., None], (sx - x0)[..., None]
    y0, x0 = y0.astype(jnp.int32), x0.astype(jnp.int32)
    y1, x1 = jnp.minimum(y0 + 1, h - 1), jnp.minimum(x0 + 1, w - 1)
    flat = x.reshape(n, h * w, c)
    at = lambda yi, xi: jnp.take(flat, (yi * w + xi).reshape(-1), axis=1, mode="clip").reshape(
        n, h, w, c
    )
    top = (1 - wx) * at(y0, x0) + wx * at(y0, x1)
    bottom = (1 - wx) * at(y1, x0) + wx * at(y1, x1)
    return (1 - wy) * top + wy * bottom


@dataclasses.dataclass(frozen=True)
class RandomScale(_Transform):
    """Zooms about the centre by a factor chosen uniformly from ``scales`` (same output size)."""

    scales: tuple[float, ...]

    def __post_init__(self):
        object.__setattr__(self, "scales", _number_tuple(self.scales, "RandomScale: scales", positive=True))

    def sample(self, u) -> tuple[jax.Array, jax.Array]:
        """(scale, angle in radians) for uniforms ``u``."""
        return _pick(self.scales, u[0]), jnp.float32(0.0)

    def apply(self, u, x):
        return _affine(x, *self.sample(u))


@dataclasses.dataclass(frozen=True)
class RandomRotate(_Transform):
    """Rotates about the centre by an angle (degrees) chosen uniformly from ``angles``."""

    angles: tuple[float, ...]

    def __post_init__(self):
        object.__setattr__(self, "angles", _number_tuple(self.angles, "RandomRotate: angles"))

    def sample(self, u) -> tuple[jax.Array, jax.Array]:
        """(scale, angle in radians) for uniforms ``u``."""
        return jnp.float32(1.0), _pick(self.angles, u[0]) * (math.pi / 180.0)

    def apply(self, u, x):
        return _affine(x, *self.sample(u))


@dataclasses.dataclass(frozen=True)
class Compose(_Transform):
    """Applies transforms in order, all randomness drawn from one key.

    ``Compose(ts)(key, x)`` draws a (len(ts), 2) block of uniforms from
    ``key`` in one go; transform ``i`` gets row ``i``. Consecutive
    :class:`RandomScale` / :class:`RandomRotate` steps (zooms and rotations
    about the same centre commute and compose into one similarity transform)
    are resampled once, with their scales multiplied and angles added: one
    bilinear interpolation instead of several, and a smaller program to
    compile.
    """

    transforms: tuple = ()

    def __post_init__(self):
        flat = []
        for t in self.transforms:
            flat.extend(t.transforms if isinstance(t, Compose) else (t,))
        for t in flat:
            if not callable(t):
                raise InputError(f"transforms: expected callables t(key, x), got {t!r}")
        object.__setattr__(self, "transforms", tuple(flat))

    def __call__(self, key, x):
        if not self.transforms:
            return x
        return self._run(jax.random.uniform(key, (len(self.transforms), 2)), key, x)

    def apply(self, u, x):
        return self._run(jnp.reshape(u, (len(self.transforms), 2)), None, x)

    def _run(self, u, key, x):
        pending = None  # (scale, angle) of consecutive affine steps not yet applied
        for i, t in enumerate(self.transforms):
            if isinstance(t, (RandomScale, RandomRotate)):
                s, a = t.sample(u[i])
                pending = (s, a) if pending is None else (pending[0] * s, pending[1] + a)
                continue
            if pending is not None:
                x, pending = _affine(x, *pending), None
            if isinstance(t, _Transform):
                x = t.apply(u[i], x)
            elif key is None:
                raise InputError(f"transforms: {t!r} is not a jaxviz transform and needs a key")
            else:
                x = t(jax.random.fold_in(key, i), x)  # a user's transform t(key, x)
        return x if pending is None else _affine(x, *pending)


def standard_transforms(scale: float = 1.0) -> Compose:
    """lucid's standard transforms: pad 12, jitter 8, scale 0.9..1.1, rotate -10..10 degrees, jitter 4.

    Args:
      scale: multiplies the pixel amounts (pad and jitter), for images much
        smaller or larger than lucid's 128 px.
    """
    px = lambda v: max(0, int(round(v * scale)))
    return Compose(
        (
            Pad(px(12)),
            Jitter(px(8)),
            RandomScale(tuple(1 + (i - 5) / 50.0 for i in range(11))),
            RandomRotate(tuple(float(a) for a in list(range(-10, 11)) + 5 * [0])),
            Jitter(px(4)),
        )
    )
