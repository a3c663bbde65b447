"""Flax models with named taps."""

from .layers import max_pool
from .small_cnn import SmallCNN, fold_batch_norm, small_cnn
from .vgg import (
    ALIASES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    VGG,
    VGG16_STAGES,
    VGG19_STAGES,
    adaptive_avg_pool,
    layer_names,
    reverse_mode,
    vgg16,
    vgg19,
)

ARCHS = {"vgg16": vgg16, "vgg19": vgg19}


def get(arch: str, **kwargs) -> VGG:
    """The model for an architecture name ("vgg16", "vgg19")."""
    from ..errors import InputError

    if arch not in ARCHS:
        raise InputError(f"arch: expected one of {', '.join(map(repr, ARCHS))}; got {arch!r}")
    return ARCHS[arch](**kwargs)


__all__ = [
    "ALIASES",
    "ARCHS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VGG",
    "VGG16_STAGES",
    "VGG19_STAGES",
    "adaptive_avg_pool",
    "get",
    "layer_names",
    "reverse_mode",
    "max_pool",
    "SmallCNN",
    "small_cnn",
    "fold_batch_norm",
    "vgg16",
    "vgg19",
]
