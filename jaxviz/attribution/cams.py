"""The CAM family beyond Grad-CAM: Grad-CAM++, XGrad-CAM, HiResCAM, element-wise Grad-CAM, LayerCAM, Eigen-CAM,
Eigen-Grad-CAM, Score-CAM and Ablation-CAM, on any model through the model contract.

Every method reads a spatial tap's activation ``A`` (N, h, w, C) and, for the
gradient methods, ``G = d score / d A`` through the contract's layer-gradient
seam (one forward and one backward pass down to the tap), then combines them:

==========================  ==========================================================================
method                      map (summed over channels c, before the ReLU)
==========================  ==========================================================================
``grad_cam``                ``mean_hw(G_c) * A_c`` (Selvaraju et al.)
``grad_cam_plus_plus``      ``sum_hw(relu(G_c) * a_c) * A_c``, ``a = G^2 / (2 G^2 + sum_hw(A_c) G^3)``
                            where ``G != 0`` (Chattopadhyay et al., eq. 19)
``xgrad_cam``               ``sum_hw(G_c * A_c / sum_hw(A_c)) * A_c`` (Fu et al.)
``hires_cam``               ``G_c * A_c`` (Draelos & Carin)
``grad_cam_elementwise``    ``relu(G_c * A_c)``
``layer_cam``               ``relu(G_c) * A_c`` (Jiang et al.)
``eigen_cam``               the first principal component of ``A`` (Muhammad & Yeasin), no gradient
``eigen_grad_cam``          the first principal component of ``G * A``
``score_cam``               ``softmax_c(score(x * norm(up(A_c)))) * A_c`` (Wang et al.), no gradient
``ablation_cam``            ``(score - score_without_c) / score * A_c`` (Desai & Ramaswamy), no gradient
==========================  ==========================================================================

then ReLU (``relu=True``), optionally min-max scaling per image
(``normalize=True``) and bilinear resizing to the input (``upsample=True``;
with both, the resized map is scaled again, as pytorch-grad-cam does: resizing
can lower the maximum).

Matching pytorch-grad-cam 1.5: it always rectifies, min-max scales and resizes
(cv2's bilinear, which ``upsample=True`` reproduces); pass ``normalize=True,
upsample=True``. jaxviz's default returns the layer-resolution map with its
values (``normalize=False, upsample=False``), as ``grad_cam`` does, because a
metric or a comparison across images needs the values a min-max scaling
throws away. Several layers (``layer=["relu4_3", "relu5_3"]``) are combined
as pytorch-grad-cam combines them: each map rectified, scaled and resized to
the input, then averaged and scaled again (so several layers imply
``normalize=True, upsample=True``).

``eigen_smooth=True`` replaces the channel sum by the first principal
component of the weighted activations (pytorch-grad-cam's option).
The sign of a principal component is arbitrary (LAPACK returns either);
jaxviz fixes it so that the projection correlates positively with the channel
sum of what was projected, the same on every backend. pytorch-grad-cam keeps
LAPACK's sign, so its Eigen-CAM maps can come out inverted (then ReLU'd away).

``aug_smooth=True`` averages the (scaled) maps of six test-time augmentations,
pytorch-grad-cam's default ``ttach`` set: no flip or a horizontal flip, times
pixel values multiplied by 0.9, 1 or 1.1, each map flipped back.

Score-CAM's masked forwards and Ablation-CAM's ablated forwards run as one
vmapped program in chunks of ``batch_size`` (the one knob); Ablation-CAM
computes only the network after the layer when the model can be entered at a
tap (jaxviz's own models: ``apply(..., start=layer)``), where pytorch-grad-cam
runs the whole network for every channel; other models run it whole, with the
channel removed through the perturbation seam. Both methods take their masks
as pytorch-grad-cam does: Score-CAM resizes ``A_c`` with align-corners
bilinear interpolation (torch's ``UpsamplingBilinear2d``) and scales it to
[0, 1]; Ablation-CAM sets the channel to 0, or, when the layer's activation can
be negative, to its minimum minus 1e7.

References: A. Chattopadhyay et al., "Grad-CAM++", WACV 2018; R. Fu et al.,
"Axiom-based Grad-CAM", BMVC 2020; R. L. Draelos, L. Carin, "Use HiResCAM
instead of Grad-CAM", 2020; P.-T. Jiang et al., "LayerCAM", IEEE TIP 2021;
M. B. Muhammad, M. Yeasin, "Eigen-CAM", IJCNN 2020; H. Wang et al.,
"Score-CAM", CVPR Workshops 2020; S. Desai, H. G. Ramaswamy, "Ablation-CAM",
WACV 2020; J. Gildenblat et al., pytorch-grad-cam.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .. import _checks
from ..errors import InputError
from ..execution import chunked_map, reverse_mode
from ..models import protocol
from . import _common

__all__ = [
    "CAM_METHODS",
    "GRADIENT_CAMS",
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
    "principal_projection",
]

#: the methods that combine the activation with its gradient (one backward pass)
GRADIENT_CAMS = ("grad_cam", "grad_cam_plus_plus", "xgrad_cam", "hires_cam", "grad_cam_elementwise", "layer_cam",
                 "eigen_grad_cam")
#: every method :func:`cam_map` computes
CAM_METHODS = GRADIENT_CAMS + ("eigen_cam", "score_cam", "ablation_cam")
_HIGHEST = jax.lax.Precision.HIGHEST


def principal_projection(x: jax.Array) -> jax.Array:
    """(N, h, w, C) -> (N, h, w): each image's positions projected on the first principal component of its
    channels (centred per channel over positions; pytorch-grad-cam's ``get_2d_projection``), signed so that the
    projection correlates positively with the channel sum of ``x``."""
    n, h, w, c = x.shape
    m = jnp.nan_to_num(x.astype(jnp.float32)).reshape(n, h * w, c)
    m = m - m.mean(axis=1, keepdims=True)
    _, _, vt = jnp.linalg.svd(m, full_matrices=False)
    proj = jnp.einsum("npc,nc->np", m, vt[:, 0], precision=_HIGHEST)
    total = x.astype(jnp.float32).reshape(n, h * w, c).sum(-1)
    sign = jnp.where(jnp.sum(proj * (total - total.mean(1, keepdims=True)), axis=1) < 0, -1.0, 1.0)
    # NaN entries count as 0 in the SVD (pytorch-grad-cam's choice); an image whose input is NaN throughout (a
    # traced out-of-range target's poisoned gradient) stays NaN rather than getting a plausible map
    poisoned = jnp.all(jnp.isnan(x.reshape(n, -1)), axis=1)
    return jnp.where(poisoned[:, None], jnp.nan, proj * sign[:, None]).reshape(n, h, w)


def _combine(method: str, a: jax.Array, g: jax.Array | None, eigen_smooth: bool) -> jax.Array:
    """The (N, h, w) map of a gradient method (before the ReLU)."""
    if method == "eigen_cam":
        return principal_projection(a)
    if method == "eigen_grad_cam":
        return principal_projection(g * a)
    if method == "grad_cam":
        weighted = a * jnp.mean(g, axis=(1, 2), keepdims=True)
    elif method == "grad_cam_plus_plus":
        g2 = g * g
        g3 = g2 * g
        total = jnp.sum(a, axis=(1, 2), keepdims=True)
        alpha = g2 / (2 * g2 + total * g3 + 1e-6)
        alpha = jnp.where(g != 0, alpha, 0.0)
        weighted = a * jnp.sum(jnp.maximum(g, 0) * alpha, axis=(1, 2), keepdims=True)
    elif method == "xgrad_cam":
        total = jnp.sum(a, axis=(1, 2), keepdims=True)
        weighted = a * jnp.sum(g * a / (total + 1e-7), axis=(1, 2), keepdims=True)
    elif method == "hires_cam":
        weighted = g * a
    elif method == "grad_cam_elementwise":
        weighted = jnp.maximum(g * a, 0)
    elif method == "layer_cam":
        weighted = jnp.maximum(g, 0) * a
    else:  # pragma: no cover (checked by the callers)
        raise InputError(f"method: unknown CAM {method!r}")
    return principal_projection(weighted) if eigen_smooth else jnp.sum(weighted, axis=-1)


def _weighted_sum(a: jax.Array, weights: jax.Array, eigen_smooth: bool) -> jax.Array:
    weighted = a * weights[:, None, None, :]
    return principal_projection(weighted) if eigen_smooth else jnp.sum(weighted, axis=-1)


@functools.partial(jax.jit, static_argnames=("net", "target_fn", "layer", "method", "eigen_smooth"))
def _gradient_core(net, params, images, target_idx, *, target_fn, layer, method, eigen_smooth):
    _common.count_trace(method)
    if method == "eigen_cam":
        a = protocol.taps(net, params, images, layer)[layer]
        g = None
    else:
        a, g, _ = protocol.layer_gradient(reverse_mode(net), params, images, layer,
                                          lambda out: _common.scores(out, target_fn, target_idx))
        g = g.astype(jnp.float32)
    _spatial(net, a, layer)
    return _combine(method, a.astype(jnp.float32), g, eigen_smooth)


def _spatial(net, a, layer):
    if a.ndim != 4:
        raise InputError(f"layer: expected a spatial tap with activations (N, h, w, C), got {layer!r} with shape "
                         f"{a.shape} in {protocol.name_of(net)}")


def _align_corners_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(out, in) bilinear interpolation with align_corners=True (torch's ``UpsamplingBilinear2d``)."""
    m = np.zeros((n_out, n_in), np.float32)
    for i in range(n_out):
        src = i * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        lo = min(int(np.floor(src)), n_in - 1)
        hi = min(lo + 1, n_in - 1)
        frac = src - lo
        m[i, lo] += 1 - frac
        m[i, hi] += frac
    return m


@functools.partial(jax.jit, static_argnames=("net", "target_fn", "layer", "batch_size", "eigen_smooth"))
def _score_core(net, params, images, target_idx, *, target_fn, layer, batch_size, eigen_smooth):
    _common.count_trace("score_cam")
    a = protocol.taps(net, params, images, layer)[layer].astype(jnp.float32)
    _spatial(net, a, layer)
    n, h, w, c = a.shape
    big_h, big_w = images.shape[1:3]
    rows, cols = jnp.asarray(_align_corners_matrix(h, big_h)), jnp.asarray(_align_corners_matrix(w, big_w))
    up = jnp.einsum("Hh,nhwc,Ww->nHWc", rows, a, cols, precision=_HIGHEST)
    lo, hi = up.min(axis=(1, 2), keepdims=True), up.max(axis=(1, 2), keepdims=True)
    masks = (up - lo) / (hi - lo + 1e-8)  # (N, H, W, C)

    def score(idx):
        i, ch = idx // c, idx % c
        masked = images[i] * jnp.take_along_axis(masks[i], ch[:, None, None, None], axis=-1)
        out = protocol.forward(net, params, masked)
        return _common.scores(out, target_fn, None if target_idx is None else target_idx[i])

    # A channel that is constant over the map (dead ReLUs: ~6% of relu5_3's on a random VGG16, ~15% on a
    # trained one) has an all-zero mask, so its masked image is the zero image for every such channel: one
    # forward pass of it serves them all, and only the other channels are run, in chunks of batch_size.
    flat = (hi == lo).reshape(n * c)
    zero = protocol.forward(net, params, jnp.zeros((1,) + images.shape[1:], images.dtype))
    zero_scores = _common.scores(jnp.broadcast_to(zero, (n,) + zero.shape[1:]), target_fn, target_idx)
    order = jnp.argsort(flat, stable=True).astype(jnp.int32)  # the varying channels first
    todo = n * c - jnp.sum(flat, dtype=jnp.int32)
    b = min(batch_size, n * c)
    scores = jnp.repeat(zero_scores, c).astype(jnp.float32)

    def step(state):
        start, acc = state
        idx = jax.lax.dynamic_slice(order, (jnp.minimum(start, n * c - b),), (b,))  # the last chunk may overlap
        return start + b, acc.at[idx].set(score(idx).astype(acc.dtype))

    _, scores = jax.lax.while_loop(lambda st: st[0] < todo, step, (jnp.int32(0), scores))
    return _weighted_sum(a, jax.nn.softmax(scores.reshape(n, c), axis=-1), eigen_smooth)


@functools.partial(jax.jit, static_argnames=("net", "target_fn", "layer", "batch_size", "eigen_smooth", "suffix"))
def _ablation_core(net, params, images, target_idx, *, target_fn, layer, batch_size, eigen_smooth, suffix):
    _common.count_trace("ablation_cam")
    out, taps = protocol.as_model(net).run(params, images, (layer,))
    a = taps[layer]
    _spatial(net, a, layer)
    a32 = a.astype(jnp.float32)
    n, h, w, c = a.shape
    base = _common.scores(out, target_fn, target_idx)  # (N,)
    # pytorch-grad-cam's AblationLayer: 0 where the activation's minimum is 0, else that minimum - 1e7
    low = jnp.min(a32, axis=(1, 2, 3))
    fill = jnp.where(low == 0, 0.0, low - 1e7)

    def body(idx):
        i, ch = idx // c, idx % c
        hit = (jnp.arange(c)[None, :] == ch[:, None])[:, None, None, :]  # (m, 1, 1, C)
        ablated = jnp.where(hit, fill[i][:, None, None, None], a32[i]).astype(a.dtype)
        if suffix:  # only the network after the layer
            o = net.apply(params, ablated, start=layer)
        else:  # the whole network, the channel removed where it is computed
            o = protocol.as_model(net).run(params, images[i], perturb={layer: ablated - a[i]})[0]
        return _common.scores(o, target_fn, None if target_idx is None else target_idx[i])

    ablated_scores = chunked_map(body, n * c, batch_size).reshape(n, c)
    weights = (base[:, None] - ablated_scores) / base[:, None]
    return _weighted_sum(a32, weights, eigen_smooth)


# --------------------------------------------------------------------------- FullGrad


def _biased_convolutions(net, params) -> tuple[tuple[str, str], ...]:
    """``(tap, params path)`` of every convolution with a bias (the kernel's module path is its tap: ``conv1_1``
    on a VGG, ``Conv_0`` on a user's linen CNN). A bias whose convolution is not a tap is a ModelError: FullGrad
    without it would be a partial sum that looks whole."""
    from ..errors import ModelError
    from ..featvis.maps import convolutions

    out = []
    inner = params.get("params", params)
    for path in convolutions(params):
        node = inner
        for part in path.split("/"):
            node = node[part]
        if "bias" not in node:
            continue
        try:
            tap = net.resolve(path, "layer")
        except InputError:
            raise ModelError(f"net: full_grad needs the output of every convolution with a bias as a tap; "
                             f"{path!r} of {protocol.name_of(net)} is not one") from None
        out.append((tap, path))
    return tuple(out)


def _minmax(x: jax.Array) -> jax.Array:
    """Each map of (N, h, w) or (N, h, w, C) scaled to [0, 1] over its positions (axes 1, 2), as pytorch-grad-cam's
    ``scale_cam_image`` scales: ``(x - min) / (1e-7 + max of that)``."""
    x = x - x.min(axis=(1, 2), keepdims=True)
    return x / (1e-7 + x.max(axis=(1, 2), keepdims=True))


def _scale_each(x: jax.Array, size) -> jax.Array:
    """(N, h, w, C): each (image, channel) min-max scaled, then resized to ``size`` (pytorch-grad-cam's
    ``scale_accross_batch_and_channels``)."""
    x = _minmax(x)
    if x.shape[1:3] != tuple(size):
        x = jax.image.resize(x, (x.shape[0], *size, x.shape[3]), "linear")
    return x


@functools.partial(jax.jit, static_argnames=("net", "target_fn", "convs"))
def _full_grad_core(net, params, images, target_idx, *, target_fn, convs):
    _common.count_trace("full_grad")
    model = protocol.as_model(net)
    taps = tuple(t for t, _ in convs)
    shapes = jax.eval_shape(lambda p, x: model.run(p, x, taps, output=False)[1], params, images)
    zeros = {t: jnp.zeros(shapes[t].shape, shapes[t].dtype) for t in taps}

    def total(x, deltas):
        out = model.run(params, x, (), perturb=deltas)[0]
        return jnp.sum(_common.scores(out, target_fn, target_idx))

    gx, gd = jax.grad(total, argnums=(0, 1))(images, zeros)
    size = images.shape[1:3]
    cam = jnp.sum(_scale_each(jnp.abs(images * gx), size), axis=-1)
    inner = params.get("params", params)
    for tap, path in convs:
        bias = inner
        for part in path.split("/"):
            bias = bias[part]
        bias = bias["bias"].astype(jnp.float32)
        cam = cam + jnp.sum(_scale_each(jnp.abs(bias * gd[tap].astype(jnp.float32)), size), axis=-1)
    return cam


def full_grad(net: Any, params: Any, images: Any, target: Any, *, normalize: bool = True) -> jax.Array:
    """FullGrad (Srinivas & Fleuret 2019), as pytorch-grad-cam computes it: ``|x * d score / dx|`` plus, for
    every convolution whose bias the model exposes, ``|b * d score / d conv output|``, each (image, channel)
    min-max scaled and resized to the input, summed.

    Needs the biases: the convolutions found in ``params`` (a rank-4 ``kernel`` with a ``bias`` beside it), each
    of whose outputs the model exposes as a tap under the kernel's module path (jaxviz's VGGs, a user's linen
    CNN). A model that hides some (jaxviz's ResNets fold their BatchNorms into biases of convolutions inside
    blocks, which are not taps) or has none is refused rather than given a partial sum.

    Args:
      net, params, images, target: as for every attribution method.
      normalize: min-max scale the sum per image (pytorch-grad-cam does; default True here too: the sum of
        separately scaled terms has no unit of its own).

    Returns:
      (N, H, W) maps at the input's resolution.

    Raises:
      ModelError: no convolution with a bias is exposed as a tap.
    """
    from ..errors import ModelError

    _common.check_net(net, "full_grad", model_only=True)
    net = _common.model(net, images)
    images = _common.check_images(images, net)
    convs = _biased_convolutions(net, params)
    if not convs:
        raise ModelError(f"net: full_grad needs convolutions with biases that {protocol.name_of(net)} exposes as "
                         "taps (kernel and bias under the tap's module path); this model has none")
    fn, idx = _common.prepare_target(target, images.shape[0], net, params, images)
    cam = _full_grad_core(net, params, images, idx, target_fn=fn, convs=convs)
    return _finish(cam, None, False, bool(normalize))


# --------------------------------------------------------------------------- the common driver


def _finish(maps: jax.Array, size, relu: bool, normalize: bool) -> jax.Array:
    """ReLU, per-image min-max scaling (pytorch-grad-cam's ``scale_cam_image``), bilinear resize (cv2's)."""
    if relu:
        maps = jnp.maximum(maps, 0)
    if normalize:
        maps = _minmax(maps)
    if size is not None:
        maps = _common.upsample(maps, size, "bilinear")
    return maps


def _augmentations():
    """pytorch-grad-cam's default ttach set: (flip, factor) for no flip / horizontal flip x 0.9, 1, 1.1."""
    return [(flip, factor) for flip in (False, True) for factor in (0.9, 1.0, 1.1)]


def cam_map(
    method: str,
    net: Any,
    params: Any,
    images: Any,
    target: Any,
    *,
    layer: str | Sequence[str] | None = None,
    relu: bool = True,
    normalize: bool = False,
    upsample: bool = False,
    eigen_smooth: bool = False,
    aug_smooth: bool = False,
    batch_size: int = 32,
) -> jax.Array:
    """Any method of :data:`CAM_METHODS` by name (see the module docstring for each formula and the options).

    Args:
      method: one of :data:`CAM_METHODS`.
      net, params: a model behind the model contract and its parameters.
      images: (N, H, W, 3) float RGB in [0, 1].
      target: class index, one per image (N,), or a callable outputs (N, K) -> (N,) (a segmentation mask's score,
        an embedding's similarity ...).
      layer: a spatial tap, a sequence of them (averaged as pytorch-grad-cam does), or None: the model's
        default layer.
      relu: rectify each map (pytorch-grad-cam always does).
      normalize: min-max scale each image's map to [0, 1] (pytorch-grad-cam always does).
      upsample: resize to the input's (H, W) with bilinear interpolation (cv2's, pytorch-grad-cam's).
      eigen_smooth: the first principal component of the weighted activations instead of their sum.
      aug_smooth: average over pytorch-grad-cam's six test-time augmentations (implies ``normalize`` and
        ``upsample``: the maps of flipped images are compared in the input's frame).
      batch_size: Score-CAM's masked / Ablation-CAM's ablated forward passes computed together.

    Returns:
      (N, h, w) maps at the layer's resolution, or (N, H, W) when resized.

    Raises:
      InputError: an unknown method or layer, a non-spatial layer, bad images or target.
    """
    _checks.one_of(method, "method", CAM_METHODS)
    _common.check_net(net, method, model_only=True)
    net = _common.model(net, images)
    images = _common.check_images(images, net)
    layers = [layer] if layer is None or isinstance(layer, str) else list(layer)
    if not layers:
        raise InputError("layer: expected a tap name or a non-empty sequence of them, got an empty sequence")
    layers = [_common.layer(net, params, images, name) for name in layers]
    batch_size = _checks.positive_int(batch_size, "batch_size")
    if aug_smooth:
        maps = []
        for flip, factor in _augmentations():
            x = images[:, :, ::-1] if flip else images
            m = cam_map(method, net, params, x * factor, target, layer=layers if len(layers) > 1 else layers[0], relu=relu, normalize=True,
                        upsample=True, eigen_smooth=eigen_smooth, batch_size=batch_size)
            maps.append(m[:, :, ::-1] if flip else m)
        return jnp.mean(jnp.stack(maps), axis=0)
    fn, idx = _common.prepare_target(target, images.shape[0], net, params, images)
    size = tuple(images.shape[1:3])
    several = len(layers) > 1
    out = []
    for name in layers:
        if method == "score_cam":
            m = _score_core(net, params, images, idx, target_fn=fn, layer=name, batch_size=batch_size,
                            eigen_smooth=bool(eigen_smooth))
        elif method == "ablation_cam":
            m = _ablation_core(net, params, images, idx, target_fn=fn, layer=name, batch_size=batch_size,
                               eigen_smooth=bool(eigen_smooth), suffix=protocol.supports_start(net))
        else:
            m = _gradient_core(net, params, images, idx, target_fn=fn, layer=name, method=method,
                               eigen_smooth=bool(eigen_smooth))
        out.append(_finish(m, size if (upsample or several) else None, relu or several, normalize or several))
    if several or (normalize and upsample):  # pytorch-grad-cam scales again after resizing (and averaging)
        return _finish(jnp.mean(jnp.stack(out), axis=0), None, True, True)
    return out[0]


def _method(name: str, doc: str):
    def method(net: Any, params: Any, images: Any, target: Any, *, layer: str | Sequence[str] | None = None,
               relu: bool = True, normalize: bool = False, upsample: bool = False, eigen_smooth: bool = False,
               aug_smooth: bool = False, batch_size: int = 32) -> jax.Array:
        return cam_map(name, net, params, images, target, layer=layer, relu=relu, normalize=normalize,
                       upsample=upsample, eigen_smooth=eigen_smooth, aug_smooth=aug_smooth, batch_size=batch_size)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = (f"{doc}\n\n    Arguments, returns and errors: as :func:`cam_map` (module docstring: the formula, and "
                      "the options\n    that match pytorch-grad-cam: ``normalize=True, upsample=True``).\n")
    return method


grad_cam_plus_plus = _method("grad_cam_plus_plus", "Grad-CAM++ (Chattopadhyay et al. 2018): channel weights from "
                             "the positive gradients, each position weighted by its second- and third-order term.")
xgrad_cam = _method("xgrad_cam", "XGrad-CAM (Fu et al. 2020): channel weights sum(G * A) / sum(A).")
hires_cam = _method("hires_cam", "HiResCAM (Draelos & Carin 2020): the element-wise product G * A summed over "
                    "channels (its map is the gradient-times-activation the score decomposes into).")
grad_cam_elementwise = _method("grad_cam_elementwise", "Element-wise Grad-CAM (pytorch-grad-cam): relu(G * A) "
                               "summed over channels.")
layer_cam = _method("layer_cam", "LayerCAM (Jiang et al. 2021): relu(G) * A summed over channels; meaningful at "
                    "shallow layers too.")
eigen_cam = _method("eigen_cam", "Eigen-CAM (Muhammad & Yeasin 2020): the activation's first principal component; "
                    "no gradient, ``target`` is ignored (pass anything, e.g. 0).")
eigen_grad_cam = _method("eigen_grad_cam", "Eigen-Grad-CAM (pytorch-grad-cam): the first principal component of "
                         "G * A.")
score_cam = _method("score_cam", "Score-CAM (Wang et al. 2020): each channel weighted by the softmax over "
                    "channels of the score of the input masked by that channel (upsampled, scaled to [0, 1]); "
                    "no gradient, one masked forward pass per channel, ``batch_size`` at a time.")
ablation_cam = _method("ablation_cam", "Ablation-CAM (Desai & Ramaswamy 2020): each channel weighted by the "
                       "relative drop of the score when it is removed; no gradient, one pass of the network after "
                       "the layer per channel, ``batch_size`` at a time.")
