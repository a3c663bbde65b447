"""Shared plumbing for the attribution methods: models vs plain callables,
targets, chunked evaluation, trace counting and upsampling.

Nothing here is public API; the methods in this package build on it.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from typing import Any, Callable, Sequence, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from .. import _checks
from ..errors import InputError
from ..models import protocol

__all__: list[str] = []

#: Number of times each method's jitted core has been traced (tests assert no re-tracing).
TRACES: Counter = Counter()


def count_trace(name: str) -> None:
    """Called from inside a jitted core: runs only while tracing."""
    TRACES[name] += 1


def is_model(net: Any) -> bool:
    """True for a model behind the contract (:class:`jaxviz.models.protocol.Model`): jaxviz's or an adapter."""
    return protocol.is_model(net)


def check_net(net: Any, method: str, *, model_only: bool = False) -> None:
    """``net`` must be a model (``model_only``: one with taps, or a flax module, which gets an adapter) or a
    callable ``f(params, images)``; a Flax NNX module is told to split itself first."""
    if is_model(net) or isinstance(net, nn.Module):
        return
    from ..models.adapters import refuse_nnx

    refuse_nnx(net)
    if model_only:
        raise InputError(
            f"net: {method} needs a model with named taps (a jaxviz model, a flax.linen module, "
            f"models.from_nnx(...) or models.from_function(f, layers=...)), got {type(net).__name__}"
        )
    if not callable(net):
        raise InputError(f"net: expected a jaxviz model or a callable f(params, images) -> logits, got {type(net).__name__}")


def model(net: Any, images: Any = None) -> Any:
    """``net`` behind the model contract (:func:`jaxviz.models.protocol.as_model`)."""
    return protocol.as_model(net, images)


def forward(net: Any, relu: Callable | None = None) -> Callable[[Any, jax.Array], jax.Array]:
    """``f(params, images) -> logits`` for a model or a callable, with every ReLU computed by ``relu`` if given.

    jaxviz's models take ``relu`` through their own seam; any other model or callable has its ReLUs found and
    swapped in its traced program (:func:`jaxviz.models.relus.swap`, which refuses a program without ReLUs).
    Max pools are evaluated by :func:`._fastpool.fast_pools` (same values and gradients, faster on CPU).
    """
    from ..models import relus
    from ..execution import reverse_mode
    from ._fastpool import fast_pools

    # the methods only differentiate in reverse mode: convolution input gradients as flipped-kernel
    # convolutions keep XLA:CPU at full speed inside lax.scan / lax.map, and small maps' as one matrix
    # product (models.layers.conv_auto_grad; equal to float32 round-off)
    net = reverse_mode(net)
    if is_model(net):
        return fast_pools(lambda params, x: net.run(params, x, relu=relu)[0])
    f = net.apply if isinstance(net, nn.Module) else net
    return fast_pools(f if relu is None else relus.swap(f, relu))


def rule_model(net: Any, images: Any, method: str) -> tuple[Any, jax.Array]:
    """For the methods that rewrite a model's backward rules (LRP, DeepLIFT): ``(net, images)`` with a model
    or linen module behind the contract and the images checked; their cores run :func:`plain_forward` (no
    reverse-mode convolutions or fast pools: the rule seam needs the program's own layers)."""
    check_net(net, method)
    if is_model(net) or isinstance(net, nn.Module):
        net = model(net, images)
    images = check_images(images, net)
    return net, images


def plain_forward(net: Any) -> Callable[[Any, jax.Array], jax.Array]:
    """``f(params, x) -> logits`` of a model behind the contract, or the callable itself."""
    if is_model(net):
        return lambda params, x: net.run(params, x)[0]
    return net


def check_images(images: Any, net: Any = None) -> jax.Array:
    """(N, H, W, 3) float images, as float32 (the maps' dtype); in [0, 1] when ``net`` normalises its inputs."""
    x = _checks.images(images, "images", unit_range=net is not None and protocol.unit_range(net))
    return x if x.dtype == np.float32 else jnp.asarray(x, jnp.float32)


def positive_int(value: Any, name: str) -> int:
    return _checks.positive_int(value, name)


