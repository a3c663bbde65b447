"""Loading, saving, resizing and cropping images at the library's edge.

Everything here returns NumPy ``float32`` arrays in the library's array
contract: NHWC, RGB, values in [0, 1], batch first. JAX functions accept them
directly. Decoding goes through Pillow:

* EXIF orientation is honoured (``PIL.ImageOps.exif_transpose``), so a phone
  photo comes out the way it is displayed, not the way the sensor stored it.
* Every mode becomes RGB: ``1``, ``L``, ``P`` and ``CMYK`` through Pillow's
  own conversions; anything with an alpha channel or a transparency key
  (``RGBA``, ``LA``, ``PA``, ``P`` with transparency ...) is composited on
  white; 16-bit and 32-bit integer greyscale (``I;16``, ``I;16B``, ``I``) is
  divided by 65535 and ``F`` (float) is taken as already in [0, 1]; both are
  clipped to [0, 1] (a transparency key on these is ignored). Pillow itself
  reduces 16-bit-per-channel colour files to 8 bits. Colour profiles (ICC)
  are not applied.
* Only the first frame of an animated or multi-page file is read.
* Only the formats in :data:`READ_FORMATS` are tried, so a crafted file can't
  drive Pillow's rarer plugins (EPS, for one, runs Ghostscript).
* An image with more pixels than ``max_pixels`` is refused from its header,
  before any pixel data is decoded. Pillow's process-wide limit
  (``PIL.Image.MAX_IMAGE_PIXELS``) applies too: its warning and its error
  both become :class:`~jaxviz.errors.ImageError`.

Resampling is bilinear everywhere, antialiased when downsampling (Pillow
widens the filter by the scale factor), which is what torchvision's ImageNet
eval preset uses. Bilinear weights are non-negative, so resized values stay
in [0, 1] without clipping. Sizes are computed as torchvision does: the
scaled side is truncated, ``int(size * long / short)``.

Files are written atomically: to a temporary file in the same directory,
then ``os.replace``, so a reader never sees half an image and a failed write
leaves the old file intact.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from . import _checks
from ._io import atomic_open
from .errors import ImageError, InputError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "READ_FORMATS",
    "ImageNotFoundError",
    "load",
    "to_float",
    "resize",
    "center_crop",
    "imagenet_eval",
    "save",
    "read_text",
    "list_images",
    "load_folder",
]

PathLike = Union[str, "os.PathLike[str]"]
Size = Union[int, tuple[int, int]]

#: Default pixel limit, equal to Pillow's default ``Image.MAX_IMAGE_PIXELS``
#: (about a 9459 x 9459 image, 256 MiB as RGB uint8, 1 GiB as float32).
DEFAULT_MAX_PIXELS = 89_478_485

#: Suffixes :func:`list_images` and :func:`load_folder` pick up (compared
#: case-insensitively).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".ppm", ".pgm", ".pnm")

#: Pillow format ids :func:`load` tries (those this Pillow build lacks are
#: left out). Camera MPO files open through the JPEG plugin.
READ_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "TIFF", "BMP", "GIF", "PPM")

_SAVE_FORMATS = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".bmp": "BMP",
}
_RESIZE_MODES = ("longest", "shortest")
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


class ImageNotFoundError(ImageError, FileNotFoundError):
    """An image file does not exist.

    Both a :class:`~jaxviz.errors.JaxvizError` (so the CLI reports it cleanly)
    and a :class:`FileNotFoundError` (so ordinary ``except`` code still works).
    """


# --------------------------------------------------------------------------
# argument checks


def _check_size(size: Any, name: str = "size", *, allow_none: bool = True) -> Size | None:
    """Normalises ``size`` to None, a positive int or an (h, w) tuple of ints."""

    def is_pos_int(v: Any) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) and v > 0

    if size is None and allow_none:
        return None
    if is_pos_int(size):
        return int(size)
    if isinstance(size, (tuple, list)) and len(size) == 2 and all(is_pos_int(v) for v in size):
        return (int(size[0]), int(size[1]))
    expected = "None, a positive int or (height, width)" if allow_none else "a positive int or (height, width)"
    raise InputError(f"{name}: expected {expected}, got {size!r}")


def _check_max_pixels(max_pixels: Any) -> int | None:
    if max_pixels is None:
        return None
    return _checks.positive_int(max_pixels, "max_pixels")


def _target_hw(h: int, w: int, size: Size | None, mode: str) -> tuple[int, int]:
    """The (height, width) an (h, w) image is resized to.

    An int sets the longest or the shortest side; the other side keeps the
    aspect ratio and is truncated like torchvision's ``Resize`` (at least 1).
    """
    if size is None:
        return h, w
    if isinstance(size, tuple):
        return size
    short, long = (h, w) if h <= w else (w, h)
    if mode == "shortest":
        new_short, new_long = size, max(1, int(size * long / short))
    else:
        new_short, new_long = max(1, int(size * short / long)), size
    return (new_short, new_long) if h <= w else (new_long, new_short)


def _crop_hw(size: Any, name: str = "size") -> tuple[int, int]:
    size = _check_size(size, name, allow_none=False)
    return (size, size) if isinstance(size, int) else size


# --------------------------------------------------------------------------
# decoding


def _open(path: Path, fp: Any, max_pixels: int | None) -> Image.Image:
    """Opens ``fp`` lazily (header only) and enforces the pixel limits."""
    Image.init()
    formats = [f for f in READ_FORMATS if f in Image.OPEN]
    bomb_hint = "raise PIL.Image.MAX_IMAGE_PIXELS (and max_pixels) if you trust this file"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(fp, formats=formats)
    except UnidentifiedImageError:
        raise ImageError(
            f"{path}: not an image Pillow can read (unrecognised format; tried {', '.join(formats)})"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{path}: refusing to decode a possible decompression bomb ({e}); {bomb_hint}") from None
    except Exception as e:  # a plugin choking on a malformed header
        raise ImageError(f"{path}: not an image Pillow can read ({type(e).__name__}: {e})") from e
    w, h = im.size
    if max_pixels is not None and w * h > max_pixels:
        im.close()
        raise ImageError(
            f"{path}: {w}x{h} image has {w * h} pixels, more than max_pixels={max_pixels};"
            " refusing to decode a possible decompression bomb (pass a larger max_pixels if you trust this file)"
        )
    return im


def _to_rgb(im: Image.Image, path: Path) -> Image.Image | np.ndarray:
    """Converts a decoded image to RGB.

    Returns a Pillow ``RGB`` image for 8-bit sources (so resizing happens on
    uint8 data exactly as torchvision does it), or an (H, W, 3) float32 array
    in [0, 1] for 16-bit, 32-bit and float sources.
    """
    mode = im.mode
    if mode in _SIXTEEN_BIT_MODES or mode == "F":
        a = np.asarray(im).astype(np.float32)
        if mode != "F":
            a /= np.float32(65535)
        a = np.clip(np.nan_to_num(a, nan=0.0), 0.0, 1.0)
        return np.repeat(a[:, :, None], 3, axis=2)
    if mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode == "RGB":
        return im
    try:
        return im.convert("RGB")
    except ValueError as e:
        raise ImageError(f"{path}: cannot convert image mode {mode!r} to RGB ({e})") from e


def _resize_float(a: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Bilinear, antialiased resize of an (H, W, C) float array, channel by channel."""
    if a.shape[:2] == hw:
        return a.astype(np.float32, copy=True)
    h, w = hw
    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(a[:, :, c], dtype=np.float32)).resize((w, h), Image.BILINEAR))
        for c in range(a.shape[2])
    ]
    return np.stack(channels, axis=2)


