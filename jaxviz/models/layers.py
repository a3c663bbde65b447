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

:func:`conv_flipped_grad` is ``lax.conv_general_dilated`` with a custom VJP
that computes the input gradient of a stride-1 convolution as a forward
convolution with the spatially flipped, in/out-swapped kernel (the textbook
identity; the same numbers to float32 round-off). JAX's own transpose rule
gives XLA a convolution with swapped kernel dimensions, which XLA:CPU runs
several times slower inside a loop body (``lax.while_loop``/``scan``, e.g. optax's
L-BFGS line search) than at the top level; the flipped form runs at full speed
in both. Forward-mode differentiation (``jax.jvp``) of a custom-VJP function is
not available, so models use it only when asked (``VGG(conv_grad="flipped")``).

:func:`conv` is ``lax.conv_general_dilated`` (same signature) with one change on
XLA:CPU: where the input or the output map is smaller than the kernel (fewer
positions than the kernel has taps: a 3x3 kernel on a 2x2, 2x4 or 1x8 map, or a
stride-2 convolution from 4x4 to 2x2), the convolution is one matrix product
over its patches. For such shapes XLA's algebraic simplifier swaps the operands
of the convolution (or of its input gradient's convolution: the kernel becomes
the image), and the swapped form, a reversed window, misses the Eigen kernel:
a 3x3, 512-channel convolution of sixteen 2x2 maps ran in 190 ms instead of
2.5 ms, which made a VGG16 at 32 px or a ResNet-18 at 64 px 5x and 17x slower
on the CPU than it is now (docs/performance.md). jaxviz's models use it for
every convolution. Programs that read the layers from the traced program
(:mod:`jaxviz.models.layerwise`: LRP, DeepLIFT) trace under
:func:`conv_primitives`, which keeps the convolution primitive there.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools

import jax
import jax.numpy as jnp

from .. import execution

__all__ = ["conv", "conv_auto_grad", "conv_flipped_grad", "conv_primitives", "max_pool", "max_pool_padded"]


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


def _strided_windows(x: jax.Array, window, strides, padding, fill) -> list[jax.Array]:
    """Every window position of the padded ``x`` as one strided slice (N, Ho, Wo, C), in row-major order."""
    (kh, kw), (sh, sw), ((plh, phh), (plw, phw)) = window, strides, padding
    xp = jax.lax.pad(x, jnp.asarray(fill, x.dtype), ((0, 0, 0), (plh, phh, 0), (plw, phw, 0), (0, 0, 0)))
    ho, wo = (xp.shape[1] - kh) // sh + 1, (xp.shape[2] - kw) // sw + 1
    return [jax.lax.slice(xp, (0, i, j, 0), (xp.shape[0], i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1,
                                             xp.shape[3]), (1, sh, sw, 1))
            for i in range(kh) for j in range(kw)]


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3))
def max_pool_padded(x: jax.Array, window: tuple[int, int], strides: tuple[int, int],
                    padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
    """Max pool of NHWC ``x`` with any window, strides and padding (padded with -inf), e.g. a ResNet stem's
    3x3, stride 2, padding 1.

    Values and gradients equal ``flax.linen.max_pool`` with the same arguments exactly, ties included (the
    tangent goes to the first maximum of each window in row-major order, as in :func:`max_pool`). The
    gradient is a masked sum of strided slices, where XLA:CPU's ``select_and_scatter`` for overlapping
    windows was 3-9x slower (docs/performance.md). The forward is a ``reduce_max`` over the stacked windows,
    which :mod:`~jaxviz.models.layerwise` finds as a max pool.
    """
    return jnp.max(jnp.stack(_strided_windows(x, window, strides, padding, -jnp.inf), axis=3), axis=3)


@max_pool_padded.defjvp
def _max_pool_padded_jvp(window, strides, padding, primals, tangents):
    # the windows as separate slices, not stacked: XLA:CPU transposes a stack of strided slices far slower
    (x,), (t,) = primals, tangents
    xs = _strided_windows(x, window, strides, padding, -jnp.inf)
    y = functools.reduce(jnp.maximum, xs)
    seen = jnp.zeros(y.shape, bool)
    t_out = jnp.zeros(y.shape, t.dtype)
    for xk, tk in zip(xs, _strided_windows(t, window, strides, padding, 0)):  # first maximum, row-major
        hit = (xk == y) & ~seen
        seen = seen | hit
        t_out = t_out + jnp.where(hit, tk, jnp.zeros((), t.dtype))
    return y, t_out


_CONV_STATIC = ("window_strides", "padding", "lhs_dilation", "rhs_dilation", "dimension_numbers",
                "feature_group_count", "batch_group_count", "precision", "preferred_element_type")


_PRIMITIVES = contextvars.ContextVar("jaxviz_conv_primitives", default=False)


@contextlib.contextmanager
def conv_primitives():
    """Within this context :func:`conv` (and the ``conv_*_grad`` forms) always emit ``lax.conv_general_dilated``.

    For programs that read a model's layers from its traced program (a convolution computed as a matrix
    product over patches would be read as a dense layer). It applies while a function is traced, and only to
    what is traced then: a function jitted earlier keeps the program it was traced with.
    """
    token = _PRIMITIVES.set(True)
    try:
        yield
    finally:
        _PRIMITIVES.reset(token)


def conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
         feature_group_count=1, batch_group_count=1, precision=None, preferred_element_type=None):
    """``lax.conv_general_dilated`` (same signature), except that on XLA:CPU a map smaller than the kernel is
    convolved as one matrix product over its patches (see the module docstring; equal to float32 round-off).

    Pass it to flax: ``nn.Conv(..., conv_general_dilated=jaxviz.models.layers.conv)``. Applies to NHWC/HWIO
    undilated ungrouped convolutions (flax's ``nn.Conv`` on 4-D inputs); anything else is
    ``lax.conv_general_dilated`` itself.
    """
    cfg = _config(window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
                  batch_group_count, precision, preferred_element_type)
    return _conv(cfg, lhs, rhs)


