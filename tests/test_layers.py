"""models.layers.max_pool: the same values and gradients as lax.reduce_window, ties included."""

import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz.models.layers import conv_flipped_grad, max_pool


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


@pytest.mark.parametrize("size,kernel,padding", [((9, 11), 3, ((1, 1), (1, 1))), ((8, 8), 3, ((0, 0), (0, 0))),
                                                 ((7, 9), 3, ((3, 0), (0, 2))), ((10, 10), 5, ((2, 2), (2, 2))),
                                                 ((6, 6), 1, ((0, 0), (0, 0)))])
def test_conv_flipped_grad_equals_jax_transpose_bit_for_bit(size, kernel, padding):
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, *size, 3)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(kernel, kernel, 3, 4)), jnp.float32)

    def loss(conv):
        return lambda x, w: jnp.sum(jnp.sin(conv(x, w, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))))

    np.testing.assert_array_equal(loss(conv_flipped_grad)(x, w), loss(jax.lax.conv_general_dilated)(x, w))
    for a, b in zip(jax.grad(loss(conv_flipped_grad), (0, 1))(x, w),
                    jax.grad(loss(jax.lax.conv_general_dilated), (0, 1))(x, w)):
        np.testing.assert_array_equal(a, b)


def test_conv_flipped_grad_falls_back_where_the_identity_does_not_apply():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(1, 3, 9, 9)), jnp.float32)  # NCHW, stride 2: JAX's own transpose
    w = jnp.asarray(rng.normal(size=(4, 3, 3, 3)), jnp.float32)

    def loss(conv):
        return lambda x: jnp.sum(jnp.cos(conv(x, w, (2, 2), ((1, 1), (1, 1)), dimension_numbers=("NCHW", "OIHW", "NCHW"))))

    np.testing.assert_array_equal(jax.grad(loss(conv_flipped_grad))(x), jax.grad(loss(jax.lax.conv_general_dilated))(x))


def _convolutions(jaxpr) -> int:
    """conv_general_dilated equations in a jaxpr, sub-jaxprs included."""
    n = 0
    for eqn in jaxpr.eqns:
        n += eqn.primitive.name == "conv_general_dilated"
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            n += _convolutions(sub)
    return n


@pytest.mark.parametrize("shape,kernel,padding,patches", [
    ((1, 14, 14, 16), 3, ((1, 1), (1, 1)), True),      # 196 positions: the matrix-product input gradient
    ((2, 9, 11, 8), 3, ((3, 0), (0, 2)), True),        # asymmetric padding
    ((1, 12, 12, 6), 5, ((2, 2), (2, 2)), True),
    ((1, 10, 10, 6), 1, ((0, 0), (0, 0)), True),
    ((1, 40, 40, 3), 3, ((1, 1), (1, 1)), True),       # 1600 positions but RGB input
    ((1, 40, 40, 8), 3, ((1, 1), (1, 1)), False),      # 1600 positions, 8 channels: the flipped convolution
])
def test_conv_auto_grad_equals_jax_transpose_and_picks_the_form_by_shape(shape, kernel, padding, patches):
    from jaxviz.models import layers

    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    w = jnp.asarray(rng.normal(size=(kernel, kernel, shape[-1], 5)), jnp.float32)

    def loss(conv):
        return lambda x, w: jnp.sum(jnp.sin(conv(x, w, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))))

    np.testing.assert_array_equal(loss(layers.conv_auto_grad)(x, w), loss(jax.lax.conv_general_dilated)(x, w))
    got = jax.grad(loss(layers.conv_auto_grad), (0, 1))(x, w)
    want = jax.grad(loss(jax.lax.conv_general_dilated), (0, 1))(x, w)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.abs(b).max()))
    assert (np.linalg.norm(got[0] - want[0]) / np.linalg.norm(want[0])) < 1e-6
    # forward, the kernel gradient's linearisation (forward + transpose; XLA drops what is unused), and the
    # flipped convolution unless the input gradient is a matrix product
    jaxpr = jax.make_jaxpr(jax.grad(loss(layers.conv_auto_grad)))(x, w).jaxpr
    assert _convolutions(jaxpr) == (3 if patches else 4)
    assert _convolutions(jax.make_jaxpr(jax.grad(loss(conv_flipped_grad)))(x, w).jaxpr) == 4


