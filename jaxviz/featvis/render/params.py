"""Parameterisations: how optimised variables become an image (pixels or a 1/f-scaled spectrum, decorrelated colour).

Part of :mod:`jaxviz.featvis.render`; import from there.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


# ImageNet's colour-covariance square root (lucid), columns normalised by the largest norm.
_COLOR_CORRELATION_SVD_SQRT = np.array(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], np.float32
)
_COLOR_MATRIX = _COLOR_CORRELATION_SVD_SQRT / np.max(np.linalg.norm(_COLOR_CORRELATION_SVD_SQRT, axis=0))


def _rfft2d_freqs(h: int, w: int) -> np.ndarray:
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    return np.sqrt(fx * fx + fy * fy)


@dataclasses.dataclass(frozen=True)
class ImageParam:
    """How optimised variables become an image (hashable, so it is a static jit argument).

    Use the factories :func:`pixel` and :func:`fourier`.
    """

    kind: str = "fourier"
    sd: float = 0.01
    decay_power: float = 1.0
    decorrelate: bool = True

    def shape(self, batch: int, hw: tuple[int, int]) -> tuple[int, ...]:
        """Shape of the variables for ``batch`` images of size ``hw``."""
        h, w = hw
        return (batch, h, w, 3) if self.kind == "pixel" else (batch, 3, h, w // 2 + 1, 2)

    def init(self, key: jax.Array, batch: int, hw: tuple[int, int]) -> jax.Array:
        """Initial variables: N(0, sd²) for ``batch`` images of size ``hw``, a function of ``key``.

        The normal draws come from NumPy's PCG64 seeded with the key's data (on
        the host, so no random-number program has to be compiled), which makes
        them a deterministic function of the key. A traced key (inside
        ``jit``/``vmap``) gets the same numbers through ``jax.pure_callback``.
        """
        data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
        shape = self.shape(batch, hw)

        def draw(d):
            rng = np.random.default_rng(np.asarray(d, np.uint32).ravel())
            return (np.float32(self.sd) * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)

        if isinstance(data, jax.core.Tracer):
            return jax.pure_callback(draw, jax.ShapeDtypeStruct(shape, jnp.float32), data, vmap_method="sequential")
        return jnp.asarray(draw(data))

    def image(self, p: jax.Array, hw: tuple[int, int]) -> jax.Array:
        """Variables -> (batch, h, w, 3) RGB in (0, 1)."""
        h, w = hw
        if self.kind == "pixel":
            t = p
        else:
            freqs = _rfft2d_freqs(h, w)
            scale = (1.0 / np.maximum(freqs, 1.0 / max(h, w)) ** self.decay_power) * np.sqrt(h * w)
            spectrum = lax.complex(p[..., 0], p[..., 1]) * jnp.asarray(scale, jnp.float32)
            t = jnp.fft.irfft2(spectrum, s=(h, w)).transpose(0, 2, 3, 1) / 4.0
        if self.decorrelate:
            t = t @ jnp.asarray(_COLOR_MATRIX.T)
        return jax.nn.sigmoid(t)


def pixel(*, sd: float = 0.01, decorrelate: bool = True) -> ImageParam:
    """Optimise pixels directly (through a sigmoid; optionally in decorrelated colour).

    Args:
      sd: standard deviation of the random initial values.
      decorrelate: optimise in ImageNet's decorrelated colour space (lucid's
        ``color_correlation_svd_sqrt``) rather than plain RGB.

    Returns:
      An :class:`ImageParam` for :func:`render`'s ``param``.
    """
    return ImageParam("pixel", float(sd), 1.0, bool(decorrelate))


def fourier(*, sd: float = 0.01, decay_power: float = 1.0, decorrelate: bool = True) -> ImageParam:
    """Optimise a Fourier spectrum scaled by 1/frequency^decay_power (lucid's ``fft_image``).

    Args:
      sd: standard deviation of the random initial spectrum.
      decay_power: how fast the scale falls with frequency (1: natural images'
        1/f amplitude; higher gives smoother pictures).
      decorrelate: as for :func:`pixel`.

    Returns:
      An :class:`ImageParam` for :func:`render`'s ``param``.
    """
    return ImageParam("fourier", float(sd), float(decay_power), bool(decorrelate))
