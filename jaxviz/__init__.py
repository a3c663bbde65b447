"""jaxviz: classic CNN visualisation techniques, fast, exact and composable in JAX/Flax.

    >>> import jaxviz
    >>> from jaxviz import models, weights, image
    >>> net = models.vgg19()
    >>> params = weights.random("vgg19", seed=0)     # or weights.load("vgg19") for ImageNet weights
    >>> x = image.load("photo.jpg", size=224)        # (1, H, W, 3) float32 RGB in [0, 1]
    >>> logits = net.apply(params, x)                # (1, 1000)
"""

__version__ = "0.1.0"

from . import _xla_flags  # noqa: E402

_xla_flags.apply()  # before any submodule runs JAX: XLA reads XLA_FLAGS when its CPU backend starts

from . import (  # noqa: E402
    attribution,
    datasets,
    download,
    dream,
    embed,
    errors,
    featvis,
    image,
    losses,
    models,
    parallel,
    style,
    train,
    viz,
    weights,
)
from .errors import JaxvizError  # noqa: E402

__all__ = [
    "JaxvizError",
    "__version__",
    "attribution",
    "datasets",
    "download",
    "dream",
    "embed",
    "errors",
    "featvis",
    "image",
    "losses",
    "models",
    "parallel",
    "style",
    "train",
    "viz",
    "weights",
]