def test_conv_auto_grad_is_the_flipped_form_off_the_cpu(monkeypatch):
    from jaxviz.models import layers

    assert layers._patches_pay((1, 14, 14, 512), (1, 14, 14, 512))
    assert not layers._patches_pay((1, 56, 56, 256), (1, 56, 56, 256))  # 3136 positions
    assert layers._patches_pay((8, 224, 224, 3), (8, 224, 224, 64))  # the RGB layer, any size
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")  # cuDNN's convolutions need no help
    assert not layers._patches_pay((1, 14, 14, 512), (1, 14, 14, 512))
    assert not layers._patches_pay((8, 224, 224, 3), (8, 224, 224, 64))


SMALL_MAPS = [  # (input shape, kernel, strides, padding): maps XLA:CPU would swap with the kernel
    ((2, 2, 2, 8), 3, (1, 1), ((1, 1), (1, 1))),   # conv5 of a VGG at 32 px
    ((2, 1, 6, 8), 3, (1, 1), ((1, 1), (1, 1))),   # one row
    ((1, 2, 4, 8), 3, (1, 1), ((0, 2), (1, 0))),   # 8 positions < 9, asymmetric padding
    ((2, 2, 2, 8), 3, (2, 2), ((1, 1), (1, 1))),   # a ResNet's downsampling convolution
    ((1, 5, 6, 3), 7, (2, 2), ((3, 3), (3, 3))),   # a ResNet stem on a tiny picture
    ((2, 2, 3, 8), 3, (1, 1), "SAME"),
    ((2, 4, 4, 8), 3, (2, 2), ((1, 1), (1, 1))),   # 4x4 -> 2x2: the input gradient's convolution would swap
    ((1, 4, 6, 8), 3, (2, 2), "SAME"),             # 4x6 -> 2x3
]


def _lax_conv(x, w, strides, padding):
    return jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize("shape,kernel,strides,padding", SMALL_MAPS)
def test_conv_on_a_map_smaller_than_the_kernel_is_a_patch_product_equal_to_lax(shape, kernel, strides, padding):
    from jaxviz.models import layers

    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    w = jnp.asarray(rng.normal(size=(kernel, kernel, shape[-1], 5)), jnp.float32)
    ours = lambda x, w: layers.conv(x, w, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))  # noqa: E731
    want = _lax_conv(x, w, strides, padding)
    got = jax.jit(ours)(x, w)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))
    loss = lambda conv: lambda x, w: jnp.sum(jnp.sin(conv(x, w)))  # noqa: E731
    for a, b in zip(jax.grad(loss(ours), (0, 1))(x, w),
                    jax.grad(loss(lambda x, w: _lax_conv(x, w, strides, padding)), (0, 1))(x, w)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.abs(b).max()))
    # the patch product, forward and backward: no convolution for XLA to swap
    assert _convolutions(jax.make_jaxpr(jax.grad(loss(ours), (0, 1)))(x, w).jaxpr) == 0
    assert "rhs_reversal" not in jax.jit(ours).lower(x, w).compile().as_text()
    assert "rhs_reversal" not in jax.jit(jax.grad(loss(ours), (0, 1))).lower(x, w).compile().as_text()
    with layers.conv_primitives():  # for programs that read layers from the jaxpr (a new trace: a new function)
        assert _convolutions(jax.make_jaxpr(lambda x, w: ours(x, w))(x, w).jaxpr) == 1
    assert _convolutions(jax.make_jaxpr(lambda x, w: ours(x, w))(x, w).jaxpr) == 0  # the context is over


@pytest.mark.parametrize("grad_form", ["conv_flipped_grad", "conv_auto_grad"])
def test_the_custom_gradient_convolutions_take_small_maps_as_patch_products_too(grad_form):
    from jaxviz.models import layers

    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(2, 2, 2, 6)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, 6, 4)), jnp.float32)
    conv = getattr(layers, grad_form)
    loss = lambda conv: lambda x, w: jnp.sum(jnp.sin(conv(x, w, (1, 1), ((1, 1), (1, 1)),  # noqa: E731
                                                          dimension_numbers=("NHWC", "HWIO", "NHWC"))))
    got = jax.grad(loss(conv), (0, 1))(x, w)
    for a, b in zip(got, jax.grad(loss(jax.lax.conv_general_dilated), (0, 1))(x, w)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.abs(b).max()))
    assert _convolutions(jax.make_jaxpr(jax.grad(loss(conv), (0, 1)))(x, w).jaxpr) == 0


