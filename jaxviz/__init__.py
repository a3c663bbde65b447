"""jaxviz: classic CNN visualisation techniques, fast, exact and composable in JAX/Flax.

    >>> import jaxviz
    >>> from jaxviz import models, weights, image
    >>> net = models.vgg19()
    >>> params = weights.random("vgg19", seed=0)     # or weights.load("vgg19") for ImageNet weights
    >>> x = image.load("cat.jpg", size=224)          # (1, H, W, 3) float32 RGB in [0, 1]
    >>> logits = net.apply(params, x)
    >>> logits.shape
    (1, 1000)
"""

__version__ = "0.1.0"

from . import _xla_flags  # noqa: E402

_xla_flags.apply()  # before any submodule runs JAX: XLA reads XLA_FLAGS when its CPU backend starts

import importlib
from typing import TYPE_CHECKING

from .errors import JaxvizError  # noqa: E402

# Submodules (the names of __all__ not defined here) load on first use (PEP 562): ``import jaxviz`` and the
# ``jaxviz`` command's start do not import JAX until something needs it, so a Ctrl-C in the first second is
# the command's one line, not a traceback
if TYPE_CHECKING:  # what IDEs and type checkers see
    from . import (  # noqa: F401
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


def __getattr__(name: str):
    if name in __all__:  # reached only for what is not yet an attribute: a submodule
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


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
