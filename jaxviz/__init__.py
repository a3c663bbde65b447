"""jaxviz: classic CNN visualisation techniques, fast, exact and composable in JAX/Flax."""

from . import errors, models
from .errors import JaxvizError

__version__ = "0.1.0"

__all__ = ["JaxvizError", "errors", "models", "__version__"]