@pytest.mark.parametrize("shape,strides", [((2, 3, 3, 8), 1), ((2, 2, 5, 8), 1), ((1, 8, 8, 8), 1), ((2, 6, 6, 8), 2),
                                           ((2, 4, 10, 8), 2)])
def test_conv_keeps_the_convolution_where_the_maps_are_not_smaller_than_the_kernel(shape, strides, monkeypatch):
    from jaxviz.models import layers

    x = jnp.ones(shape, jnp.float32)
    w = jnp.ones((3, 3, 8, 4), jnp.float32)
    pad, st = ((1, 1), (1, 1)), (strides, strides)
    ours = lambda x: layers.conv(x, w, st, pad, dimension_numbers=("NHWC", "HWIO", "NHWC"))  # noqa: E731
    assert _convolutions(jax.make_jaxpr(ours)(x).jaxpr) == 1
    np.testing.assert_array_equal(ours(x), _lax_conv(x, w, st, pad))
    small = jnp.ones((2, 2, 2, 8), jnp.float32)
    assert _convolutions(jax.make_jaxpr(ours)(small).jaxpr) == 0
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")  # XLA:GPU and TPU have their own convolutions
    assert _convolutions(jax.make_jaxpr(lambda x: ours(x))(small).jaxpr) == 1  # a new function: traced anew


@pytest.mark.parametrize("shape,window,strides,padding", [
    ((2, 9, 9, 3), (3, 3), (2, 2), ((1, 1), (1, 1))),   # a ResNet stem's pool, odd size
    ((1, 8, 10, 2), (3, 3), (2, 2), ((1, 1), (1, 1))),
    ((2, 6, 7, 2), (2, 2), (1, 1), ((0, 0), (0, 0))),   # overlapping, no padding
    ((1, 7, 7, 2), (3, 3), (1, 1), ((1, 1), (1, 1))),
    ((1, 8, 8, 2), (3, 2), (2, 1), ((0, 1), (1, 0))),   # asymmetric
])
def test_max_pool_padded_equals_flax_with_ties(shape, window, strides, padding):
    from jaxviz.models.layers import max_pool_padded

    rng = np.random.default_rng(6)
    x = jnp.asarray(rng.integers(-2, 3, size=shape).astype(np.float32))  # many ties, some negative windows
    ref = lambda x: nn.max_pool(x, window, strides=strides, padding=padding)  # noqa: E731
    ours = lambda x: max_pool_padded(x, window, strides, padding)  # noqa: E731
    want = ref(x)
    np.testing.assert_array_equal(ours(x), want)
    ct = jnp.asarray(rng.normal(size=want.shape), jnp.float32)
    np.testing.assert_array_equal(jax.jit(lambda x: jax.vjp(ours, x)[1](ct)[0])(x), jax.vjp(ref, x)[1](ct)[0])
    t = jnp.asarray(rng.normal(size=shape), jnp.float32)
    jvp = jax.jvp(ours, (x,), (t,))[1]
    # the JVP is the transpose of that VJP (<ct, J t> == <J^T ct, t>) ...
    np.testing.assert_allclose(jnp.vdot(ct, jvp), jnp.vdot(jax.vjp(ref, x)[1](ct)[0], t), rtol=1e-5)
    if padding[0][0] == padding[0][1] and padding[1][0] == padding[1][1]:
        # ... and equals JAX's own JVP, which with asymmetric padding breaks some ties unlike its own VJP
        np.testing.assert_array_equal(jvp, jax.jvp(ref, (x,), (t,))[1])


def test_max_pool_padded_is_a_max_pool_to_layerwise():
    from jaxviz.models import layerwise
    from jaxviz.models.layers import max_pool_padded

    x = jnp.asarray(np.random.default_rng(7).normal(size=(1, 6, 6, 2)), jnp.float32)
    found = []

    def choose(layer):
        found.append(layer.kind)

    layerwise.propagate(lambda x: max_pool_padded(x, (3, 3), (2, 2), ((1, 1), (1, 1))), (x,), 0, choose,
                        max_pool_rule=True)
    assert found == ["max_pool"]
