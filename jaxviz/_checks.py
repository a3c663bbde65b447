"""Argument checks shared by every public function.

Checks run at trace time (they look at shapes and dtypes, never at values),
so they cost nothing inside ``jit``. Messages name the argument and say what
was expected and what was given.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from .errors import InputError


def is_floating(dtype: Any) -> bool:
    """Whether ``dtype`` is a floating type, bfloat16 and the other ml_dtypes floats included (NumPy says no)."""
    return bool(jnp.issubdtype(np.dtype(dtype), jnp.floating))


def images(x: Any, name: str = "images", *, min_size: int = 1, unit_range: bool = False) -> Any:
    """Checks ``x`` is an (N, H, W, 3) floating array and returns it.

    With ``unit_range`` (inputs of a model that normalises them itself), concrete values (not traced under
    ``jit``) far outside [0, 1] are refused: a 0-255 picture, or one normalised twice, would otherwise give a
    meaningless result without a word; so are NaN and infinite pixels. Small overshoots (resampling, noise) pass.
    """
    shape = getattr(x, "shape", None)
    if shape is None:
        raise InputError(f"{name}: expected an array of shape (N, H, W, 3), got {type(x).__name__}")
    if len(shape) != 4 or shape[-1] != 3:
        hint = " (add a batch axis with x[None])" if len(shape) == 3 and shape[-1] == 3 else ""
        raise InputError(f"{name}: expected shape (N, H, W, 3), got {tuple(shape)}{hint}")
    dtype = np.dtype(x.dtype)
    if not is_floating(dtype):
        raise InputError(
            f"{name}: expected a floating dtype with values in [0, 1], got {dtype}"
            " (convert with jaxviz.image.to_float)"
        )
    if shape[1] < min_size or shape[2] < min_size:
        raise InputError(f"{name}: expected height and width >= {min_size}, got {shape[1]}x{shape[2]}")
    if unit_range and not isinstance(x, jax.core.Tracer) and x.size:
        with jax.ensure_compile_time_eval():  # concrete images closed over by a jit-ed caller: computed now
            lo, hi = float(x.min()), float(x.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise InputError(f"{name}: expected finite values in [0, 1], got NaN or infinite pixels")
        if hi > 1.5 or lo < -0.5:
            hint = (" (a 0-255 picture? divide by 255)" if hi > 2 and lo >= -0.5 else
                    " (already normalised? the model applies the ImageNet mean/std itself)")
            raise InputError(f"{name}: expected values in [0, 1], got values in [{lo:.4g}, {hi:.4g}]{hint}")
    return x


def prng_key(key: Any, name: str = "key") -> Any:
    """A PRNG key from ``key``: a ``jax.random.key``/``PRNGKey`` array as it is, a non-negative int seed as
    ``jax.random.key(seed)``; None as ``jax.random.key(0)``."""
    if key is None:
        return jax.random.key(0)
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        if key < 0:
            raise InputError(f"{name}: expected a PRNG key or a non-negative int seed, got {key}")
        return jax.random.key(int(key))
    dtype = getattr(key, "dtype", None)
    if dtype is not None and (jnp.issubdtype(dtype, jax.dtypes.prng_key)
                              or (dtype == np.uint32 and tuple(np.shape(key))[-1:] == (_raw_key_size(),))):
        return key
    raise InputError(f"{name}: expected a PRNG key (jax.random.key(seed)) or an int seed, got "
                     f"{type(key).__name__}{' of dtype ' + str(dtype) if dtype is not None else ''}")


def _raw_key_size() -> int:
    """Words in a legacy raw uint32 key (``jax.random.PRNGKey``) of the default PRNG implementation: 2 for
    threefry, 4 for rbg/unsafe_rbg (a common TPU setting)."""
    return int(jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0))).shape[-1])


def prng_keys(key: Any, n: int, name: str = "key") -> Any:
    """:func:`prng_key`, also taking one key per image: a typed key array of shape () or (n,) (legacy raw keys
    are wrapped). InputError for any other shape."""
    key = prng_key(key, name)
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)
    if key.shape not in ((), (n,)):
        raise InputError(f"{name}: expected one PRNG key or one per image, shape () or ({n},), got shape "
                         f"{tuple(key.shape)}")
    return key


def positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise InputError(f"{name}: expected a positive int, got {value!r}")
    return int(value)


def non_negative_pixels(value: Any, name: str) -> int:
    """A non-negative int count of pixels (a pad, a jitter); InputError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise InputError(f"{name}: expected a non-negative int of pixels, got {value!r}")
    return int(value)


def positive_number(value: Any, name: str, *, finite: bool = False) -> None:
    """A positive real scalar (a Python or NumPy number, or a 0-d array), and not inf when ``finite``; a traced
    one passes unchecked."""
    if isinstance(value, jax.core.Tracer):
        return
    try:
        ok = (not isinstance(value, (bool, str, bytes)) and np.ndim(value) == 0 and float(value) > 0
              and not (finite and float(value) == float("inf")))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InputError(f"{name}: expected a positive{' finite' if finite else ''} number, got {value!r}")


def one_of(value: Any, name: str, choices: Iterable[Any]) -> Any:
    choices = tuple(choices)
    if value not in choices:
        raise InputError(f"{name}: expected one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def index_ranges(values: Iterable[int], limit: int = 8) -> str:
    """Integers as short ranges for a message, in the CLI's channel syntax: [64, 65, ..., 999, 1200] -> "64-999,1200".

    Sorted and deduplicated; after ``limit`` ranges the rest is counted, not listed.
    """
    runs: list[list[int]] = []
    for v in sorted(set(int(v) for v in values)):
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    text = ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs[:limit])
    return text + (f",... ({len(runs) - limit} more ranges)" if len(runs) > limit else "")
