"""Style-transfer losses: Gram matrices, content, style and total-variation costs.

Pure ``jax.numpy`` functions, jitted, differentiable, and usable inside
``jit``/``vmap``/``grad``. Activations are channels-last, ``(..., H, W, C)``,
as the jaxviz models return them; leading axes (a batch of one, say) are
summed over, as the course's code does.

The defaults of the course names are the course's exact formulas
(deeplearning.ai, "Art generation with neural style transfer", which are
the ones of Gatys et al.'s paper)::

    content_cost(a_C, a_G)      = sum((a_C - a_G)**2) / (4 * nH * nW * nC)
    layer_style_cost(a_S, a_G)  = sum((G_S - G_G)**2) / (4 * nC**2 * (nH * nW)**2)
    style_cost(S, G, weights)   = sum_l weights[l] * layer_style_cost(S[l], G[l])
    total_cost(Jc, Js, alpha=10, beta=40) = alpha * Jc + beta * Js

The normalisations other projects use are selectable by name:

=============  ==========================================  ===============================
name           Gram matrix, then distance                  used by
=============  ==========================================  ===============================
``"course"``   G / (2 C H W), summed squared difference    the course, Gatys et al. (paper)
``"chw"``      G / (C H W), mean squared difference        neural-style (Johnson), the
                                                           PyTorch tutorial
``"hw"``       G / (H W), mean squared difference          Gatys' own PyTorch code,
                                                           pystiche, the TF/Keras tutorial
``"relative"``  G / (C H W), summed squared difference      jaxviz's ``gatys`` preset: each
               over the target's summed square             layer's term is a relative error,
                                                           so no layer's or network's
                                                           activation scale sets the balance
=============  ==========================================  ===============================

``"course"`` written as ``G / (2 C H W)`` is the same number as the course's
formula when the style and generated activations have the same size, and
stays meaningful when they do not (a style image at another scale). Content
costs: ``"course"`` (above), ``"mse"`` (mean squared error), ``"half_sum"``
(the paper's ``0.5 * sum``) and ``"relative"`` (``sum((a_C - a_G)**2) / sum(a_C**2)``).

Why ``"relative"``: with the other normalisations a layer's cost grows with
the square (content) or fourth power (style) of its activations' scale, which
differs from layer to layer and from one set of VGG weights to another
(torchvision's, Keras/Caffe's, a fine-tuned copy): a style weight tuned for
one set takes all content away, or no style, on another. Divided by the
target's own size, each term is scale-free: multiplying any layer's
activations by a constant leaves the objective as it was. (crowsonkb's
style-transfer balances its terms for the same reason, by the difference's
L1 norm.)

Example:
    >>> import jax.numpy as jnp
    >>> from jaxviz import losses
    >>> a = jnp.ones((1, 4, 4, 3))
    >>> losses.gram_matrix(a).shape
    (1, 3, 3)
    >>> float(losses.content_cost(a, 2 * a))          # 48 / (4 * 48)
    0.25

References:
    L. A. Gatys, A. S. Ecker, M. Bethge, "Image Style Transfer Using
    Convolutional Neural Networks", CVPR 2016. J. Johnson, neural-style (2015).
    H. A. Aly, E. Dubois, "Image up-sampling using total-variation
    regularization", IEEE TIP 2005 (total variation); A. Mahendran, A.
    Vedaldi, "Understanding Deep Image Representations by Inverting Them",
    CVPR 2015 (TV as an image prior).
"""

from __future__ import annotations

import functools
import numbers
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp

from ..errors import InputError

__all__ = [
    "CONTENT_NORMALIZATIONS",
    "STYLE_NORMALIZATIONS",
    "TV_KINDS",
    "gram_matrix",
    "gram_target",
    "gram_cost",
    "content_cost",
    "layer_style_cost",
    "style_cost",
    "total_cost",
    "total_variation",
]

CONTENT_NORMALIZATIONS = ("course", "mse", "half_sum", "relative")
STYLE_NORMALIZATIONS = ("course", "chw", "hw", "relative")
GRAM_NORMALIZATIONS = (None, "hw", "chw")
#: keeps a relative cost finite against an all-zero target (a layer that never fires on the content image)
_TINY = 1e-30
TV_KINDS = ("l1", "squared")
_HIGHEST = jax.lax.Precision.HIGHEST


