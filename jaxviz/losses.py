"""Moved to :mod:`jaxviz.style.losses`; ``jaxviz.losses`` stays the same module under its old name."""

import sys

from .style import losses as _module

sys.modules[__name__] = _module
