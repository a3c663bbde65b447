"""torchvision.models stand-in: only what zennit imports (``models.resnet``'s block classes)."""

from . import resnet  # noqa: F401
