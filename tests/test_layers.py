"""models.layers.max_pool: the same values and gradients as lax.reduce_window, ties included."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz.models.layers import max_pool


@pytest.mark.parametrize("shape,window", [((2, 8, 10, 3), (2, 2)), ((1, 9, 7, 4), (2, 2)), ((1, 9, 9, 2), (3, 3))])
def test_values_and_gradients_equal_reduce_window_with_ties(shape, window):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, 3, size=shape).astype(np.float32))  # many ties
    ct = jnp.asarray(rng.normal(size=(shape[0], shape[1] // window[0], shape[2] // window[1], shape[3])), jnp.float32)
    ref = lambda x: nn.max_pool(x, window, strides=window)  # noqa: E731
    np.testing.assert_array_equal(max_pool(x, window), ref(x))
    g_ours = jax.vjp(lambda x: max_pool(x, window), x)[1](ct)[0]
    g_ref = jax.vjp(ref, x)[1](ct)[0]
    np.testing.assert_array_equal(g_ours, g_ref)
    t = jnp.asarray(rng.normal(size=shape), jnp.float32)
    np.testing.assert_array_equal(jax.jvp(lambda x: max_pool(x, window), (x,), (t,))[1], jax.jvp(ref, (x,), (t,))[1])
    # second application of the rule under jit, and grad of grad-free composition
    np.testing.assert_array_equal(jax.jit(jax.grad(lambda x: (max_pool(x, window) * ct).sum()))(x), g_ref)