def pair(value: Any, name: str) -> tuple[int, int]:
    """An int or a pair of ints -> (int, int), each positive."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value, value)
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise InputError(f"{name}: expected a positive int or a pair (h, w) of positive ints, got {value!r}")
    return (_checks.positive_int(value[0], name), _checks.positive_int(value[1], name))


# --------------------------------------------------------------------------------------------
# targets


@functools.lru_cache(maxsize=64)
def _num_outputs(net: Any, params_sig: Any, image_sig: Any) -> Any:
    params = protocol._abstract_params(params_sig)
    images = jax.ShapeDtypeStruct(*image_sig)
    return jax.eval_shape(forward(net), params, images).shape


def output_shape(net: Any, params: Any, images: Any) -> tuple[int, ...]:
    """The shape of ``f(params, images[:1])`` without running it (cached by shapes)."""
    sig = protocol._params_key(params)
    try:
        return _num_outputs(net, sig, ((1,) + tuple(images.shape[1:]), jnp.float32))
    except TypeError:  # unhashable net: no cache
        return _num_outputs.__wrapped__(net, sig, ((1,) + tuple(images.shape[1:]), jnp.float32))


def prepare_target(target: Any, n: int, net: Any = None, params: Any = None, images: Any = None):
    """Normalises ``target`` to a static callable or an int array of shape (n,).

    Returns ``(static, dynamic)``: ``static`` is the callable (or None) and goes
    to a jitted core as a static argument; ``dynamic`` is the (n,) int32 array
    (or None).
    """
    if callable(target) and not isinstance(target, (jax.Array, np.ndarray)):
        return target, None
    if target is None:
        raise InputError(
            "target: expected a class index (int), one int per image, or a callable logits -> scores, got None"
        )
    if isinstance(target, bool):
        raise InputError(f"target: expected an int, a sequence of N ints or a callable, got {target!r}")
    if isinstance(target, (int, np.integer)):
        arr = np.full((n,), int(target), np.int32)
    elif isinstance(target, jax.core.Tracer):
        arr = jnp.asarray(target)
        if not jnp.issubdtype(arr.dtype, jnp.integer) or arr.ndim > 1:
            raise InputError(f"target: expected integer class indices of shape () or ({n},), got {arr.dtype}{arr.shape}")
        return None, jnp.broadcast_to(arr.astype(jnp.int32), (n,))
    else:
        try:
            arr = np.asarray(target)
        except Exception:  # noqa: BLE001
            raise InputError(f"target: expected an int, a sequence of N ints or a callable, got {type(target).__name__}")
        if arr.dtype == object or not np.issubdtype(arr.dtype, np.integer):
            raise InputError(f"target: expected integer class indices, got {arr.dtype} values {target!r}")
        if arr.ndim == 0:
            arr = np.full((n,), int(arr), np.int32)
        elif arr.shape != (n,):
            raise InputError(f"target: expected one class index per image ({n},), got shape {arr.shape}")
        arr = arr.astype(np.int32)
    if net is not None:
        shape = output_shape(net, params, images)
        if len(shape) != 2:
            raise InputError(
                f"target: an int target needs a model output of shape (N, K), got {shape}; pass a callable"
            )
        k = shape[1]
        bad = arr[(arr < 0) | (arr >= k)]
        if bad.size:
            raise InputError(f"target: expected class indices in [0, {k}), got {int(bad[0])}")
    return None, jnp.asarray(arr)


def scores(logits: jax.Array, fn: Callable | None, idx: jax.Array | None) -> jax.Array:
    """(m, K) logits -> (m,) scores of the target (callable or per-row class index)."""
    if fn is not None:
        out = fn(logits)
        if jnp.shape(out) != (logits.shape[0],):
            raise InputError(
                f"target: a callable target must map logits {logits.shape} to one score per image "
                f"({logits.shape[0]},), got shape {jnp.shape(out)}"
            )
        return out
    idx, poison = in_range(idx, logits.shape[1])
    return jnp.take_along_axis(logits, idx[:, None], axis=1)[:, 0] * poison.astype(logits.dtype)


def target_scores(logits: jax.Array, fn: Callable | None, idx: jax.Array | None, probabilities: bool) -> jax.Array:
    """:func:`scores` of the softmax probabilities (``probabilities``) or of the logits (the metrics' choice)."""
    return scores(jax.nn.softmax(logits, axis=-1) if probabilities else logits, fn, idx)


def in_range(idx: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """Class indices clipped into [0, k), and a factor per index: 1 where it was in range, NaN where not.

    Concrete targets are checked by :func:`prepare_target`; a target traced
    under ``jit`` cannot raise, so a method multiplies its score (or class
    weights) by the factor: an out-of-range class gives a NaN map, as JAX's
    own out-of-bounds gathers give NaN, instead of an all-zero map (or, by
    clamping, another class's map). The clipped index keeps the NaN on a
    path the gradient takes back to the pixels.
    """
    return jnp.clip(idx, 0, k - 1), jnp.where((idx >= 0) & (idx < k), 1.0, jnp.nan)


def gather_target(idx: jax.Array | None, rows: jax.Array) -> jax.Array | None:
    return None if idx is None else idx[rows]


def check_batch_size(batch_size: Any) -> int:
    return _checks.positive_int(batch_size, "batch_size")


# --------------------------------------------------------------------------------------------
# layers


def layer(net: Any, params: Any, images: Any, layer: Any) -> str:
    """The tap a layer method reads: ``layer`` resolved, or the model's default (measured when it names none)."""
    if layer is None:
        return protocol.default_layer(net, params, (1,) + tuple(images.shape[1:]))
    return net.resolve(layer, "layer")


def upsample(maps: jax.Array, size: tuple[int, int], interpolation: str) -> jax.Array:
    """(N, h, w) -> (N, H, W) with ``jax.image.resize`` ("bilinear" or "nearest")."""
    if maps.shape[1:] == tuple(size):
        return maps
    return jax.image.resize(maps, (maps.shape[0],) + tuple(size), method=interpolation)


def pixel_map(maps: Any, n: int, h: int, w: int, name: str = "maps") -> jax.Array:
    """A map per image, (N, H, W): ``maps`` as given, or (N, H, W, C) summed over C (an attribution per channel).
    Finite values are checked when ``maps`` is concrete."""
    m = jnp.asarray(maps, jnp.float32)
    if m.ndim == 4 and m.shape[:3] == (n, h, w):
        m = jnp.sum(m, axis=-1)
    if m.shape != (n, h, w):
        raise InputError(f"{name}: expected shape ({n}, {h}, {w}) (a map per image, e.g. an upsampled CAM) or "
                         f"({n}, {h}, {w}, C) (summed over C), got {tuple(m.shape)}")
    if not isinstance(m, jax.core.Tracer) and not bool(jnp.isfinite(m).all()):
        raise InputError(f"{name}: expected finite values, got NaN or inf")
    return m


def broadcast_baseline(baselines: Any, images: jax.Array, name: str = "baselines") -> jax.Array:
    """A scalar, (H, W, 3), (1, H, W, 3) or (N, H, W, 3) baseline -> (N, H, W, 3) float32."""
    if baselines is None:
        return jnp.zeros_like(images)
    if isinstance(baselines, (int, float, np.integer, np.floating)) and not isinstance(baselines, bool):
        return jnp.full_like(images, float(baselines))
    shape = getattr(baselines, "shape", None)
    if shape is None:
        raise InputError(f"{name}: expected a number or an array broadcastable to {tuple(images.shape)}, got {type(baselines).__name__}")
    try:
        out = jnp.broadcast_to(jnp.asarray(baselines, images.dtype), images.shape)
    except ValueError:
        raise InputError(f"{name}: expected a number or an array broadcastable to {tuple(images.shape)}, got shape {tuple(shape)}")
    return out


def baseline_set(baselines: Any, images: jax.Array) -> jax.Array:
    """A distribution of baselines shared by all images: a number, one image (H, W, 3) or (B, H, W, 3) -> (B, ...)."""
    if isinstance(baselines, (int, float, np.integer, np.floating)) and not isinstance(baselines, bool):
        base = jnp.full((1,) + images.shape[1:], float(baselines), images.dtype)
    else:
        base = jnp.asarray(baselines, images.dtype) if hasattr(baselines, "shape") else None
        if base is not None and base.shape == images.shape[1:]:
            base = base[None]
        if base is None or base.ndim != 4 or base.shape[1:] != images.shape[1:] or base.shape[0] < 1:
            raise InputError(f"baselines: expected a number, an image {tuple(images.shape[1:])} or images "
                             f"(B, {', '.join(map(str, images.shape[1:]))}), got "
                             f"{getattr(baselines, 'shape', type(baselines).__name__)}")
    return base


# --------------------------------------------------------------------------------------------
# methods as arguments (smoothgrad, metrics)


def resolve_method(method: Any, exclude: Sequence[str] = ()) -> Callable:
    """A method name from METHODS (or a callable with the method signature) -> the function."""
    if callable(method):
        return method
    from . import METHODS

    if method in exclude or method not in METHODS:
        names = [m for m in METHODS if m not in exclude]
        raise InputError(f"method: expected one of {', '.join(map(repr, names))} or a callable, got {method!r}")
    return METHODS[method]


def check_options(method: Callable, options: Any) -> dict:
    """``options`` for ``method``: a mapping whose keys are keyword-only parameters of it (the options every
    method takes after ``(net, params, images, target)``); else an InputError naming ``options``."""
    import inspect

    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise InputError(f"options: expected a dict of the method's options, got {type(options).__name__}")
    try:
        params = inspect.signature(method).parameters
    except (TypeError, ValueError):
        return dict(options)
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return dict(options)
    accepted = [n for n, p in params.items() if p.kind is p.KEYWORD_ONLY]
    unknown = [k for k in options if k not in accepted]
    if unknown:
        name = getattr(method, "__name__", "the method")
        raise InputError(f"options: {name} has no option {unknown[0]!r}; expected some of {', '.join(accepted)}")
    return dict(options)


def split_options(options: Any) -> tuple[tuple, dict]:
    """Method options -> (hashable static items, dict of array options) for a jitted core."""
    static, dynamic = [], {}
    for k, v in dict(options or {}).items():
        if isinstance(v, (jax.Array, np.ndarray)):
            dynamic[k] = v
        else:
            try:
                hash(v)
            except TypeError:
                raise InputError(f"options: {k!r} must be an array or a hashable value, got {type(v).__name__}")
            static.append((k, v))
    return tuple(sorted(static)), dynamic


def accepts(fn: Callable, name: str) -> bool:
    import inspect

    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def draw_columns(values: jax.Array, k: jax.Array, samples: int) -> jax.Array:
    """Per-draw values (m,) of items ``k = i * samples + s`` placed in column ``s`` of an (m, samples) array, so a
    segment sum over images (``k // samples``) gives each image's row of per-draw values (convergence deltas)."""
    return values[:, None] * jax.nn.one_hot(k % samples, samples, dtype=values.dtype)


def item_key(key: jax.Array, k: jax.Array, samples: int) -> jax.Array:
    """The PRNG key of item ``k`` = sample ``k % samples`` of image ``k // samples``.

    One key (shape ()): ``fold_in(key, k)``, so the noise follows the image's
    position in the call. One key per image (shape (N,)): ``fold_in(key[k //
    samples], k % samples)``, so an image's noise follows its own key wherever it
    sits: in any batch, on any device (the form for ``parallel.data_parallel``,
    which hands each device a slice of the images and of their keys).
    """
    if key.ndim == 0:
        return jax.random.fold_in(key, k)
    return jax.random.fold_in(key[k // samples], k % samples)


def normal_noise(key: jax.Array, items: jax.Array, shape: tuple[int, ...], samples: int) -> jax.Array:
    """Standard-normal noise per item number: (len(items),) + shape.

    Item k is ``jax.random.normal(item_key(key, k, samples), (prod(shape),)).reshape(shape)``
    (drawn flat: XLA:CPU compiles threefry over a 1-D shape several times faster).
    """
    size = math.prod(shape)
    return jax.vmap(lambda k: jax.random.normal(item_key(key, k, samples), (size,), jnp.float32).reshape(shape))(items)


def uniform_noise(key: jax.Array, items: jax.Array, shape: tuple[int, ...], radius: float, samples: int) -> jax.Array:
    """Uniform noise in [-radius, radius) per item number (keys as :func:`normal_noise`)."""
    size = math.prod(shape)
    return jax.vmap(
        lambda k: jax.random.uniform(item_key(key, k, samples), (size,), jnp.float32, -radius, radius).reshape(shape)
    )(items)
