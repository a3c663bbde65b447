"""Class activation maps: Grad-CAM at any named tap, CAM for GAP + linear heads, guided Grad-CAM.

Grad-CAM reads a layer through the model contract's layer-gradient seam
(:func:`jaxviz.models.protocol.layer_gradient`): one forward pass gives the
layer's activation ``A`` (N, h, w, C) and a zero perturbation added at the
layer gives ``d score / d A``, wherever the layer sits (inside a residual block
too). The map is ``sum_c mean_hw(d score / d A)_c * A_c``, rectified by default.

Differences from Captum, deliberately: ``grad_cam`` applies the ReLU by
default (Selvaraju et al. do; Captum's ``LayerGradCam`` leaves it off:
``relu=False`` matches it), and upsampling (``upsample=True``) is bilinear by
default (Captum's ``interpolate`` and ``GuidedGradCam`` use nearest:
``interpolation="nearest"`` matches it for integer scale factors).

References: R. R. Selvaraju et al., "Grad-CAM: Visual Explanations from Deep
Networks via Gradient-based Localization", ICCV 2017; B. Zhou et al.,
"Learning Deep Features for Discriminative Localization", CVPR 2016 (CAM).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from .. import _checks
from ..errors import InputError
from . import _common
from ..models import protocol
from ..execution import reverse_mode
from .guided import guided_backprop

__all__ = ["grad_cam", "cam", "guided_grad_cam", "INTERPOLATIONS"]

INTERPOLATIONS = ("bilinear", "nearest")


def _spatial(net, a, layer):
    if a.ndim != 4:
        raise InputError(f"layer: expected a spatial tap with activations (N, h, w, C), got {layer!r} with shape "
                         f"{a.shape} in {protocol.name_of(net)}")
    return a


def _activation(net, params, images, layer):
    return _spatial(net, protocol.taps(net, params, images, layer)[layer], layer)


@functools.partial(jax.jit, static_argnames=("net", "target_fn", "layer", "relu", "size", "interpolation"))
def _grad_cam_core(net, params, images, target_idx, *, target_fn, layer, relu, size, interpolation):
    _common.count_trace("grad_cam")
    acts, g, _ = protocol.layer_gradient(reverse_mode(net), params, images, layer,
                                         lambda out: _common.scores(out, target_fn, target_idx))
    _spatial(net, acts, layer)
    weights = jnp.mean(g.astype(jnp.float32), axis=(1, 2))  # float32 maps from a bfloat16/float16 model too
    maps = jnp.einsum("nhwc,nc->nhw", acts.astype(jnp.float32), weights, precision=jax.lax.Precision.HIGHEST)
    if relu:
        maps = jnp.maximum(maps, 0)
    if size is not None:
        maps = _common.upsample(maps, size, interpolation)
    return maps


def _common_checks(net, params, images, layer, upsample, interpolation):
    images = _common.check_images(images, net)
    layer = _common.layer(net, params, images, layer)
    _checks.one_of(interpolation, "interpolation", INTERPOLATIONS)
    size = tuple(images.shape[1:3]) if upsample else None
    return layer, images, size


def grad_cam(
    net: Any,
    params: Any,
    images: jax.Array,
    target: Any,
    *,
    layer: str | None = None,
    relu: bool = True,
    upsample: bool = False,
    interpolation: str = "bilinear",
) -> jax.Array:
    """Grad-CAM at a named tap (Selvaraju et al. 2017).

    Args:
      net: a model with named taps: a jaxviz model, any flax.linen module
        (taps by module path), ``models.from_nnx(...)`` or ``models.from_function(...)``.
      params: the model's parameters.
      images: (N, H, W, 3) float RGB in [0, 1].
      target: class index, one index per image (N,), or a callable logits (N, K) -> (N,).
      layer: a spatial tap (e.g. ``"relu5_4"``, ``"layer4"``); None: the
        model's ``default_layer`` (VGG's last convolutional ReLU), else its
        deepest spatial tap (measured).
      relu: rectify the map (the paper does; Captum's default is off).
      upsample: resize the map to the input's (H, W).
      interpolation: ``"bilinear"`` or ``"nearest"`` (Captum) for ``upsample``.

    Returns:
      (N, h, w) maps at the layer's resolution, or (N, H, W) with ``upsample``.

    Raises:
      InputError: ``net`` is not a jaxviz model, an unknown or non-spatial ``layer``, bad ``images``/``target``.

    Example::

        heat = grad_cam(net, params, images, 207, layer="relu5_4", upsample=True)
    """
    _common.check_net(net, "grad_cam", model_only=True)
    net = _common.model(net, images)
    layer, images, size = _common_checks(net, params, images, layer, upsample, interpolation)
    fn, idx = _common.prepare_target(target, images.shape[0], net, params, images)
    return _grad_cam_core(net, params, images, idx, target_fn=fn, layer=layer, relu=bool(relu), size=size,
                          interpolation=interpolation)


@functools.partial(jax.jit, static_argnames=("net", "layer", "dense", "relu", "size", "interpolation"))
def _cam_core(net, params, images, target_idx, *, layer, dense, relu, size, interpolation):
    _common.count_trace("cam")
    acts = _activation(net, params, images, layer)
    kernel = params["params"][dense]["kernel"]
    if kernel.ndim != 2 or kernel.shape[0] != acts.shape[-1]:
        raise InputError(
            f"net: cam needs a dense layer {dense!r} fed by the global average of {layer!r} "
            f"({acts.shape[-1]} channels), got a kernel of shape {kernel.shape}"
        )
    idx, poison = _common.in_range(target_idx, kernel.shape[1])
    w = kernel[:, idx].T * poison[:, None].astype(kernel.dtype)  # (N, C); NaN rows for a traced out-of-range class
    maps = jnp.einsum("nhwc,nc->nhw", acts.astype(jnp.float32), w.astype(jnp.float32),
                      precision=jax.lax.Precision.HIGHEST)
    if relu:
        maps = jnp.maximum(maps, 0)
    if size is not None:
        maps = _common.upsample(maps, size, interpolation)
    return maps


def cam(
    net: Any,
    params: Any,
    images: jax.Array,
    target: Any,
    *,
    layer: str | None = None,
    dense: str | None = None,
    relu: bool = False,
    upsample: bool = False,
    interpolation: str = "bilinear",
) -> jax.Array:
    """Class activation map for global-average-pool + linear heads (Zhou et al. 2016).

    ``CAM_c(h, w) = sum_k W[k, c] * A_k(h, w)`` where ``A`` is the activation
    that is globally averaged and ``W`` the dense layer after it (bias left
    out). For such a head it equals ``grad_cam(relu=False) * h * w``.

    Args:
      net: a jaxviz model with a GAP + linear head; it names them in
        ``net.cam_layers = (feature_tap, dense_param_name)`` (or pass ``layer``
        and ``dense``). VGG has no such head: use :func:`grad_cam`.
      params: the model's parameters (``params["params"][dense]["kernel"]`` is (C, K)).
      images: (N, H, W, 3) float RGB in [0, 1].
      target: class index or one index per image (N,) (callables are not supported).
      layer, dense: override ``net.cam_layers``.
      relu: rectify the map (off: the paper's CAM is signed).
      upsample, interpolation: as for :func:`grad_cam`.

    Returns:
      (N, h, w) maps, or (N, H, W) with ``upsample``.

    Raises:
      InputError: the model has no GAP + linear head, a callable ``target``, bad ``images``.

    Example::

        heat = cam(net, params, images, 3, upsample=True)
    """
    _common.check_net(net, "cam", model_only=True)
    net = _common.model(net, images)
    cam_layers = getattr(net, "cam_layers", None)
    if layer is None or dense is None:
        if not cam_layers:
            raise InputError(
                f"net: cam needs a global-average-pool + linear head named in net.cam_layers (or layer= and dense=); "
                f"{protocol.name_of(net)} has none, use grad_cam"
            )
        layer = cam_layers[0] if layer is None else layer
        dense = cam_layers[1] if dense is None else dense
    layer, images, size = _common_checks(net, params, images, layer, upsample, interpolation)
    if "params" not in params or dense not in params["params"]:
        raise InputError(f"dense: expected a parameter group params['params'][{dense!r}], not found")
    fn, idx = _common.prepare_target(target, images.shape[0], net, params, images)
    if fn is not None:
        raise InputError("target: cam needs class indices (int or one per image), got a callable")
    return _cam_core(net, params, images, idx, layer=layer, dense=dense, relu=bool(relu), size=size,
                     interpolation=interpolation)


def guided_grad_cam(
    net: Any,
    params: Any,
    images: jax.Array,
    target: Any,
    *,
    layer: str | None = None,
    interpolation: str = "bilinear",
) -> jax.Array:
    """Guided Grad-CAM: guided backprop times the rectified Grad-CAM map upsampled to the input.

    Args:
      net: a jaxviz model.
      params: the model's parameters.
      images: (N, H, W, 3) float RGB in [0, 1].
      target: class index, one index per image (N,), or a callable logits (N, K) -> (N,).
      layer: the Grad-CAM tap (default as in :func:`grad_cam`).
      interpolation: upsampling of the Grad-CAM map (``"nearest"`` is Captum's ``GuidedGradCam``).

    Returns:
      (N, H, W, 3) attributions.

    Example::

        attr = guided_grad_cam(net, params, images, 207, layer="relu5_4")
    """
    maps = grad_cam(net, params, images, target, layer=layer, relu=True, upsample=True, interpolation=interpolation)
    return guided_backprop(net, params, images, target) * maps[..., None]
