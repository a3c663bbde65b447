"""The named-tap protocol shared by every jaxviz model.

A model lists its layers in order (``.layers``); ``__call__(x, taps=None, *,
start=None, ...)`` runs them one by one through a per-layer function,
returns the final output or a dict of the requested taps (keys as given),
stops after the deepest tap asked for, and can enter after a named tap.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from .. import _checks
from ..errors import InputError


def resolve(layers: Sequence[str], aliases: Mapping[str, str], name: Any, arg: str = "taps") -> str:
    """Canonical layer name for ``name`` (aliases resolved); InputError naming ``arg`` if unknown."""
    if not isinstance(name, str):
        raise InputError(f"{arg}: expected layer names (str), got {name!r}")
    canonical = aliases.get(name, name)
    if canonical not in layers:
        known = list(layers) + [a for a, c in aliases.items() if c in layers]
        raise InputError(f"{arg}: unknown layer {name!r}; this network has {', '.join(known)}")
    return canonical


def prepare_images(x: Any, *, min_size: int, normalize: bool, mean: Sequence[float], std: Sequence[float],
                   dtype: Any = jnp.float32) -> jax.Array:
    """Checks (N, H, W, 3) float images, applies mean/std when ``normalize``, casts to ``dtype``."""
    _checks.images(x, "images", min_size=min_size, unit_range=normalize)
    x = jnp.asarray(x, jnp.float32)
    if normalize:
        x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
    return x.astype(dtype)


def run(
    model: Any,
    x: Any,
    taps: str | Sequence[str] | None,
    start: str | None,
    layer: Callable[[str, jax.Array], jax.Array],
    prepare: Callable[[Any], jax.Array],
) -> jax.Array | dict[str, jax.Array]:
    """Runs ``model.layers`` through ``layer(name, x)``; see the module docstring."""
    order = model.layers
    single = taps is None
    if single:
        requested: tuple = (order[-1],)
    elif isinstance(taps, str):
        requested = (taps,)
    else:
        requested = tuple(taps)
        if not requested:
            raise InputError("taps: expected at least one layer name, got an empty sequence")
    wanted = {name: model.resolve(name) for name in requested}
    stop = max(order.index(c) for c in wanted.values())
    if start is None:
        begin = 0
        x = prepare(x)
    else:
        begin = order.index(model.resolve(start, "start")) + 1
        if begin > stop:
            raise InputError(f"taps: every tap must come after start={start!r}, got {requested}")
    outputs: dict[str, jax.Array] = {}
    for name in order[begin : stop + 1]:
        x = layer(name, x)
        outputs[name] = x if name in wanted.values() else None
    return x if single else {k: outputs[wanted[k]] for k in requested}
