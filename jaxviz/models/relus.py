"""Every custom ReLU rule in one place, and the seam that puts them into any model.

The rules (forward ``max(x, 0)`` in all three; only the backward pass differs):

* :func:`guided_relu`: ``g_in = g_out * (x > 0) * (g_out > 0)`` (guided
  backprop, Springenberg et al. 2015; Captum's ``GuidedBackprop``).
* :func:`deconv_relu`: ``g_in = relu(g_out)`` (deconvnet, Zeiler & Fergus
  2014; Captum's ``Deconvolution``).
* :func:`redirected_relu`: the ordinary gradient, except for a sample where it
  is zero everywhere; there it passes wherever it pushes ``x`` towards
  activation (lucid's ``redirected_relu_grad``, for activation maximisation).

:func:`swap` puts a rule into a model: through its own ``relu=`` seam (jaxviz's
models), or by rewriting the traced program of any other model or function
(:mod:`jaxviz.models._jaxpr`: ``jax.nn.relu``, ``flax.linen.relu``,
``jnp.maximum(x, 0)`` and ``jnp.clip(x, 0)``, inside ``jit``, ``scan``,
``cond``, ``remat`` and custom-derivative bodies). :func:`count` says how many
ReLUs a model has; a technique that swaps them refuses a model with none
(:class:`~jaxviz.errors.ModelError`) rather than return plain gradients.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxviz.models import relus
    >>> f = lambda w, x: jnp.sum(jax.nn.relu(x * w) * jnp.array([1.0, -1.0]))
    >>> jax.grad(relus.swap(f, relus.guided_relu), argnums=1)(1.0, jnp.array([1.0, 2.0]))
    Array([1., 0.], dtype=float32)
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from ..errors import ModelError
from . import _jaxpr

__all__ = ["guided_relu", "deconv_relu", "redirected_relu", "RULES", "swap", "count"]


@jax.custom_vjp
def guided_relu(x: jax.Array) -> jax.Array:
    """ReLU whose gradient passes only positive gradients through positive inputs."""
    return jnp.maximum(x, 0)


def _guided_fwd(x):
    return jnp.maximum(x, 0), x


def _guided_bwd(x, g):
    return (jnp.where(x > 0, jnp.maximum(g, 0), jnp.zeros_like(g)),)  # maximum keeps a NaN (out-of-range target)


guided_relu.defvjp(_guided_fwd, _guided_bwd)


@jax.custom_vjp
def deconv_relu(x: jax.Array) -> jax.Array:
    """ReLU whose gradient is ``relu(upstream gradient)``, ignoring the input's sign."""
    return jnp.maximum(x, 0)


def _deconv_fwd(x):
    return jnp.maximum(x, 0), None


def _deconv_bwd(_, g):
    return (jnp.maximum(g, 0),)


deconv_relu.defvjp(_deconv_fwd, _deconv_bwd)


@jax.custom_vjp
def redirected_relu(x: jax.Array) -> jax.Array:
    """ReLU whose gradient never dies: lucid's ``redirected_relu_grad``.

    Forward: ``max(x, 0)``. Backward: the ordinary ReLU gradient, except for
    a sample (leading axis) where it is zero everywhere; there the gradient
    passes through wherever it pushes ``x`` up (towards activation), so a
    channel that is silent on the initial grey image can still be reached.
    The cotangent is that of a loss being minimised (``g > 0`` pushes ``x`` lower).
    """
    return jnp.maximum(x, 0)


def _redirected_fwd(x):
    return jnp.maximum(x, 0), x


def _redirected_bwd(x, g):
    relu_grad = jnp.where(x < 0, 0.0, g)
    redirected = jnp.where((x < 0) & (g > 0), 0.0, g)  # g is d(loss)/dy: g > 0 pushes x lower
    mag = jnp.sqrt(jnp.sum(relu_grad.reshape(x.shape[0], -1) ** 2, axis=1)) if x.ndim else jnp.abs(relu_grad)
    alive = (mag > 0).reshape((-1,) + (1,) * (x.ndim - 1)) if x.ndim else mag > 0
    return (jnp.where(alive, relu_grad, redirected),)


redirected_relu.defvjp(_redirected_fwd, _redirected_bwd)

#: The rules by method name.
RULES = {"guided_backprop": guided_relu, "deconvnet": deconv_relu, "redirected": redirected_relu}


def swap(fn: Callable, relu: Callable) -> Callable:
    """``fn`` with every ReLU computed by ``relu`` (any JAX function; see the module docstring).

    The returned function raises :class:`~jaxviz.errors.ModelError` when it
    finds no ReLU in ``fn``'s program, so a method never returns plain
    gradients under another name.
    """

    @functools.wraps(fn)
    def swapped(*args):
        out, n = _jaxpr.evaluate(fn, args, relu=relu)
        if n == 0:
            raise ModelError(f"net: found no ReLU to swap in {getattr(fn, '__name__', type(fn).__name__)} (looked "
                             "for jax.nn.relu, flax's relu and jnp.maximum(x, 0), inside jit, scan, cond and remat "
                             "too)")
        return out

    return swapped


def count(net: Any, params: Any, images: Any) -> int:
    """How many ReLUs a model's program holds (each ``max(x, 0)`` once; one inside a loop body counts once).

    Args:
      net: a jaxviz model, an adapted model or a function ``f(params, x)``.
      params: its parameters.
      images: an input (only its shape matters).

    Returns:
      The number of ReLUs :func:`swap` would replace. Cached by the model and the shapes, so a method that
      checks before every call traces the network once.
    """
    from .protocol import _params_key, as_model

    model = as_model(net)
    key = (_params_key(params), tuple(jnp.shape(images)), str(jnp.result_type(images)))
    try:
        return _count_cached(model, key)
    except TypeError:  # an unhashable model: no cache
        return _count_cached.__wrapped__(model, key)


@functools.lru_cache(maxsize=64)
def _count_cached(model: Any, key: Any) -> int:
    from .protocol import _abstract_params

    params_key, shape, dtype = key
    params = _abstract_params(params_key)
    x = jax.ShapeDtypeStruct(shape, dtype)
    return _jaxpr.count_relus(lambda p, x: model.run(p, x)[0], params, x)
