"""VGG16 / VGG19 as pure ``flax.linen`` modules with every layer reachable by name.

The networks are built exactly as torchvision builds them (3x3 convolutions
with padding 1, ReLU, 2x2 max pools, an adaptive average pool to 7x7 and a
4096-4096-1000 classifier), but they run NHWC and take float32 RGB in [0, 1]:
the ImageNet mean/std normalisation happens inside the model (switchable).

Layer names follow the style-transfer literature (Gatys et al.)::

    conv1_1 relu1_1 conv1_2 relu1_2 pool1 conv2_1 ... pool5
    avgpool fc6 relu6 fc7 relu7 fc8          (fc8 is also called "logits")

Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxviz import models, weights
    >>> net = models.vgg19()
    >>> params = weights.random("vgg19", seed=0)
    >>> x = jnp.zeros((1, 224, 224, 3))
    >>> net.apply(params, x).shape
    (1, 1000)
    >>> taps = net.apply(params, x, taps=("relu1_1", "relu4_2"))   # stops after relu4_2
    >>> taps["relu4_2"].shape
    (1, 28, 28, 512)

Two seams serve the techniques that need to reach into the network:

* ``relu=``: the activation used at every ReLU (guided backprop and deconvnet
  swap in a custom-VJP ReLU); a module field, overridable per call.
* ``start=``: enter the network at a named tap; the input is then that tap's
  activation and the network runs from the next layer on (Grad-CAM takes the
  gradient of the logits with respect to a layer's activation this way).

Reference: K. Simonyan, A. Zisserman, "Very Deep Convolutional Networks for
Large-Scale Image Recognition", ICLR 2015.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ..errors import InputError
from . import _taps
from ..execution import reverse_mode  # noqa: F401  (re-exported: models.reverse_mode)
from .layers import conv, conv_auto_grad, conv_flipped_grad, max_pool

__all__ = [
    "VGG",
    "VGG16_STAGES",
    "VGG19_STAGES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CAFFE_MEAN_BGR",
    "PREPROCESSING",
    "ALIASES",
    "vgg16",
    "vgg19",
    "adaptive_avg_pool",
    "layer_names",
]

VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
VGG19_STAGES = ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Keras applications' "caffe" mode (VGG16/VGG19, ResNet50 v1): BGR, 0-255, minus this mean (B, G, R)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
#: ``VGG.preprocess`` values: what the model does to its RGB [0, 1] input before ``conv1_1``
PREPROCESSING = {
    "torchvision": "RGB, minus the ImageNet mean, over its std (torchvision's and timm's weights)",
    "caffe": "BGR, 0-255, minus the BGR mean 103.939, 116.779, 123.68 (Keras applications' and Caffe's weights)",
    "none": "the input as given",
}
ALIASES = {"logits": "fc8"}
#: ``VGG.conv_grad`` values -> the convolution flax's ``nn.Conv`` is given (all three run a map smaller than the
#: kernel as a patch product on XLA:CPU: :func:`jaxviz.models.layers.conv`)
CONV_GRADS = {"jax": conv, "flipped": conv_flipped_grad, "auto": conv_auto_grad}
CLASSIFIER_LAYERS = ("avgpool", "fc6", "relu6", "fc7", "relu7", "fc8")


def layer_names(stages: Sequence[Sequence[int]], classifier: bool = True) -> tuple[str, ...]:
    """The ordered tap names of a VGG with the given stages (channel widths per block)."""
    names: list[str] = []
    for b, stage in enumerate(stages, 1):
        for n in range(1, len(stage) + 1):
            names += [f"conv{b}_{n}", f"relu{b}_{n}"]
        names.append(f"pool{b}")
    if classifier:
        names += CLASSIFIER_LAYERS
    return tuple(names)


@functools.lru_cache(maxsize=None)
def _adaptive_matrix(size_in: int, size_out: int) -> np.ndarray:
    """(out, in) averaging matrix with torch's bins floor(i*in/out) .. ceil((i+1)*in/out)."""
    m = np.zeros((size_out, size_in), np.float32)
    for i in range(size_out):
        lo = (i * size_in) // size_out
        hi = -((-(i + 1) * size_in) // size_out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


def adaptive_avg_pool(x: jax.Array, output_size: tuple[int, int]) -> jax.Array:
    """``torch.nn.AdaptiveAvgPool2d`` for NHWC arrays, with torch's exact bin edges.

    Args:
      x: (N, H, W, C) array.
      output_size: (out_h, out_w).

    Returns:
      (N, out_h, out_w, C) array; ``x`` itself when the size already matches.
    """
    _, h, w, _ = x.shape
    oh, ow = output_size
    if (h, w) == (oh, ow):
        return x
    ph = jnp.asarray(_adaptive_matrix(h, oh), x.dtype)
    pw = jnp.asarray(_adaptive_matrix(w, ow), x.dtype)
    return jnp.einsum("oh,nhwc,pw->nopc", ph, x, pw, precision=jax.lax.Precision.HIGHEST)


class VGG(_taps.Tapped, nn.Module):
    """A VGG network (torchvision layout) with named taps.

    Attributes:
      stages: channel widths of the 3x3 convolutions, one tuple per block.
      num_classes: width of ``fc8``.
      fc_features: width of ``fc6`` and ``fc7`` (4096 in the paper).
      pool_output: the adaptive average pool's output size (7, 7 in torchvision).
      classifier: build ``avgpool``..``fc8``; False gives a features-only net.
      pooling: ``"max"`` (torchvision) or ``"avg"`` (Gatys et al. prefer it
        for image synthesis).
      preprocess: the input convention of the weights, applied inside the
        model to RGB in [0, 1] (see :data:`PREPROCESSING`): ``"torchvision"``
        (``(x - mean) / std``), ``"caffe"`` (``x[..., ::-1] * 255 - CAFFE_MEAN_BGR``,
        as Keras' VGG weights expect; their ``conv1_1`` reads BGR) or
        ``"none"`` (inputs go to ``conv1_1`` unchanged). :func:`jaxviz.weights.save`
        records it beside the weights.
      normalize: False is ``preprocess="none"`` (kept from before ``preprocess``).
      mean, std: the ``"torchvision"`` normalisation constants.
      dtype: compute dtype (e.g. ``jnp.bfloat16``); parameters stay float32.
      relu: the activation used at every ReLU tap.
      dropout_rate: classifier dropout, used only when called with ``train=True``.
      conv_grad: how the 3x3 convolutions' input gradient is computed.
        ``"jax"``: JAX's transpose rule (forward mode, ``jax.jvp``, works).
        (All three compute a map smaller than the kernel, conv5 at 32 px, as
        a matrix product over patches on XLA:CPU: :func:`jaxviz.models.layers.conv`.)
        ``"flipped"``: a custom VJP that runs a forward convolution with the
        flipped kernel (:func:`jaxviz.models.layers.conv_flipped_grad`): the
        same gradients bit for bit, several times faster on XLA:CPU inside loop bodies
        (optax's L-BFGS line search); reverse mode only.
        ``"auto"``: ``"flipped"``, except that on XLA:CPU small maps and the
        RGB layer take their input gradient as one matrix product
        (:func:`jaxviz.models.layers.conv_auto_grad`; equal to float32
        round-off, faster on those layers); what the attribution
        methods and style transfer use.
    """

    stages: Sequence[Sequence[int]] = VGG19_STAGES
    num_classes: int = 1000
    fc_features: int = 4096
    pool_output: tuple[int, int] = (7, 7)
    classifier: bool = True
    pooling: str = "max"
    preprocess: str = "torchvision"
    normalize: bool = True
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD
    dtype: Any = jnp.float32
    relu: Callable[[jax.Array], jax.Array] = nn.relu
    dropout_rate: float = 0.5
    conv_grad: str = "jax"

    @property
    def layers(self) -> tuple[str, ...]:
        """All tap names, input to output."""
        return layer_names(self.stages, self.classifier)

    aliases = ALIASES

    @property
    def min_size(self) -> int:
        """Smallest input height/width the network accepts (one pixel left after the last pool)."""
        return 2 ** len(self.stages)

    @property
    def plain_stack(self):
        """The feature layers as a :class:`~jaxviz.models.protocol.PlainStack` (incremental occlusion's seam)."""
        from .protocol import PlainStack

        kinds = {"conv": "conv", "relu": "relu", "pool": "pool"}
        layers = tuple((n, kinds[n[:4]]) for n in self.layers if n not in CLASSIFIER_LAYERS)
        widths = tuple(int(c) for stage in self.stages for c in stage)
        convention = self.input_convention
        mean, std, bgr = convention if convention else (None, None, False)
        return PlainStack(layers, widths, self.pooling, mean, std, self.dtype, self.relu, bgr)

    @property
    def input_convention(self) -> tuple[tuple[float, ...], tuple[float, ...], bool] | None:
        """``(mean, std, bgr)`` applied to the RGB [0, 1] input (channels reversed first when ``bgr``), or None
        when the input goes to ``conv1_1`` unchanged."""
        if self.preprocess not in PREPROCESSING:
            raise InputError(f"preprocess: expected one of {', '.join(map(repr, PREPROCESSING))}, "
                             f"got {self.preprocess!r}")
        if not self.normalize or self.preprocess == "none":
            return None
        if self.preprocess == "caffe":
            return tuple(m / 255.0 for m in CAFFE_MEAN_BGR), (1 / 255.0,) * 3, True
        return tuple(self.mean), tuple(self.std), False

    @property
    def unit_range(self) -> bool:
        """Inputs are RGB in [0, 1] (the model applies its weights' convention itself)."""
        return self.input_convention is not None

    @property
    def default_layer(self) -> str:
        """The last convolutional ReLU (``relu5_4`` on VGG19): Grad-CAM's usual layer."""
        return f"relu{len(self.stages)}_{len(self.stages[-1])}"

    @property
    def suggested_layers(self) -> dict[str, Any]:
        """The literature's taps (see :func:`jaxviz.models.protocol.suggested_layers`): feature maps at
        ``relu1_1``, top patches at ``relu3_1``, activation maximisation at ``relu4_1`` (lucid's habit), DeepDream
        and style transfer's content at ``relu4_2``, style at ``relu1_1``..``relu5_1`` (Gatys et al.); names a
        shallower VGG lacks are left to the measured default."""
        have = set(self.layers)
        roles = {"early": "relu1_1", "middle": "relu3_1", "deep": "relu4_1", "dream": "relu4_2",
                 "content": "relu4_2"}
        out: dict[str, Any] = {k: v for k, v in roles.items() if v in have}
        style = tuple(f"relu{b}_1" for b in range(1, len(self.stages) + 1))
        if len(self.stages) >= 5:
            out["style"] = style[:5]
        return out

    def _widths(self) -> dict[str, int]:
        widths = {}
        for b, stage in enumerate(self.stages, 1):
            for n, c in enumerate(stage, 1):
                widths[f"conv{b}_{n}"] = c
        widths.update(fc6=self.fc_features, fc7=self.fc_features, fc8=self.num_classes)
        return widths

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        taps: str | Sequence[str] | None = None,
        *,
        start: str | None = None,
        perturb: Mapping[str, jax.Array] | None = None,
        relu: Callable[[jax.Array], jax.Array] | None = None,
        train: bool = False,
    ) -> jax.Array | dict[str, jax.Array]:
        """Runs the network.

        Args:
          x: (N, H, W, 3) float RGB in [0, 1] (H, W >= ``min_size``); or, with
            ``start``, the activation of the tap named there.
          taps: None to return the final output (logits, or ``poolK`` for a
            features-only net); a name or a sequence of names to return a dict
            ``name -> activation``. Computation stops at the deepest tap asked for.
          start: enter the network after this tap; ``x`` is its activation.
          perturb: tap name -> array added to that tap's activation (the
            gradient with respect to a zero perturbation is the layer gradient).
          relu: overrides the module's ``relu`` for this call.
          train: enable classifier dropout (needs a ``"dropout"`` rng).

        Returns:
          The final output, or a dict of the requested taps (keys as given).

        Raises:
          InputError: for an input of the wrong shape or an unknown tap name.
        """
        relu = self.relu if relu is None else relu
        widths = self._widths()
        convention = self.input_convention
        mean, std, bgr = convention if convention else (None, None, False)
        prepare = functools.partial(
            _taps.prepare_images, min_size=self.min_size, normalize=convention is not None,
            mean=mean, std=std, dtype=self.dtype, bgr=bgr,
        )
        return _taps.run(self, x, taps, start, lambda name, x: self._layer(name, x, widths, relu, train), prepare,
                         perturb)

    def _layer(self, name, x, widths, relu, train):
        if name.startswith("conv"):
            if self.conv_grad not in CONV_GRADS:
                raise InputError(f"conv_grad: expected one of {', '.join(map(repr, CONV_GRADS))}, "
                                 f"got {self.conv_grad!r}")
            conv = CONV_GRADS[self.conv_grad]
            return nn.Conv(
                widths[name], (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype, name=name,
                conv_general_dilated=conv,
            )(x)
        if name.startswith("relu"):
            x = relu(x)
            if train and name in ("relu6", "relu7"):
                x = _taps.dropout(self, self.dropout_rate, x)
            return x
        if name.startswith("pool"):
            if self.pooling == "max":
                return max_pool(x, (2, 2))
            if self.pooling == "avg":
                return nn.avg_pool(x, (2, 2), strides=(2, 2))
            raise InputError(f"pooling: expected 'max' or 'avg', got {self.pooling!r}")
        if name == "avgpool":
            return adaptive_avg_pool(x, self.pool_output)
        if name == "fc6":
            x = x.reshape(x.shape[0], math.prod(x.shape[1:]))  # -1 fails on an empty batch
        return nn.Dense(widths[name], dtype=self.dtype, name=name)(x)


def vgg16(**kwargs: Any) -> VGG:
    """VGG16 (torchvision configuration "D"); keyword arguments set :class:`VGG` fields."""
    return VGG(stages=VGG16_STAGES, **kwargs)


def vgg19(**kwargs: Any) -> VGG:
    """VGG19 (torchvision configuration "E"); keyword arguments set :class:`VGG` fields."""
    return VGG(stages=VGG19_STAGES, **kwargs)
