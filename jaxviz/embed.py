"""Moved to :mod:`jaxviz.featvis.embed`; ``jaxviz.embed`` stays the same module under its old name."""

import sys

from .featvis import embed as _module

sys.modules[__name__] = _module
