"""torchvision's ResNet-18/34/50/101/152 as pure ``flax.linen`` modules, BatchNorm folded for inference.

The networks are built as torchvision builds them (7x7 stride-2 stem, 3x3
stride-2 max pool, four stages of basic or bottleneck blocks with the stride on
the 3x3 convolution, "ResNet v1.5"), but run NHWC and take float32 RGB in
[0, 1]: the ImageNet mean/std is applied inside (switchable). Every BatchNorm
is folded into the convolution before it (``scale / sqrt(var + eps)`` into the
kernel, the shift into a bias), which is exact in inference mode: a converted
torchvision file computes the same function with one fewer op per layer.

Taps, input to output (ResNet-50 shown)::

    conv1 relu maxpool layer1/0 layer1/1 layer1/2 layer2/0 ... layer4/2 avgpool fc

``layer1`` .. ``layer4`` are aliases of each stage's last block, torchvision's
dotted names (``layer4.1``) are accepted, and ``logits`` is ``fc``. Inside a
block every ReLU goes through the model's ``relu`` seam, so guided backprop and
deconvnet see all of them.

Example:
    >>> import jax.numpy as jnp
    >>> from jaxviz import models, weights
    >>> net = models.resnet50()
    >>> params = weights.random("resnet50", seed=0)
    >>> out, taps = net.run(params, jnp.zeros((1, 224, 224, 3)), ("layer4",))
    >>> out.shape, taps["layer4"].shape
    ((1, 1000), (1, 7, 7, 2048))

Reference: K. He, X. Zhang, S. Ren, J. Sun, "Deep Residual Learning for Image
Recognition", CVPR 2016.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from . import _taps
from .layers import conv, max_pool_padded
from .vgg import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["ResNet", "RESNETS", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet_layers"]

#: arch -> (block kind, blocks per stage)
RESNETS = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
    "resnet152": ("bottleneck", (3, 8, 36, 3)),
}
WIDTHS = (64, 128, 256, 512)
EXPANSION = {"basic": 1, "bottleneck": 4}


def resnet_layers(blocks: Sequence[int]) -> tuple[str, ...]:
    """The ordered tap names of a ResNet with ``blocks`` blocks per stage."""
    names = ["conv1", "relu", "maxpool"]
    for s, n in enumerate(blocks, 1):
        names += [f"layer{s}/{b}" for b in range(n)]
    return tuple(names) + ("avgpool", "fc")


def _conv(features: int, kernel: int, stride: int, name: str, dtype: Any) -> nn.Conv:
    pad = kernel // 2
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                   dtype=dtype, name=name, conv_general_dilated=conv)


class Block(nn.Module):
    """A basic (two 3x3) or bottleneck (1x1, 3x3, 1x1) residual block, BatchNorm folded into its convolutions."""

    kind: str
    width: int
    stride: int
    downsample: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, relu: Callable[[jax.Array], jax.Array]) -> jax.Array:
        out_width = self.width * EXPANSION[self.kind]
        if self.kind == "basic":
            y = relu(_conv(self.width, 3, self.stride, "conv1", self.dtype)(x))
            y = _conv(self.width, 3, 1, "conv2", self.dtype)(y)
        else:
            y = relu(_conv(self.width, 1, 1, "conv1", self.dtype)(x))
            y = relu(_conv(self.width, 3, self.stride, "conv2", self.dtype)(y))
            y = _conv(out_width, 1, 1, "conv3", self.dtype)(y)
        shortcut = _conv(out_width, 1, self.stride, "downsample", self.dtype)(x) if self.downsample else x
        return relu(y + shortcut)


class ResNet(_taps.Tapped, nn.Module):
    """A torchvision ResNet (v1.5) with named taps and BatchNorm folded.

    Attributes:
      kind: ``"basic"`` (ResNet-18/34) or ``"bottleneck"`` (50/101/152).
      blocks: blocks per stage.
      num_classes: width of ``fc``.
      normalize: apply the ImageNet mean/std inside, so inputs are RGB in [0, 1].
      mean, std: the normalisation constants.
      dtype: compute dtype; parameters stay float32.
      relu: the activation used at every ReLU.
    """

    kind: str = "bottleneck"
    blocks: Sequence[int] = (3, 4, 6, 3)
    num_classes: int = 1000
    normalize: bool = True
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD
    dtype: Any = jnp.float32
    relu: Callable[[jax.Array], jax.Array] = nn.relu

    min_size = 32

    @property
    def layers(self) -> tuple[str, ...]:
        """All tap names, input to output."""
        return resnet_layers(self.blocks)

    @property
    def aliases(self) -> dict[str, str]:  # type: ignore[override]
        """``layer1``..``layer4`` -> each stage's last block; ``logits`` -> ``fc``; torchvision's dotted names."""
        out = {"logits": "fc"}
        for s, n in enumerate(self.blocks, 1):
            out[f"layer{s}"] = f"layer{s}/{n - 1}"
            out.update({f"layer{s}.{b}": f"layer{s}/{b}" for b in range(n)})
        return out

    @property
    def default_layer(self) -> str:
        """The last stage (``layer4``): Grad-CAM's usual layer."""
        return f"layer{len(self.blocks)}/{self.blocks[-1] - 1}"

    @property
    def cam_layers(self) -> tuple[str, str]:
        """A global-average-pool + linear head: CAM reads the last stage and ``fc``."""
        return (self.default_layer, "fc")

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
        """Runs the network (same arguments as :meth:`jaxviz.models.VGG.__call__`; ``train`` has no effect:
        the BatchNorms are folded)."""
        relu = self.relu if relu is None else relu
        prepare = functools.partial(_taps.prepare_images, min_size=self.min_size, normalize=self.normalize,
                                    mean=self.mean, std=self.std, dtype=self.dtype)
        return _taps.run(self, x, taps, start, lambda name, x: self._layer(name, x, relu), prepare, perturb)

    def _layer(self, name: str, x: jax.Array, relu) -> jax.Array:
        if name == "conv1":
            return _conv(64, 7, 2, "conv1", self.dtype)(x)
        if name == "relu":
            return relu(x)
        if name == "maxpool":
            return max_pool_padded(x, (3, 3), (2, 2), ((1, 1), (1, 1)))
        if name == "avgpool":
            return jnp.mean(x, axis=(1, 2))
        if name == "fc":
            return nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x)
        stage, b = name[len("layer"):].split("/")
        s, b = int(stage), int(b)
        first = b == 0
        stride = 2 if first and s > 1 else 1
        width = WIDTHS[s - 1]
        cin = x.shape[-1]
        downsample = first and (stride != 1 or cin != width * EXPANSION[self.kind])
        return Block(self.kind, width, stride, downsample, self.dtype, name=f"layer{s}_{b}")(x, relu)


def _make(arch: str, **kwargs: Any) -> ResNet:
    kind, blocks = RESNETS[arch]
    return ResNet(kind=kind, blocks=blocks, **kwargs)


def resnet18(**kwargs: Any) -> ResNet:
    """ResNet-18 (basic blocks 2-2-2-2); keyword arguments set :class:`ResNet` fields."""
    return _make("resnet18", **kwargs)


def resnet34(**kwargs: Any) -> ResNet:
    """ResNet-34 (basic blocks 3-4-6-3)."""
    return _make("resnet34", **kwargs)


def resnet50(**kwargs: Any) -> ResNet:
    """ResNet-50 (bottleneck blocks 3-4-6-3)."""
    return _make("resnet50", **kwargs)


def resnet101(**kwargs: Any) -> ResNet:
    """ResNet-101 (bottleneck blocks 3-4-23-3)."""
    return _make("resnet101", **kwargs)


def resnet152(**kwargs: Any) -> ResNet:
    """ResNet-152 (bottleneck blocks 3-8-36-3)."""
    return _make("resnet152", **kwargs)