def _load_hw3(path: PathLike, size: Size | None, mode: str, max_pixels: int | None) -> np.ndarray:
    """Loads one image as an (H, W, 3) float32 array; arguments already checked."""
    path = Path(path)
    try:
        fp = open(path, "rb")
    except FileNotFoundError:
        if path.is_symlink():
            raise ImageNotFoundError(f"{path}: a symbolic link to a missing file ({os.readlink(path)})") from None
        raise ImageNotFoundError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory, not an image file") from None
    with fp:
        im = _open(path, fp, max_pixels)
        with im:
            try:
                im.load()
                ImageOps.exif_transpose(im, in_place=True)
                rgb = _to_rgb(im, path)
            except ImageError:
                raise
            except Exception as e:  # truncated or corrupt pixel data
                raise ImageError(f"{path}: cannot decode image data ({type(e).__name__}: {e})") from e
            if isinstance(rgb, np.ndarray):
                return _resize_float(rgb, _target_hw(*rgb.shape[:2], size, mode))
            h, w = _target_hw(rgb.height, rgb.width, size, mode)
            if (h, w) != (rgb.height, rgb.width):
                rgb = rgb.resize((w, h), Image.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8).astype(np.float32) / np.float32(255)


# --------------------------------------------------------------------------
# public API


