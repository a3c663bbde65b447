"""Helpers the CLI's picture and folder commands share: channel lists, the "OUT exists" rule, picture
settings, saving, folders of images in batches, progress checkpoints, the random-weights note.

A command module never imports another command; what two commands share lives here or in
:mod:`._common` (models and weights).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from .._io import read_npz, write_npz
from ._common import check_writable

__all__ = [
    "parse_channels",
    "finished",
    "describe",
    "owning",
    "add_output_args",
    "add_folder_args",
    "check_out",
    "save",
    "save_table",
    "settings_of",
    "folder_paths",
    "iter_batches",
    "Skips",
    "checkpoint_path",
    "write_npz",
    "read_npz",
    "load_progress",
    "random_weights_note",
]


# --------------------------------------------------------------------------- shared helpers


def parse_channels(text: str) -> list[int]:
    """``"0-7"``, ``"3,5,9"`` or ``"0-3,8"`` -> a list of ints (argparse type)."""
    out: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            if "-" in part:
                a, b = part.split("-", 1)
                a, b = int(a), int(b)
                if b < a:
                    raise ValueError
                out.extend(range(a, b + 1))
            else:
                out.append(int(part))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected channels like 0-7 or 3,5,9, got {text!r}") from None
    if not out or min(out) < 0:
        raise argparse.ArgumentTypeError(f"expected non-negative channel indices, got {text!r}")
    return out


def add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="output picture (.png, .jpg, ...)")
    p.add_argument("--overwrite", action="store_true", help="redo even if OUT exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def check_out(out: Path, flag: str = "--out") -> None:
    """Refuses, before any work, an OUT the picture could not be written to: a folder, a suffix Pillow is not
    asked to write, or a folder that cannot be created or written."""
    from ..errors import InputError
    from ..image import _SAVE_FORMATS

    if out.is_dir():
        raise InputError(f"{flag}: expected a picture file, got the folder {str(out)!r}")
    if out.suffix.lower() not in _SAVE_FORMATS:
        raise InputError(f"{flag}: expected a file ending in {', '.join(_SAVE_FORMATS)}; got {str(out)!r}")
    check_writable(out.parent if str(out.parent) else Path("."), flag)


# arguments that do not change the picture (how it is computed, shown or where it goes)
_NOT_SETTINGS = ("func", "command", "resumable", "out", "overwrite", "no_progress", "checkpoint_every", "batch_size")
SETTINGS_KEY = "jaxviz"  # the PNG text chunk holding the command and settings that made the picture


def settings_of(args: argparse.Namespace) -> dict:
    """The command and the arguments of ``args`` that decide its picture, as JSON-ready values."""
    import json
    import os
    from pathlib import PurePath

    def plain(v):  # paths as absolute ones (cat.jpg and ./cat.jpg are the same input); the rest as text
        return os.path.abspath(v) if isinstance(v, PurePath) else str(v)

    skip = (*_NOT_SETTINGS, *getattr(args, "_not_settings", ()))  # a command's own, e.g. stylize's --resume
    keep = {k: v for k, v in sorted(vars(args).items()) if not k.startswith("_") and k not in skip}
    if getattr(args, "_seed_only_weights", False) and getattr(args, "weights", "random") != "random":
        keep.pop("seed", None)  # it draws nothing here: pretrained or FILE weights take no seed
    return {"command": args.command, "settings": json.loads(json.dumps(keep, default=plain))}


def _made_with(path: Path) -> dict | None:
    """What :func:`save` recorded in the picture at ``path`` (None for other formats, older pictures, others')."""
    import json

    from .. import image

    try:
        made = json.loads(image.read_text(path).get(SETTINGS_KEY, "null"))
    except ValueError:
        return None
    return made if isinstance(made, dict) and isinstance(made.get("settings"), dict) else None


def finished(args: argparse.Namespace) -> bool:
    """Checks OUT (:func:`check_out`), then True (and says so) when it exists and --overwrite was not given:
    a rerun does nothing. A PNG made by this command with other settings is refused with the differences (they
    are stored in it by :func:`save`), and so is a PNG without that record (another program's, or the input
    picture itself). Other formats cannot carry the record: an existing one counts as done."""
    from ..errors import InputError

    check_out(args.out)
    if args.out.exists() and not args.overwrite:
        made, now = _made_with(args.out), settings_of(args)
        if made is None and args.out.suffix.lower() == ".png":  # jaxviz's PNGs carry the record: not one of ours
            raise InputError(f"--out: {args.out} exists and was not made by jaxviz {now['command']} (a picture of "
                             "yours?); use another --out, or --overwrite to replace it")
        if made is not None and made != now:
            if made.get("command") != now["command"]:
                diff = f"it was made by jaxviz {made.get('command')}"
            else:
                was, new = made["settings"], now["settings"]
                diff = "other settings: " + ", ".join(f"--{k.replace('_', '-')} {was.get(k)!r} (now {new.get(k)!r})"
                                                      for k in sorted({*was, *new}) if was.get(k) != new.get(k))
            raise InputError(f"--out: {args.out} exists and {diff}; use another --out, or --overwrite to replace it")
        print(f"jaxviz {args.command}: {args.out} already exists; nothing to do (--overwrite to redo)", file=sys.stderr)
        return True
    return False


def describe(args: argparse.Namespace) -> str:
    """The model and weights a command ran, in words for a picture's title: ``vgg19, pretrained weights``,
    ``resnet18, random weights (seed 0)``, ``my.py:build, weights from w.safetensors``."""
    model = getattr(args, "model", None) or getattr(args, "arch", "?")
    weights = getattr(args, "weights", None)
    if weights == "pretrained":
        what = "pretrained weights"
    elif weights == "random":
        what = f"random weights (seed {getattr(args, 'seed', 0)})"
    elif weights:
        what = f"weights from {Path(weights).name}"
    else:
        what = "its own weights"
    return f"{model}, {what}"


def save(picture, path: Path, args: argparse.Namespace | None = None, title: str | None = None, *,
         drawn: bool = True) -> None:
    """Writes a float RGB picture atomically and reports it; with ``args``, a PNG records the command and
    settings that made it (:func:`finished` compares them on a rerun). A ``title`` is drawn above the picture
    (:func:`jaxviz.viz.titled`; ``drawn=False``: the picture shows it already) and kept in the PNG's ``Title``
    text."""
    import json

    from .. import image, viz

    text = {} if args is None else {SETTINGS_KEY: json.dumps(settings_of(args))}
    if getattr(args, "weights", None) == "random" and not title:
        picture = viz.corner_mark(picture)  # no title to say so (a dream, a stylised photo): the picture does
    if title:
        picture = viz.titled(picture, title) if drawn else picture
        text["Title"] = title
    image.save(picture, path, text=text or None)
    print(f"wrote {path} ({picture.shape[1]}x{picture.shape[0]})")


def save_table(path: Path, header: Sequence[str], rows: Sequence[Sequence]) -> None:
    """Writes a CSV table atomically (the listing beside a picture: written first, so the picture's existence,
    which makes a rerun do nothing, implies the table's)."""
    import csv
    import io

    from .._io import atomic_write_text

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def add_folder_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", type=Path, help="folder of images")
    p.add_argument("--recursive", action="store_true", help="include sub-folders")
    p.add_argument("--size", type=int, default=224, help="images are centre-cropped squares of this size (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, help="images per batch (default %(default)s)")
    p.add_argument("--checkpoint-every", type=int, default=20, metavar="B",
                   help="save progress every B batches; a rerun resumes from it (default %(default)s)")


def folder_paths(args: argparse.Namespace) -> list[Path]:
    from .. import image
    from ..errors import InputError

    for flag, v in (("--size", args.size), ("--batch-size", args.batch_size), ("--checkpoint-every", args.checkpoint_every)):
        if v < 1:
            raise InputError(f"{flag}: expected a positive number, got {v}")
    from ..models import protocol
    from ._common import network

    smallest = protocol.min_size(network(args))
    if args.size < smallest:
        raise InputError(f"--size: expected at least {smallest} px (the network's minimum), got {args.size}")
    paths = image.list_images(args.folder, recursive=args.recursive)
    out = getattr(args, "out", None)
    if out is not None:  # never the command's own picture (--out inside the folder) or its side files
        out = Path(out).resolve()
        paths = [p for p, r in ((p, p.resolve()) for p in paths)
                 if not (r == out or (r.parent == out.parent and p.name.startswith(out.name + ".")))]
    if not paths:
        raise InputError(f"folder: no images in {args.folder}")
    return paths


def iter_batches(paths, size: int, batch_size: int, skipped=None, how: str = "crop", boxes: bool = False):
    """(paths, (B, size, size, 3) float32) batches: shortest side to ``size``, centre crop (as image.load_folder).

    With ``skipped`` (a callable ``(path, error)``), unreadable files are reported to it and left out, and each
    batch but the last is still full; without it they raise :class:`~jaxviz.errors.ImageError`.
    """
    from .. import image
    from ..cli import check_terminated

    for batch in image._iter_folder(paths, size, batch_size, skipped, how, boxes):
        check_terminated()  # a batch boundary: a SIGTERM whose first raise was swallowed stops the run here
        yield batch


class Skips:
    """The ``skipped`` callback of :func:`iter_batches` for a command: one stderr line per unreadable file
    (through the progress bar, when set), the bar advanced, the files counted."""

    def __init__(self, command: str):
        self.command = command
        self.paths: list = []
        self.bar = None

    def __call__(self, path, error) -> None:
        self.paths.append(path)
        line = f"jaxviz {self.command}: skipped {path}: {error}"
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
            self.bar.update(1)
        else:
            print(line, file=sys.stderr)

    def note(self) -> str:
        """``"; skipped K unreadable file(s)"``, or ``""``."""
        k = len(self.paths)
        return f"; skipped {k} unreadable file{'s' * (k > 1)}" if k else ""


def owning(folder: Path, process: int = 0):
    """Holds ``folder/.jaxviz.lock`` (``.jaxviz.<process>.lock`` for the other processes of a --distributed run)
    while a command writes into ``folder``: a second run on the same folder (started twice, a scheduler's retry)
    says it waits and waits (:func:`jaxviz._io.holding`); it then reads what the first finished instead of doing
    it again."""
    from .._io import holding

    name = ".jaxviz.lock" if process == 0 else f".jaxviz.{process}.lock"
    return holding(folder / name, f"jaxviz: {folder} is in use by another jaxviz run; waiting for it to finish")


def checkpoint_path(out: Path, what: str) -> Path:
    return out.with_name(out.name + f".{what}.npz")


def load_progress(path: Path, signature: str) -> dict | None:
    """The arrays of a checkpoint or feature cache ``path`` written with ``signature``; None (saying why on
    stderr) when there is none, when it is unreadable, or when other settings or inputs made it. Either way
    the run goes on: from the saved progress, or from the start."""
    from .._io import UNREADABLE

    if not path.exists():
        return None
    try:
        saved = read_npz(path)
    except UNREADABLE as e:
        print(f"ignoring {path}: unreadable ({e})", file=sys.stderr)
        return None
    if str(saved.get("signature")) != signature:
        print(f"ignoring {path}: it was made with other settings", file=sys.stderr)
        return None
    return saved


def random_weights_note(args: argparse.Namespace) -> None:
    if getattr(args, "weights", None) == "random":
        print("(random weights: the pictures show an untrained network; use --weights pretrained)", file=sys.stderr)
