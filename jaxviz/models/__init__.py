"""Models: the contract every technique uses, jaxviz's own networks, and adapters for anyone else's.

* :mod:`~jaxviz.models.protocol`: the model contract (:class:`Model`), the
  runner functions and measured geometry.
* :func:`tapped`, :func:`from_nnx`, :func:`from_function`: a user's
  ``flax.linen`` module, Flax NNX module or JAX function behind the contract.
* :mod:`~jaxviz.models.relus`: the custom ReLU rules and the seam that swaps
  them into any model.
* :func:`vgg16`, :func:`vgg19`, :func:`resnet18` .. :func:`resnet152`,
  :func:`small_cnn`: jaxviz's own networks, behind the same contract.
"""

from . import protocol, relus
from .adapters import FunctionModel, TappedModule, from_function, from_nnx, tapped
from .layers import max_pool
from .protocol import Geometry, Model, as_model, geometry, is_model, layer_gradient
from .resnet import RESNETS, ResNet, resnet18, resnet34, resnet50, resnet101, resnet152
from .small_cnn import SmallCNN, fold_batch_norm, small_cnn
from .vgg import (
    ALIASES,
    CAFFE_MEAN_BGR,
    IMAGENET_MEAN,
    IMAGENET_STD,
    PREPROCESSING,
    VGG,
    VGG16_STAGES,
    VGG19_STAGES,
    adaptive_avg_pool,
    layer_names,
    reverse_mode,
    vgg16,
    vgg19,
)

#: The VGGs by name (the networks every CLI verb takes).
ARCHS = {"vgg16": vgg16, "vgg19": vgg19}
#: The ResNets by name.
RESNET_ARCHS = {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50, "resnet101": resnet101,
                "resnet152": resnet152}
#: Every built-in ImageNet architecture by name.
ALL_ARCHS = {**ARCHS, **RESNET_ARCHS}


def get(arch: str, **kwargs):
    """The model for an architecture name (``"vgg16"``, ``"vgg19"``, ``"resnet18"`` .. ``"resnet152"``)."""
    from ..errors import InputError

    table = {**ARCHS, **RESNET_ARCHS}
    if arch not in table:
        raise InputError(f"arch: expected one of {', '.join(map(repr, table))}; got {arch!r}")
    return table[arch](**kwargs)


__all__ = [
    "ALIASES",
    "ALL_ARCHS",
    "CAFFE_MEAN_BGR",
    "PREPROCESSING",
    "ARCHS",
    "FunctionModel",
    "Geometry",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Model",
    "RESNETS",
    "RESNET_ARCHS",
    "ResNet",
    "SmallCNN",
    "TappedModule",
    "VGG",
    "VGG16_STAGES",
    "VGG19_STAGES",
    "adaptive_avg_pool",
    "as_model",
    "fold_batch_norm",
    "from_function",
    "from_nnx",
    "geometry",
    "get",
    "is_model",
    "layer_gradient",
    "layer_names",
    "max_pool",
    "protocol",
    "relus",
    "resnet101",
    "resnet152",
    "resnet18",
    "resnet34",
    "resnet50",
    "reverse_mode",
    "small_cnn",
    "tapped",
    "vgg16",
    "vgg19",
]