def conv_flipped_grad(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                      dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
                      preferred_element_type=None):
    """``lax.conv_general_dilated`` (same signature) whose input gradient is a flipped-kernel convolution.

    The flipped form applies to NHWC/HWIO stride-1 undilated ungrouped
    convolutions with explicit padding (what flax's ``nn.Conv`` passes); any
    other configuration falls back to JAX's own transpose. The kernel gradient
    is always JAX's own.
    """
    cfg = _config(window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
                  batch_group_count, precision, preferred_element_type)
    return _conv_vjp(cfg, False, lhs, rhs)


#: On XLA:CPU the input gradient is a matrix product over patches when the map has at most this many
#: positions (batch x height x width) or the convolution at most :data:`PATCH_CHANNELS` input channels.
PATCH_ROWS = 1024
PATCH_CHANNELS = 4


def conv_auto_grad(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                   dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
                   preferred_element_type=None):
    """:func:`conv_flipped_grad`, except that on XLA:CPU small maps take the input gradient as one matrix product.

    For a stride-1 convolution whose output has at most :data:`PATCH_ROWS`
    positions (e.g. VGG's 28 and 14 px maps for one 224 px image) or whose
    input has at most :data:`PATCH_CHANNELS` channels (the RGB layer), the
    input gradient is ``g (M, C_out) @ kernel (k*k*C_in, C_out)^T`` followed by
    the sum of the k*k shifted slices (the transpose of an im2col
    convolution). XLA:CPU runs its convolutions below full speed on such
    shapes (``python benchmarks/conv_layers.py --batch 1`` prints the input
    gradient per layer both ways; docs/performance.md). Elsewhere, and on
    GPU/TPU, it is the flipped
    convolution. The numbers equal the flipped form's to float32 round-off
    (relative error ~5e-7), not bit for bit.
    """
    cfg = _config(window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
                  batch_group_count, precision, preferred_element_type)
    return _conv_vjp(cfg, True, lhs, rhs)


def _config(window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
            batch_group_count, precision, preferred_element_type) -> tuple:
    """The static arguments, in :data:`_CONV_STATIC`'s order, as a hashable tuple."""
    return (tuple(window_strides), _freeze(padding), _freeze(lhs_dilation), _freeze(rhs_dilation),
            _freeze(dimension_numbers), feature_group_count, batch_group_count, _freeze(precision),
            preferred_element_type)


def _freeze(v):
    """Lists to tuples (hashable, for a static argument); tuples, named ones included, stay as they are."""
    if isinstance(v, list):
        return tuple(_freeze(e) for e in v)
    return v


def _conv(cfg, lhs, rhs):
    if _small_map(cfg, lhs, rhs):
        return _im2col(cfg, lhs, rhs)
    return jax.lax.conv_general_dilated(lhs, rhs, **dict(zip(_CONV_STATIC, cfg)))


def _undilated(d) -> bool:
    return d is None or all(v == 1 for v in (d if isinstance(d, tuple) else (d,)))


def _nhwc(cfg, lhs) -> bool:
    """An NHWC/HWIO convolution without dilations or groups."""
    _, _, lhs_dil, rhs_dil, dn, groups, bgroups, _, _ = cfg
    if lhs.ndim != 4 or dn is None:
        return False
    nhwc = jax.lax.conv_dimension_numbers(lhs.shape, (3, 3, 1, 1), ("NHWC", "HWIO", "NHWC"))
    return (_undilated(lhs_dil) and _undilated(rhs_dil) and groups == 1 and bgroups == 1
            and jax.lax.conv_dimension_numbers(lhs.shape, (3, 3, 1, 1), dn) == nhwc)


