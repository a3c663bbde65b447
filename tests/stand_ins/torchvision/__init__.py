"""A stand-in for torchvision, for the tests only.

There is no CPU build of torchvision on these machines. pytorch-grad-cam (and zennit) import it at module
level for image transforms, a resize and ``ops.box_iou``, none of which the parity tests call; this module
provides those names (small torch implementations, enough to import and to fail loudly if ever called with
something they do not do). It is put on ``sys.path`` only when the real torchvision is missing.
"""

from . import ops, transforms  # noqa: F401

__version__ = "0.0-stand-in"