def load(
    path: PathLike,
    size: Size | None = None,
    *,
    resize: str = "longest",
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Loads an image file as a batch of one RGB image.

    Args:
      path: a JPEG, PNG, WebP, TIFF, BMP, GIF or PPM file. EXIF orientation
        is applied; the mode conversions are listed in the module docstring.
      size: None keeps the decoded size; an int sets the longest side (or
        the shortest side with ``resize="shortest"``), keeping the aspect
        ratio; ``(height, width)`` resizes to exactly that. Resampling is
        bilinear, antialiased when downsampling.
      resize: ``"longest"`` or ``"shortest"``: which side an int ``size``
        sets.
      max_pixels: refuse images with more pixels than this, checked from the
        header before any pixel data is decoded. None turns this check off
        (Pillow's own ``PIL.Image.MAX_IMAGE_PIXELS`` still applies).

    Returns:
      float32 array of shape (1, H, W, 3), values in [0, 1].

    Raises:
      ImageNotFoundError: ``path`` does not exist (a ``FileNotFoundError``).
      ImageError: the file is not an image, is truncated or corrupt, or has
        too many pixels.
      InputError: ``size``, ``resize`` or ``max_pixels`` is invalid.

    Example:
      >>> x = load("cat.jpg", 256)            # longest side 256
      >>> x.shape, x.dtype
      ((1, 192, 256, 3), dtype('float32'))
    """
    size = _check_size(size)
    _checks.one_of(resize, "resize", _RESIZE_MODES)
    max_pixels = _check_max_pixels(max_pixels)
    return _load_hw3(path, size, resize, max_pixels)[None]


def to_float(array: Any) -> np.ndarray:
    """Converts pixel values to float32 in [0, 1].

    Args:
      array: any shape. uint8 is divided by 255, uint16 by 65535, bool maps to
        0 and 1; floating arrays (bfloat16 and float16 included) are returned
        as float32 unchanged (no copy when already float32 NumPy).

    Returns:
      float32 NumPy array of the same shape.

    Raises:
      InputError: any other dtype (signed integers are ambiguous).

    Example:
      >>> to_float(np.array([0, 51, 255], np.uint8))
      array([0. , 0.2, 1. ], dtype=float32)
    """
    a = np.asarray(array)
    if a.dtype == np.uint8:
        return a.astype(np.float32) / np.float32(255)
    if a.dtype == np.uint16:
        return a.astype(np.float32) / np.float32(65535)
    if a.dtype == np.bool_ or _checks.is_floating(a.dtype):  # bfloat16 (ml_dtypes) included
        return a.astype(np.float32, copy=False)
    raise InputError(f"array: expected uint8, uint16, bool or a floating dtype, got {a.dtype}")


def _as_images(x: Any, name: str) -> tuple[np.ndarray, bool]:
    """(N, H, W, C) float32 view of an (H, W, C) or (N, H, W, C) array, and whether it was batched."""
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) not in (3, 4):
        got = tuple(shape) if shape is not None else type(x).__name__
        raise InputError(f"{name}: expected shape (N, H, W, C) or (H, W, C), got {got}")
    try:
        a = to_float(x)
    except InputError as e:
        raise InputError(f"{name}: {str(e).split(': ', 1)[1]}") from None
    return (a, True) if a.ndim == 4 else (a[None], False)


def resize(x: Any, size: Size, *, resize: str = "longest") -> np.ndarray:
    """Resizes images held in an array.

    Each image and channel is resized by Pillow in float32 (mode ``F``) with
    the same bilinear, antialiased filter :func:`load` uses, so
    ``resize(load(p), s)`` matches ``load(p, s)`` to within uint8 rounding
    (``load`` resizes 8-bit files before converting to float, like
    torchvision). Runs on the host, not under ``jit``.

    Args:
      x: (N, H, W, C) or (H, W, C) array; uint8, uint16, bool or float
        (converted with :func:`to_float`).
      size: an int sets the longest side (or the shortest with
        ``resize="shortest"``) keeping the aspect ratio; ``(height, width)``
        resizes to exactly that.
      resize: ``"longest"`` or ``"shortest"``.

    Returns:
      float32 array with the input's rank and channel count and the new
      height and width.

    Raises:
      InputError: bad shape, dtype, ``size`` or ``resize``.

    Example:
      >>> resize(np.zeros((2, 64, 48, 3), np.float32), 32).shape
      (2, 32, 24, 3)
    """
    size = _check_size(size, allow_none=False)
    _checks.one_of(resize, "resize", _RESIZE_MODES)
    a, batched = _as_images(x, "x")
    hw = _target_hw(a.shape[1], a.shape[2], size, resize)
    out = np.stack([_resize_float(img, hw) for img in a]) if len(a) else np.zeros((0, *hw, a.shape[3]), np.float32)
    return out if batched else out[0]


def center_crop(x: Any, size: Size) -> Any:
    """Crops the centre of images held in an array.

    The offset is ``round((H - h) / 2)`` (Python rounding), exactly as
    torchvision's ``CenterCrop``. Works on NumPy and JAX arrays alike and
    returns a slice of the input (no copy for NumPy).

    Args:
      x: (N, H, W, C) or (H, W, C) array.
      size: an int for a square crop, or ``(height, width)``.

    Returns:
      the cropped array, same type, rank and dtype as ``x``.

    Raises:
      InputError: bad shape or ``size``, or a crop larger than the image.

    Example:
      >>> center_crop(np.zeros((1, 256, 341, 3)), 224).shape
      (1, 224, 224, 3)
    """
    ch, cw = _crop_hw(size)
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) not in (3, 4):
        got = tuple(shape) if shape is not None else type(x).__name__
        raise InputError(f"x: expected shape (N, H, W, C) or (H, W, C), got {got}")
    h, w = shape[-3], shape[-2]
    if ch > h or cw > w:
        raise InputError(f"size: crop {ch}x{cw} is larger than the image {h}x{w}")
    top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
    return x[..., top : top + ch, left : left + cw, :]


def imagenet_eval(path_or_array: Any, crop: int = 224, resize_to: int = 256) -> np.ndarray:
    """torchvision's ImageNet evaluation preprocessing, without normalisation.

    Resizes the shortest side to ``resize_to`` (bilinear, antialiased) and
    crops the centre ``crop`` x ``crop``: ``Resize(256)`` + ``CenterCrop(224)``
    of torchvision's classification weights' ``transforms()``. For an 8-bit
    file this reproduces torchvision's PIL pipeline pixel for pixel (plus
    EXIF orientation). Mean/std normalisation is *not* applied: jaxviz models
    do that inside.

    Args:
      path_or_array: an image file, or an (H, W, 3) / (N, H, W, 3) array
        (uint8 or float in [0, 1]).
      crop: side of the square centre crop.
      resize_to: the shortest side before cropping; at least ``crop``.

    Returns:
      float32 array (1, crop, crop, 3) for a file or an (H, W, 3) array,
      (N, crop, crop, 3) for a batch.

    Raises:
      InputError: bad ``crop``/``resize_to`` or array shape.
      ImageError, ImageNotFoundError: as :func:`load`.

    Example:
      >>> imagenet_eval("cat.jpg").shape
      (1, 224, 224, 3)
    """
    crop = _checks.positive_int(crop, "crop")
    resize_to = _checks.positive_int(resize_to, "resize_to")
    if resize_to < crop:
        raise InputError(f"resize_to: expected at least crop={crop}, got {resize_to}")
    if isinstance(path_or_array, (str, os.PathLike)):
        x = load(path_or_array, resize_to, resize="shortest")
    else:
        x, _ = _as_images(path_or_array, "path_or_array")
        x = resize(x, resize_to, resize="shortest")
    return np.ascontiguousarray(center_crop(x, crop))


def save(x: Any, path: PathLike, *, quality: int = 95, text: Mapping[str, str] | None = None) -> Path:
    """Writes one image to a file, atomically.

    The format follows the suffix. Parent directories are created. The image
    is written to a temporary file next to ``path`` and moved over it with
    ``os.replace``, so ``path`` is either the old file or the complete new
    one, never half written.

    Args:
      x: (H, W, 3) RGB, (H, W, 4) RGBA (not for JPEG), (H, W) or (H, W, 1)
        greyscale, optionally with a leading batch axis of 1. Floats are
        clipped to [0, 1] and rounded to uint8; uint8 is written as is;
        uint16 and bool go through :func:`to_float`.
      path: destination ending in .png, .jpg, .jpeg, .webp, .tif, .tiff or
        .bmp (any case).
      quality: JPEG/WebP quality, 1 to 100; ignored by lossless formats.
      text: key/value text stored in a PNG's text chunks (:func:`read_text`
        gives them back); ignored by other formats.

    Returns:
      the ``Path`` written.

    Raises:
      InputError: a batch of more than one image, a bad shape or dtype,
        NaN/infinite values, an unsupported suffix or a bad ``quality``.
      OSError: the file system refused the write (the old file is intact).

    Example:
      >>> save(load("cat.jpg", 128)[0], "small.png")
      PosixPath('small.png')
    """
    path = Path(path)
    fmt = _SAVE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(
            f"path: unsupported suffix {path.suffix!r} in {str(path)!r}; expected one of {', '.join(_SAVE_FORMATS)}"
        )
    quality = _checks.positive_int(quality, "quality")
    if quality > 100:
        raise InputError(f"quality: expected an int from 1 to 100, got {quality}")

    a = np.asarray(x)
    if a.ndim == 4:
        if a.shape[0] != 1:
            raise InputError(
                f"x: expected a single image, got a batch of {a.shape[0]} with shape {a.shape} (save them one by one)"
            )
        a = a[0]
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (3, 4))) or 0 in a.shape:
        raise InputError(f"x: expected shape (H, W, 3), (H, W, 4), (H, W) or (1, H, W, 3), got {np.shape(x)}")
    if a.ndim == 3 and a.shape[-1] == 4 and fmt == "JPEG":
        raise InputError(f"x: JPEG cannot store an alpha channel; got shape {np.shape(x)} for {str(path)!r}")
    if a.dtype != np.uint8:
        try:
            a = to_float(a)
        except InputError as e:
            raise InputError(f"x: {str(e).split(': ', 1)[1]}") from None
        if not np.all(np.isfinite(a)):
            raise InputError("x: contains NaN or infinite values")
        a = np.round(np.clip(a, 0.0, 1.0) * 255).astype(np.uint8)
    img = Image.fromarray(np.ascontiguousarray(a))

    options: dict[str, Any] = {}
    if fmt in ("JPEG", "WEBP"):
        options["quality"] = quality
    if text and fmt == "PNG":
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        for k, v in text.items():
            info.add_itxt(str(k), str(v))  # iTXt: UTF-8 (file names in the settings need not be Latin-1)
        options["pnginfo"] = info

    with atomic_open(path, "wb") as f:
        img.save(f, format=fmt, **options)
    return path


def read_text(path: PathLike) -> dict[str, str]:
    """The text chunks of a PNG file (what :func:`save` stored with ``text=``).

    Args:
      path: an image file.

    Returns:
      key -> text; ``{}`` for other formats and for files that cannot be read
      as an image.

    Example:
      >>> p = save(np.zeros((2, 2, 3)), "a.png", text={"note": "hi"})
      >>> read_text(p)
      {'note': 'hi'}
    """
    try:
        with Image.open(path) as im:
            return {str(k): str(v) for k, v in getattr(im, "text", {}).items()}
    except (OSError, ValueError, Image.DecompressionBombError):
        return {}


def list_images(directory: PathLike, *, recursive: bool = False) -> list[Path]:
    """Lists the image files in a directory, sorted.

    Picks entries whose suffix is in :data:`IMAGE_SUFFIXES`, case-insensitively,
    also ones that cannot be read as files (a broken symbolic link, a folder
    named ``x.jpg`` when not recursing): :func:`load_folder` and the CLI then
    report them as unreadable rather than leave them out without a word.
    Hidden files and directories (names starting with ``.``, such as macOS
    ``._photo.jpg`` resource forks or :func:`save`'s temporary files) are
    skipped. Symlinked directories are not followed.

    Args:
      directory: the folder to list.
      recursive: also list sub-folders.

    Returns:
      paths (``directory`` joined with the relative name), sorted.

    Raises:
      ImageNotFoundError: ``directory`` does not exist (a ``FileNotFoundError``).
      NotADirectoryError: ``directory`` is a file.

    Example:
      >>> list_images("photos")
      [PosixPath('photos/photo0.png'), PosixPath('photos/photo1.png'), PosixPath('photos/photo2.png')]
    """
    root = Path(directory)
    if not root.exists():
        raise ImageNotFoundError(f"{root}: no such directory")
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a directory")

    def wanted(name: str) -> bool:
        return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES

    # every entry named like an image is listed, also one that cannot be read as a file (a broken symbolic link,
    # a folder named x.jpg when not recursing into folders): the loaders then report it like any unreadable file
    # instead of leaving it out without a word
    found: list[Path] = []
    if recursive:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            found.extend(Path(dirpath) / n for n in filenames if wanted(n))
    else:
        found = [root / e.name for e in os.scandir(root) if wanted(e.name)]
    return sorted(found)


def load_folder(
    directory: PathLike,
    *,
    size: Size,
    batch_size: int = 16,
    recursive: bool = False,
    skip_errors: bool = False,
) -> Iterator[tuple[list[Path], np.ndarray]]:
    """Streams the images of a folder in batches.

    Files come from :func:`list_images` (sorted) and are decoded one batch at
    a time, so memory holds one batch, never the folder. Arguments are
    checked and the folder is listed when this is called; decoding happens
    as the iterator is consumed. An empty folder yields nothing.

    Args:
      directory: the folder.
      size: an int resizes the shortest side to ``size`` and crops the
        centre square (``size`` x ``size``); ``(height, width)`` resizes to
        exactly that, ignoring the aspect ratio.
      batch_size: at most this many images per batch; every batch but the
        last is full (skipped files are replaced by the next ones).
      recursive: include sub-folders.
      skip_errors: skip unreadable files with a ``UserWarning`` naming them,
        instead of raising.

    Returns:
      an iterator of ``(paths, batch)``: the list of files and their
      (n, H, W, 3) float32 pixels in [0, 1], ``n <= batch_size``.

    Raises:
      InputError: bad ``size`` or ``batch_size``.
      FileNotFoundError, NotADirectoryError: as :func:`list_images`.
      ImageError: (while iterating, unless ``skip_errors``) a file is not a
        readable image; the message starts with its path.

    Example:
      >>> for paths, batch in load_folder("photos", size=64, batch_size=2):
      ...     print([p.name for p in paths], batch.shape)
      ['photo0.png', 'photo1.png'] (2, 64, 64, 3)
      ['photo2.png'] (1, 64, 64, 3)
    """
    size = _check_size(size, allow_none=False)
    batch_size = _checks.positive_int(batch_size, "batch_size")
    paths = list_images(directory, recursive=recursive)
    return _iter_folder(paths, size, batch_size, _warn_skipped if skip_errors else None)


def _warn_skipped(path: Path, error: Exception) -> None:
    # stacklevel 3: the frame iterating the generator, past this function and _iter_folder
    warnings.warn(f"{path}: skipped, not a readable image ({error})", UserWarning, stacklevel=3)


#: How a picture becomes the square an int ``size`` asks for (:func:`fit`).
FITS = ("crop", "pad", "stretch")
#: The colour ``fit="pad"`` fills with: ImageNet's mean, which a model's normalisation maps to zero.
PAD_COLOUR = (0.485, 0.456, 0.406)


def _load_fit(path: PathLike, size: int, how: str) -> tuple[np.ndarray, tuple[int, int, int, int], tuple[int, int]]:
    """One picture as a ``size`` x ``size`` square, where its pixels are in it (top, left, height, width), and the
    (H, W) it was resized to before any crop or pad (its aspect ratio; for ``"stretch"``, the square's).

    ``how``: ``"crop"`` resizes the shortest side to ``size`` and cuts the centre square (the longer side's ends
    are lost); ``"pad"`` resizes the longest side to ``size`` and letterboxes with :data:`PAD_COLOUR` (nothing
    lost); ``"stretch"`` resizes to the square (the aspect ratio changes).
    """
    if how == "stretch":
        return load(path, (size, size))[0], (0, 0, size, size), (size, size)
    img = load(path, size, resize="shortest" if how == "crop" else "longest")[0]
    h, w = img.shape[:2]
    if how == "crop":
        return center_crop(img[None], size)[0], (0, 0, size, size), (h, w)
    top, left = (size - h) // 2, (size - w) // 2
    out = np.empty((size, size, 3), np.float32)
    out[...] = np.asarray(PAD_COLOUR, np.float32)
    out[top:top + h, left:left + w] = img
    return out, (top, left, h, w), (h, w)


def _iter_folder(
    paths: Sequence[Path], size: Size, batch_size: int, skipped: Callable[[Path, Exception], None] | None = None,
    how: str = "crop", boxes: bool = False,
) -> Iterator[tuple]:
    """``(paths, images)`` batches of ``batch_size`` decoded images (an int ``size``: a square as ``how`` says
    (:func:`_load_fit`), centre crop by default; else :func:`load`'s sizing). With ``boxes``, ``(paths, images, boxes,
    sizes)``: each picture's place in its square and the (H, W) it had before the crop (its aspect ratio). An unreadable file raises
    ImageError, or with ``skipped`` is reported to it and left out (every batch but the last stays full)."""
    done: list[Path] = []
    arrays: list[np.ndarray] = []
    places: list[tuple] = []
    sizes: list[tuple] = []
    for p in paths:
        try:
            if isinstance(size, int):
                img, box, original = _load_fit(p, size, how)
                places.append(box)
                sizes.append(original)
            else:
                img = load(p, size)[0]
                places.append((0, 0) + img.shape[:2])
                sizes.append(img.shape[:2])
        except (ImageError, OSError) as e:
            if skipped is None:
                if isinstance(e, ImageError):
                    raise
                raise ImageError(f"{p}: cannot read ({type(e).__name__}: {e})") from e
            skipped(p, e)
            continue
        done.append(p)
        arrays.append(img)
        if len(done) == batch_size:
            yield (done, np.stack(arrays), places, sizes) if boxes else (done, np.stack(arrays))
            done, arrays, places, sizes = [], [], [], []
    if done:
        yield (done, np.stack(arrays), places, sizes) if boxes else (done, np.stack(arrays))


def _batch_source(batches: Any, size: int, batch_size: int, name: str = "batches") -> tuple[Iterator, int | None]:
    """(iterator of ``(names, images)``, number of images or None) from what the folder-streaming functions
    take: a folder path (:func:`load_folder`), an (N, H, W, 3) array (names are the indices), or an iterable of
    ``(names, images)`` pairs as it is."""
    if isinstance(batches, (str, os.PathLike)):
        return load_folder(batches, size=size, batch_size=batch_size), len(list_images(batches))
    shape = getattr(batches, "shape", None)
    if shape is not None:
        if len(shape) != 4:
            raise InputError(f"{name}: expected a folder, an (N, H, W, 3) array or (names, images) pairs; got an "
                             f"array of shape {tuple(shape)}")
        n = shape[0]
        return ((list(range(s, min(s + batch_size, n))), batches[s:s + batch_size])
                for s in range(0, n, batch_size)), n
    if not isinstance(batches, Iterable):
        raise InputError(f"{name}: expected a folder, an (N, H, W, 3) array or (names, images) pairs; got "
                         f"{type(batches).__name__}")
    return _pairs(iter(batches), name), None


def _pairs(it: Iterator, name: str) -> Iterator:
    for item in it:
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise InputError(f"{name}: expected (names, images) pairs, got an item of type {type(item).__name__}"
                             f"{' and shape ' + str(tuple(item.shape)) if hasattr(item, 'shape') else ''}")
        yield item