def _flippable(cfg, lhs):
    return all(s == 1 for s in cfg[0]) and not isinstance(cfg[1], str) and _nhwc(cfg, lhs)


def _pads(cfg, x_hw, k_hw) -> tuple:
    padding = cfg[1]
    return jax.lax.padtype_to_pads(x_hw, k_hw, cfg[0], padding) if isinstance(padding, str) else padding


def _small_map(cfg, lhs, rhs) -> bool:
    """Whether XLA:CPU would swap this convolution's operands, or those of its input gradient's convolution
    (the input or the output map has fewer positions than the kernel has taps), and the patch product is used
    instead (not under :func:`conv_primitives`)."""
    if _PRIMITIVES.get() or not execution.on_cpu() or not _nhwc(cfg, lhs):
        return False
    (h, w), (kh, kw) = lhs.shape[1:3], rhs.shape[:2]
    (plh, phh), (plw, phw) = _pads(cfg, (h, w), (kh, kw))
    ho, wo = (h + plh + phh - kh) // cfg[0][0] + 1, (w + plw + phw - kw) // cfg[0][1] + 1
    return min(h * w, ho * wo) < kh * kw  # XLA's condition for the swap (jaxlib 0.10.2)


#: The name scope of :func:`_im2col`'s operations (how :mod:`~jaxviz.models.layerwise` tells a traced program
#: that still has patch products, from a function jitted outside :func:`conv_primitives`).
PATCH_SCOPE = "jaxviz_patch_conv"


def _im2col(cfg, x, rhs):
    """The convolution as a matrix product over patches (NHWC/HWIO, any strides and padding)."""
    with jax.named_scope(PATCH_SCOPE):
        return _im2col_ops(cfg, x, rhs)


def _im2col_ops(cfg, x, rhs):
    kh, kw, ci, co = rhs.shape
    windows = _strided_windows(x, (kh, kw), cfg[0], _pads(cfg, x.shape[1:3], (kh, kw)), 0)
    n, ho, wo, _ = windows[0].shape
    out = jnp.dot(jnp.concatenate(windows, -1).reshape(-1, kh * kw * ci), rhs.reshape(kh * kw * ci, co),
                  precision=cfg[7], preferred_element_type=cfg[8])
    return out.reshape(n, ho, wo, co)


def _patches_pay(lhs_shape, g_shape) -> bool:
    """Whether the patch-matrix input gradient is the faster one here (XLA:CPU, small maps or RGB input)."""
    rows = g_shape[0] * g_shape[1] * g_shape[2]
    return execution.on_cpu() and (rows <= PATCH_ROWS or lhs_shape[3] <= PATCH_CHANNELS)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _conv_vjp(cfg, patches, lhs, rhs):
    return _conv(cfg, lhs, rhs)


def _conv_fwd(cfg, patches, lhs, rhs):
    return _conv(cfg, lhs, rhs), (lhs, rhs)


def _conv_bwd(cfg, patches, res, g):
    lhs, rhs = res
    _, rhs_vjp = jax.vjp(lambda w: _conv(cfg, lhs, w), rhs)
    (g_rhs,) = rhs_vjp(g)
    if not _flippable(cfg, lhs) or _small_map(cfg, lhs, rhs):  # the latter: _conv is the patch product
        _, lhs_vjp = jax.vjp(lambda x: _conv(cfg, x, rhs), lhs)
        (g_lhs,) = lhs_vjp(g)
    elif patches and _patches_pay(lhs.shape, g.shape):
        w = rhs.astype(g.dtype)
        _, lhs_vjp = jax.vjp(lambda x: _im2col(cfg, x, w), lhs.astype(g.dtype))
        g_lhs = lhs_vjp(g)[0].astype(lhs.dtype)
    else:
        kh, kw = rhs.shape[:2]
        (plh, phh), (plw, phw) = cfg[1]
        flipped = jnp.swapaxes(rhs[::-1, ::-1], 2, 3).astype(g.dtype)
        g_lhs = jax.lax.conv_general_dilated(
            g, flipped, (1, 1), ((kh - 1 - plh, kh - 1 - phh), (kw - 1 - plw, kw - 1 - phw)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=cfg[7],
            preferred_element_type=cfg[8]).astype(lhs.dtype)  # (H + pl + ph - k + 1) + (k - 1 - pl) + ... = H
    return g_lhs, g_rhs


_conv_vjp.defvjp(_conv_fwd, _conv_bwd)
