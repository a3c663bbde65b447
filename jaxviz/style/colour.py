"""Colour for style transfer: luminance, colour preservation (Gatys et al. 2016).

Part of :mod:`jaxviz.style`; import from there.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


_YIQ = np.array([[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]], np.float32)


def luminance(x: Any) -> jax.Array:
    """Luma Y = 0.299 R + 0.587 G + 0.114 B of (..., 3) RGB, shape (..., 1)."""
    return jnp.asarray(x, jnp.float32) @ jnp.asarray(_YIQ[0])[:, None]


def original_colors(content: Any, stylized: Any) -> jax.Array:
    """The stylised images' luminance with the content images' colours (YIQ chroma).

    Args:
      content: (N, H, W, 3) in [0, 1] (resized to ``stylized``'s size if needed).
      stylized: (N, H, W, 3) in [0, 1].

    Returns:
      (N, H, W, 3) float32 in [0, 1].
    """
    stylized = jnp.asarray(stylized, jnp.float32)
    content = _resize(jnp.asarray(content, jnp.float32), stylized.shape[1:3])
    yiq = jnp.asarray(_YIQ)
    y = stylized @ yiq[0]
    iq = content @ yiq[1:].T
    out = jnp.concatenate([y[..., None], iq], axis=-1) @ jnp.linalg.inv(yiq).T
    return jnp.clip(out, 0.0, 1.0)


def _luminance_only(content: jax.Array, styles: list[jax.Array]) -> tuple[jax.Array, list[jax.Array]]:
    """Grey content, and grey styles whose luminance mean/std match the content's (Gatys et al. 2016)."""
    yc = luminance(content)
    mu, sd = jnp.mean(yc), jnp.std(yc)
    grey = []
    for s in styles:
        ys = luminance(s)
        ys = (ys - jnp.mean(ys)) * (sd / jnp.maximum(jnp.std(ys), 1e-6)) + mu
        grey.append(jnp.repeat(jnp.clip(ys, 0.0, 1.0), 3, axis=-1))
    return jnp.repeat(yc, 3, axis=-1), grey


def _resize(x: jax.Array, hw: tuple[int, int]) -> jax.Array:
    if tuple(x.shape[1:3]) == tuple(hw):
        return x
    return jnp.clip(jax.image.resize(x, (x.shape[0], *hw, x.shape[3]), "linear", antialias=True), 0.0, 1.0)
