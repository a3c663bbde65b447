"""Moved to :mod:`jaxviz.featvis.dream`; ``jaxviz.dream`` stays the same module under its old name."""

import sys

from .featvis import dream as _module

sys.modules[__name__] = _module
