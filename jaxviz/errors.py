"""Typed errors raised by jaxviz.

Every error a user can cause derives from :class:`JaxvizError`, so a caller
(and the CLI) can catch the library's own failures without also swallowing
bugs. Each also derives from the builtin it specialises (``ValueError``,
``FileNotFoundError`` ...) so ordinary ``except ValueError`` code keeps
working.
"""

from __future__ import annotations

__all__ = [
    "JaxvizError",
    "WriteError",
    "InputError",
    "ModelError",
    "CheckpointError",
    "ImageError",
    "WeightsError",
    "WeightsNotFoundError",
    "ChecksumError",
    "ArchitectureError",
    "DownloadError",
]


class JaxvizError(Exception):
    """Base class of every error jaxviz raises on purpose."""


class InputError(JaxvizError, ValueError):
    """An argument has the wrong shape, type or value."""


class ModelError(InputError):
    """A model cannot serve a technique: no ReLU to swap, no spatial layer, no global-average-pool head, a tap
    that is not an array ... The message names the model and the reason."""


class CheckpointError(InputError):
    """A ``checkpoint`` file cannot be resumed from. ``reason`` says why: ``"unreadable"`` (damaged, truncated,
    not a checkpoint, or a directory) or ``"mismatch"`` (written by a run of other inputs or settings)."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


class ImageError(JaxvizError, ValueError):
    """A file is not a readable image, or is too large to decode safely."""


class WeightsError(JaxvizError, ValueError):
    """A weight file is corrupt, truncated or otherwise unusable."""


class WeightsNotFoundError(WeightsError, FileNotFoundError):
    """Pretrained weights are neither cached nor downloadable."""


class ChecksumError(WeightsError):
    """A file's sha256 does not match the expected digest."""


class ArchitectureError(WeightsError):
    """A weight file holds a different architecture than the one asked for."""


class DownloadError(JaxvizError, OSError):
    """A download failed (network down, server error, broken transfer)."""


class WriteError(JaxvizError, OSError):
    """An output could not be written (a full disk, a quota, an I/O error); the message names the file. Files
    written before are intact (writes are atomic), so a rerun resumes."""

    def __str__(self) -> str:  # the message alone, without OSError's "[Errno 28]"
        return str(self.strerror)