# --------------------------------------------------------------------------- checks (trace time)


def _activations(a: Any, name: str, min_ndim: int = 3) -> jax.Array:
    shape = getattr(a, "shape", None)
    if shape is None:
        raise InputError(f"{name}: expected an array of activations (..., H, W, C), got {type(a).__name__}")
    if len(shape) < min_ndim:
        raise InputError(f"{name}: expected activations of shape (..., H, W, C), got shape {tuple(shape)}")
    if not jnp.issubdtype(a.dtype, jnp.floating):
        raise InputError(f"{name}: expected a floating dtype, got {a.dtype}")
    return a


def _same_shape(a: Any, b: Any, name_a: str, name_b: str) -> None:
    if tuple(a.shape) != tuple(b.shape):
        raise InputError(f"{name_b}: expected the shape of {name_a}, {tuple(a.shape)}; got {tuple(b.shape)}")


def _choice(value: Any, name: str, choices: Sequence[Any]) -> Any:
    if value not in choices:
        raise InputError(f"{name}: expected one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


# --------------------------------------------------------------------------- Gram matrices


@functools.partial(jax.jit, static_argnames=("normalize",))
def gram_matrix(a: jax.Array, *, normalize: str | None = None) -> jax.Array:
    """The Gram (style) matrix of channel-last activations.

    ``G[..., i, j] = sum_{h, w} a[..., h, w, i] * a[..., h, w, j]``: with the
    course's unrolled ``A`` of shape (nC, nH*nW), ``G = A @ A.T``.

    Args:
      a: (..., H, W, C) activations.
      normalize: None (unnormalised, the default), ``"hw"`` to divide by H*W,
        ``"chw"`` to divide by C*H*W.

    Returns:
      (..., C, C) symmetric positive semi-definite matrices.

    Raises:
      InputError: ``a`` has fewer than 3 axes or ``normalize`` is unknown.

    Example:
      >>> A = jnp.arange(6.0).reshape(3, 2)            # (nC, nH*nW), the course's layout
      >>> gram_matrix(A.T[None, None])[0]              # == A @ A.T
      Array([[ 1.,  3.,  5.],
             [ 3., 13., 23.],
             [ 5., 23., 41.]], dtype=float32)
    """
    _activations(a, "a")
    _choice(normalize, "normalize", GRAM_NORMALIZATIONS)
    h, w, c = a.shape[-3:]
    g = jnp.einsum("...hwi,...hwj->...ij", a, a, precision=_HIGHEST)
    if normalize == "hw":
        g = g / (h * w)
    elif normalize == "chw":
        g = g / (c * h * w)
    return g


@functools.partial(jax.jit, static_argnames=("normalization",))
def gram_target(a_S: jax.Array, *, normalization: str = "course") -> jax.Array:
    """The scaled Gram matrix a style loss compares, computed once per style image.

    ``"course"``: G / (2 C H W); ``"chw"``: G / (C H W); ``"hw"``: G / (H W).
    Scaled by its own image's size, so targets from style images of other
    sizes (or blends of several) compare fairly with the generated image's.

    Args:
      a_S: (..., H, W, C) activations of the style image.
      normalization: one of :data:`STYLE_NORMALIZATIONS`.

    Returns:
      (..., C, C) array.
    """
    _activations(a_S, "a_S")
    _choice(normalization, "normalization", STYLE_NORMALIZATIONS)
    h, w, c = a_S.shape[-3:]
    if normalization == "course":
        return gram_matrix(a_S) / (2.0 * c * h * w)
    return gram_matrix(a_S, normalize="chw" if normalization == "relative" else normalization)


@functools.partial(jax.jit, static_argnames=("normalization",))
def gram_cost(target: jax.Array, a_G: jax.Array, *, normalization: str = "course") -> jax.Array:
    """One layer's style cost against a precomputed :func:`gram_target`.

    Args:
      target: (..., C, C) from :func:`gram_target` (same ``normalization``),
        or a weighted blend of several.
      a_G: (..., H, W, C) activations of the generated image.
      normalization: ``"course"`` sums the squared differences; ``"chw"`` and
        ``"hw"`` average them over the C*C entries (and any leading axes);
        ``"relative"`` divides their sum by the target's summed square.

    Returns:
      A scalar.
    """
    _activations(a_G, "a_G")
    c = a_G.shape[-1]
    if target.shape[-2:] != (c, c):
        raise InputError(f"target: expected a ({c}, {c}) Gram matrix for a_G's {c} channels, got {tuple(target.shape)}")
    d = gram_target(a_G, normalization=normalization) - target
    if normalization == "relative":
        return jnp.sum(d * d) / (jnp.sum(target * target) + _TINY)
    return jnp.sum(d * d) if normalization == "course" else jnp.mean(d * d)


# --------------------------------------------------------------------------- the course's costs


@functools.partial(jax.jit, static_argnames=("normalization",))
def content_cost(a_C: jax.Array, a_G: jax.Array, *, normalization: str = "course") -> jax.Array:
    """Content cost between two activation volumes of one layer.

    ``"course"`` (default): ``sum((a_C - a_G)**2) / (4 * nH * nW * nC)``;
    ``"mse"``: ``mean((a_C - a_G)**2)``; ``"half_sum"``: ``0.5 * sum(...)``
    (Gatys et al., eq. 1).

    Args:
      a_C: (..., nH, nW, nC) activations of the content image.
      a_G: the generated image's activations, same shape.
      normalization: one of :data:`CONTENT_NORMALIZATIONS`.

    Returns:
      A scalar (leading axes, e.g. a batch of one, are summed for "course"
      and "half_sum", averaged for "mse").

    Raises:
      InputError: shapes differ or are not (..., H, W, C).

    Example:
      >>> content_cost(jnp.zeros((1, 2, 2, 1)), jnp.ones((1, 2, 2, 1)))   # 4 / (4 * 4)
      Array(0.25, dtype=float32)
    """
    _activations(a_C, "a_C")
    _activations(a_G, "a_G")
    _same_shape(a_C, a_G, "a_C", "a_G")
    _choice(normalization, "normalization", CONTENT_NORMALIZATIONS)
    h, w, c = a_G.shape[-3:]
    d = a_C - a_G
    if normalization == "mse":
        return jnp.mean(d * d)
    if normalization == "half_sum":
        return 0.5 * jnp.sum(d * d)
    if normalization == "relative":
        return jnp.sum(d * d) / (jnp.sum(a_C * a_C) + _TINY)
    return jnp.sum(d * d) / (4.0 * h * w * c)


@functools.partial(jax.jit, static_argnames=("normalization",))
def layer_style_cost(a_S: jax.Array, a_G: jax.Array, *, normalization: str = "course") -> jax.Array:
    """Style cost of one layer: the distance between the two Gram matrices.

    ``"course"`` (default): ``sum((G_S - G_G)**2) / (4 * nC**2 * (nH * nW)**2)``
    with unnormalised Gram matrices; ``"chw"``, ``"hw"``: see the module
    docstring. ``a_S`` may have another height and width than ``a_G`` (each
    Gram matrix is then scaled by its own size).

    Args:
      a_S: (..., nH, nW, nC) activations of the style image.
      a_G: (..., nH', nW', nC) activations of the generated image.
      normalization: one of :data:`STYLE_NORMALIZATIONS`.

    Returns:
      A scalar.

    Raises:
      InputError: channel counts differ, or an argument is not (..., H, W, C).

    Example:
      >>> a = jnp.ones((1, 2, 2, 1))
      >>> layer_style_cost(a, 2 * a)        # G_S = 4, G_G = 16: 144 / (4 * 1 * 16)
      Array(2.25, dtype=float32)
    """
    _activations(a_S, "a_S")
    _activations(a_G, "a_G")
    if a_S.shape[-1] != a_G.shape[-1]:
        raise InputError(f"a_G: expected {a_S.shape[-1]} channels like a_S, got shape {tuple(a_G.shape)}")
    _choice(normalization, "normalization", STYLE_NORMALIZATIONS)
    return gram_cost(gram_target(a_S, normalization=normalization), a_G, normalization=normalization)


def _layer_weights(layer_weights: Any) -> tuple[tuple[str, float], ...]:
    if isinstance(layer_weights, Mapping):
        items = tuple(layer_weights.items())
    else:
        try:
            items = tuple((name, weight) for name, weight in layer_weights)
        except (TypeError, ValueError):
            raise InputError(
                "layer_weights: expected a mapping or a sequence of (layer, weight) pairs, "
                f"got {layer_weights!r}"
            ) from None
    if not items:
        raise InputError("layer_weights: expected at least one (layer, weight) pair, got none")
    return items


def style_cost(
    taps_S: Mapping[str, jax.Array],
    taps_G: Mapping[str, jax.Array],
    layer_weights: Mapping[str, float] | Sequence[tuple[str, float]],
    *,
    normalization: str = "course",
) -> jax.Array:
    """Weighted sum of per-layer style costs, ``sum_l lambda_l * layer_style_cost``.

    Args:
      taps_S: layer name -> style image activations (..., H, W, C).
      taps_G: layer name -> generated image activations.
      layer_weights: ``{layer: lambda}`` or the course's ``STYLE_LAYERS`` list
        of ``(layer, lambda)`` pairs.
      normalization: one of :data:`STYLE_NORMALIZATIONS`.

    Returns:
      A scalar.

    Raises:
      InputError: a weighted layer is missing from ``taps_S`` or ``taps_G``.

    Example::

        STYLE_LAYERS = [("relu1_1", 0.5), ("relu2_1", 0.5)]
        J = style_cost(taps_S, taps_G, STYLE_LAYERS)
    """
    total = jnp.zeros((), jnp.float32)
    for name, weight in _layer_weights(layer_weights):
        for arg, taps in (("taps_S", taps_S), ("taps_G", taps_G)):
            if name not in taps:
                raise InputError(f"{arg}: expected activations for layer {name!r}, got layers {sorted(taps)}")
        total = total + weight * layer_style_cost(taps_S[name], taps_G[name], normalization=normalization)
    return total


def total_cost(J_content: Any, J_style: Any, alpha: Any = 10, beta: Any = 40) -> Any:
    """The course's total cost ``alpha * J_content + beta * J_style``.

    Plain arithmetic on whatever it is given: Python floats stay float64
    (the course's ``35.34667875478276`` exactly), JAX arrays and tracers
    stay JAX, so it works eagerly and inside ``jit``/``grad``.

    Args:
      J_content: content cost (scalar or array).
      J_style: style cost.
      alpha: content weight (10 in the course).
      beta: style weight (40 in the course).

    Returns:
      ``alpha * J_content + beta * J_style``.

    Raises:
      InputError: an argument that is not a number or an array (a string, a
        bool, None).

    Example:
      >>> import numpy as np
      >>> np.random.seed(3)
      >>> total_cost(np.random.randn(), np.random.randn())
      35.34667875478276
    """
    for name, v in (("J_content", J_content), ("J_style", J_style), ("alpha", alpha), ("beta", beta)):
        if isinstance(v, bool) or not (isinstance(v, numbers.Number) or hasattr(v, "dtype")):
            raise InputError(f"{name}: expected a number or an array, got {type(v).__name__} {v!r}")
    return alpha * J_content + beta * J_style


# --------------------------------------------------------------------------- total variation


@functools.partial(jax.jit, static_argnames=("kind", "reduction"))
def total_variation(x: jax.Array, *, kind: str = "l1", reduction: str = "sum") -> jax.Array:
    """Anisotropic total variation of images, a smoothness prior.

    ``"l1"``: ``sum |x[h+1, w] - x[h, w]| + sum |x[h, w+1] - x[h, w]|``
    (``tf.image.total_variation``); ``"squared"``: the same with squared
    differences (neural-style's TV loss).

    Args:
      x: (..., H, W, C) images (or activations).
      kind: ``"l1"`` or ``"squared"``.
      reduction: ``"sum"`` over all differences, or ``"mean"`` (the vertical
        and horizontal means, added).

    Returns:
      A scalar; 0 for a constant image.

    Example:
      >>> total_variation(jnp.array([[[0.], [1.]], [[1.], [3.]]]))  # |1|+|2| + |1|+|2|
      Array(6., dtype=float32)
    """
    _activations(x, "x")
    _choice(kind, "kind", TV_KINDS)
    _choice(reduction, "reduction", ("sum", "mean"))
    dh = x[..., 1:, :, :] - x[..., :-1, :, :]
    dw = x[..., :, 1:, :] - x[..., :, :-1, :]
    f = jnp.abs if kind == "l1" else jnp.square
    r = jnp.sum if reduction == "sum" else jnp.mean
    return r(f(dh)) + r(f(dw))
