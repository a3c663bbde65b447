"""Layers shared by jaxviz models.

:func:`max_pool` is the non-overlapping max pool of VGG and torchvision
(window == stride, no padding, trailing rows/columns dropped), written as a
reshape-and-max with a custom JVP. Values and gradients equal
``flax.linen.max_pool`` / ``lax.reduce_window`` exactly, ties included: the
tangent goes to the first maximum of each window in row-major order, the
element XLA's ``select_and_scatter`` and PyTorch's ``max_pool2d`` pick. Its
transpose is a masked broadcast that XLA fuses, where ``select_and_scatter``
costs on the CPU about three times a 3x3 convolution of the same size (a
quarter of a VGG19 input gradient).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

__all__ = ["max_pool"]


def _windows(x: jax.Array, kh: int, kw: int) -> jax.Array:
    n, h, w, c = x.shape
    return x[:, : (h // kh) * kh, : (w // kw) * kw].reshape(n, h // kh, kh, w // kw, kw, c)


def _first_max_mask(xr: jax.Array, y: jax.Array) -> jax.Array:
    """Mask (xr's shape) of the first maximum of each window, row-major."""
    kh, kw = xr.shape[2], xr.shape[4]
    eq = xr == y[:, :, None, :, None, :]
    seen = jnp.zeros_like(y, dtype=bool)
    rows = []
    for i in range(kh):
        row = []
        for j in range(kw):
            e = eq[:, :, i, :, j, :]
            row.append(e & ~seen)
            seen = seen | e
        rows.append(jnp.stack(row, axis=3))  # (n, ho, wo, kw, c)
    return jnp.stack(rows, axis=2)  # (n, ho, kh, wo, kw, c)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def max_pool(x: jax.Array, window: tuple[int, int] = (2, 2)) -> jax.Array:
    """Max pool of NHWC ``x`` with stride == window, VALID padding.

    Args:
      x: (N, H, W, C) array.
      window: (kh, kw), also the stride.

    Returns:
      (N, H // kh, W // kw, C) array.
    """
    kh, kw = window
    return jnp.max(_windows(x, kh, kw), axis=(2, 4))


@max_pool.defjvp
def _max_pool_jvp(window, primals, tangents):
    (x,), (t,) = primals, tangents
    kh, kw = window
    xr = _windows(x, kh, kw)
    y = jnp.max(xr, axis=(2, 4))
    mask = _first_max_mask(xr, y)
    t_out = jnp.sum(jnp.where(mask, _windows(t, kh, kw), jnp.zeros((), t.dtype)), axis=(2, 4))
    return y, t_out
