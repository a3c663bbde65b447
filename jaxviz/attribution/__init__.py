"""Attribution: which pixels (or which layer positions) drive a class score.

Every method is a pure function ``method(net, params, images, target, *,
options) -> array``:

* ``net`` is a jaxviz model; gradient and perturbation methods (saliency,
  input_x_gradient, integrated_gradients, smoothgrad over those, occlusion)
  also take any ``f(params, images) -> logits``.
* ``images`` is (N, H, W, 3) float RGB in [0, 1].
* ``target`` is a class index, one index per image, or a callable mapping
  logits (N, K) to scores (N,).
* Pixel methods return (N, H, W, 3); layer methods (``grad_cam``, ``cam``)
  return (N, h, w), or (N, H, W) with ``upsample=True``.

Each method is jitted internally (a second call with the same shapes does not
re-trace) and can itself be wrapped in ``jax.jit`` or ``jax.vmap``. Sampling
methods (integrated_gradients, smoothgrad, occlusion) have one ``batch_size``
knob: images per forward pass; results do not depend on it.

:data:`METHODS` maps names to the functions, for command-line tools and
conformance tests; :data:`LAYER_METHODS` names those returning layer maps.

Example::

    from jaxviz import attribution, models, weights
    net = models.vgg19(); params = weights.random(net)
    attr = attribution.integrated_gradients(net, params, images, target=207, steps=32)
    heat = attribution.grad_cam(net, params, images, 207, layer="relu5_4", upsample=True)
"""

from __future__ import annotations

from typing import Callable

from . import metrics
from .ablation import feature_ablation, rise, rise_masks
from .surrogate import lime
from . import propagation
from .propagation import lrp
from .rescale import deeplift, deeplift_shap
from .shap import gradient_shap, kernel_shap
from .gradcam import cam, grad_cam, guided_grad_cam
from .cams import (
    CAM_METHODS,
    ablation_cam,
    cam_map,
    eigen_cam,
    eigen_grad_cam,
    full_grad,
    grad_cam_elementwise,
    grad_cam_plus_plus,
    hires_cam,
    layer_cam,
    score_cam,
    xgrad_cam,
)
from .guided import deconv_relu, deconvnet, guided_backprop, guided_relu
from .integrated import integrated_gradients, quadrature
from .occlusion import AUTO_GROUPS, AUTO_GROUPS_SAVED_MACS, AUTO_THRESHOLD, OCCLUSION_METHODS, occlusion, window_starts
from .occlusion import auto_groups as occlusion_auto_groups
from .occlusion import plan as occlusion_plan
from .saliency import input_x_gradient, saliency
from .smoothgrad import smoothgrad

METHODS: dict[str, Callable] = {
    "saliency": saliency,
    "input_x_gradient": input_x_gradient,
    "integrated_gradients": integrated_gradients,
    "smoothgrad": smoothgrad,
    "guided_backprop": guided_backprop,
    "deconvnet": deconvnet,
    "grad_cam": grad_cam,
    "cam": cam,
    "guided_grad_cam": guided_grad_cam,
    "occlusion": occlusion,
    "grad_cam_plus_plus": grad_cam_plus_plus,
    "xgrad_cam": xgrad_cam,
    "hires_cam": hires_cam,
    "grad_cam_elementwise": grad_cam_elementwise,
    "layer_cam": layer_cam,
    "eigen_cam": eigen_cam,
    "eigen_grad_cam": eigen_grad_cam,
    "score_cam": score_cam,
    "ablation_cam": ablation_cam,
    "full_grad": full_grad,
    "feature_ablation": feature_ablation,
    "rise": rise,
    "gradient_shap": gradient_shap,
    "kernel_shap": kernel_shap,
    "lime": lime,
    "lrp": lrp,
    "deeplift": deeplift,
    "deeplift_shap": deeplift_shap,
}

#: Methods returning (N, h, w) layer maps (upsample=True gives (N, H, W)).
LAYER_METHODS = frozenset({"grad_cam", "cam", *CAM_METHODS})
#: Methods that accept any f(params, images) -> logits in place of a jaxviz model.
CALLABLE_METHODS = frozenset({"saliency", "input_x_gradient", "integrated_gradients", "smoothgrad", "occlusion",
                              "feature_ablation", "rise", "gradient_shap", "kernel_shap", "lime", "lrp",
                              "deeplift", "deeplift_shap"})
#: Methods returning one value per input pixel, (N, H, W) (the rest of the pixel methods give (N, H, W, 3)).
PIXEL_MAP_METHODS = frozenset({"full_grad", "rise"})
#: Methods with a batch_size knob.
SAMPLING_METHODS = frozenset({"integrated_gradients", "smoothgrad", "occlusion", "score_cam", "ablation_cam",
                              "feature_ablation", "rise", "gradient_shap", "kernel_shap", "lime", "deeplift",
                              "deeplift_shap"})

__all__ = [
    "METHODS",
    "LAYER_METHODS",
    "CALLABLE_METHODS",
    "SAMPLING_METHODS",
    "PIXEL_MAP_METHODS",
    "feature_ablation",
    "rise",
    "rise_masks",
    "gradient_shap",
    "kernel_shap",
    "lime",
    "lrp",
    "propagation",
    "deeplift",
    "deeplift_shap",
    "AUTO_GROUPS",
    "AUTO_GROUPS_SAVED_MACS",
    "AUTO_THRESHOLD",
    "OCCLUSION_METHODS",
    "cam",
    "CAM_METHODS",
    "cam_map",
    "grad_cam_plus_plus",
    "xgrad_cam",
    "hires_cam",
    "grad_cam_elementwise",
    "layer_cam",
    "eigen_cam",
    "eigen_grad_cam",
    "score_cam",
    "ablation_cam",
    "full_grad",
    "deconv_relu",
    "deconvnet",
    "grad_cam",
    "guided_backprop",
    "guided_grad_cam",
    "guided_relu",
    "input_x_gradient",
    "integrated_gradients",
    "metrics",
    "occlusion",
    "occlusion_auto_groups",
    "occlusion_plan",
    "quadrature",
    "saliency",
    "smoothgrad",
    "window_starts",
]
