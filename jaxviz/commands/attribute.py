"""``jaxviz attribute IMAGES_DIR --method M --target top1 --out OUT_DIR``: batch attribution over a folder.

Streams the folder in batches (memory holds one batch, never the folder),
shards each batch over all of the process's devices (:mod:`jaxviz.parallel`;
with ``--distributed`` several hosts split the images, see docs/demo.md) and
writes, per image ``name.ext``:

* ``OUT_DIR/name.ext.npy``: the attribution, float32, (H, W, 3) for pixel
  methods, (H, W) for layer methods (upsampled to the input),
* ``OUT_DIR/name.ext.png``: a jet heatmap of it overlaid on the (resized) image,
  labelled with the target class and its probability, with the colour scale
  under it (the map's values at its ends; ``--no-label``: the bare overlay,
  the image's size),

and ``OUT_DIR/summary.csv`` with one row per image: file, predicted class
index, name and probability, the target class and its probability.
``OUT_DIR/attribute.json`` records the settings. SmoothGrad's noise for an
image comes from its own key, ``fold_in(key, crc32(name))`` (``name``
relative to IMAGES_DIR; ``key`` from ``--option key=SEED``, default 0), so
its noise does not depend on ``--batch-size`` or on the number of devices (the maps agree to float32
round-off, which noisy inputs amplify to ~0.3% of a map's maximum; see docs/attribution.md). Rows are appended (and
fsynced) after each batch's files are written, so an interruption loses at
most the batch in flight; running the same command again skips every image
already in the CSV, except one modified since its map was written (redone,
its row replaced), and finds its compiled programs in JAX's persistent
compilation cache (``<jaxviz cache>/xla``, at most 1 GiB, least recently used
entries evicted; off with ``JAXVIZ_COMPILE_CACHE=0``, and left alone when
JAX's own cache directory is configured).
"""

from __future__ import annotations

import argparse
import ast
import csv
import inspect
import io
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ._common import seed, writable_dir
from ._outputs import Skips, iter_batches, owning, random_weights_note

__all__ = ["register", "run", "CSV_FIELDS", "MODELS"]

CSV_FIELDS = ("file", "predicted", "predicted_name", "predicted_prob", "target", "target_name", "target_prob")
MODELS = ("vgg19", "vgg16", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "small-cnn")


def method_list(text: str) -> tuple[str, ...]:
    """argparse type of --method: one name, several separated by commas (in that order), or ``all``."""
    from ..attribution import METHODS

    names = sorted(METHODS) if text == "all" else [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in METHODS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"expected methods from {', '.join(sorted(METHODS))} or all, got {text!r}")
    return tuple(dict.fromkeys(names))


def model_spec(text: str) -> str:
    """argparse type of attribute's --model: a built-in name or MODULE:FACTORY (the user's own model)."""
    if text in MODELS or ":" in text:
        return text
    raise argparse.ArgumentTypeError(f"expected one of {', '.join(MODELS)} or MODULE:FACTORY, got {text!r}")


def register(sub: argparse._SubParsersAction) -> None:
    from ..attribution import METHODS

    p = sub.add_parser(
        "attribute",
        help="attribution maps for every image in a folder (batched, sharded over devices, resumable)",
        description="Streams a folder of images through an attribution method in batches, sharded over all "
        "devices; writes a .npy and a heatmap PNG per image and a summary CSV. Rerun to resume.",
    )
    p.add_argument("images", type=Path, metavar="IMAGES_DIR", help="folder of images")
    p.add_argument("--method", default="saliency", type=method_list, metavar="M[,M...]|all",
                   help=f"attribution method, or several separated by commas, or all: one pass over the folder, "
                   f"each method's maps in OUT_DIR/METHOD/ and a side-by-side figure per image in OUT_DIR "
                   f"(default %(default)s; methods: {', '.join(sorted(METHODS))})")
    p.add_argument("--target", default="top1",
                   help="'top1' (the predicted class, default), a class index, or a class name")
    p.add_argument("--out", type=Path, required=True, metavar="OUT_DIR", help="output folder")
    p.add_argument("--model", "--arch", dest="model", default="vgg19", type=model_spec,
                   metavar="{" + ",".join(MODELS) + "} or MODULE:FACTORY",
                   help="network (default %(default)s); small-cnn is the built-in shapes classifier; "
                   "MODULE:FACTORY is your own (see jaxviz featmaps --help: --model)")
    p.add_argument("--weights", default="pretrained", metavar="pretrained|random|FILE",
                   help="pretrained (VGG: ImageNet weights from the cache; small-cnn: the built-in trained "
                   "model, trained on first use), random, or a weights file")
    p.add_argument("--seed", type=seed, default=0, help="seed for --weights random (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, help="images per batch, over all devices (default %(default)s)")
    p.add_argument("--size", type=int, default=None,
                   help="the model sees SIZE x SIZE squares (default 224; small-cnn 32); --resize says how")
    p.add_argument("--resize", choices=["crop", "pad", "stretch"], default="crop",
                   help="crop: shortest side to SIZE, centre square (the longer side's ends are cut, and the "
                   "label says so); pad: longest side to SIZE, letterboxed with the ImageNet mean colour, maps "
                   "written and drawn on the whole picture; stretch: to the square, aspect ratio changed "
                   "(default %(default)s)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="method option, repeatable, e.g. --option window=32 --option stride=16 (with --model "
                   "small-cnn, the demo's options are the defaults: occlusion window=6 stride=2 baseline=0.5)")
    p.add_argument("--recursive", action="store_true", help="include sub-folders")
    p.add_argument("--no-label", action="store_true",
                   help="bare overlays, the image's size (by default each is labelled with the target class and its "
                   "probability and has its colour scale under it)")
    p.add_argument("--picture", choices=["auto", "heat", "gradient"], default="auto",
                   help="how the PNG shows the map: heat over the image, or the signed RGB gradient around grey "
                   "(as the guided-backprop and deconvnet papers show it); auto: gradient for guided_backprop, "
                   "deconvnet and guided_grad_cam, heat otherwise")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--distributed", action="store_true",
                   help="several hosts: run the same command on each; they join one JAX run "
                   "(jax.distributed.initialize, the cluster detected from Cloud TPU, SLURM, Open MPI or "
                   "Kubernetes), split the images among them and write to the one OUT_DIR, which must be on a "
                   "filesystem they share")
    p.set_defaults(func=run, resumable=True)


# ----------------------------------------------------------------------------- settings


def parse_options(items: Sequence[str]) -> dict[str, Any]:
    """``["window=32", "baseline=0.5"]`` -> ``{"window": 32, "baseline": 0.5}`` (values as Python literals)."""
    from ..errors import InputError

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise InputError(f"--option: expected KEY=VALUE, got {item!r}")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value  # a bare word: a string option such as method=riemann_left
    return out


def _model(args: argparse.Namespace, size: int):
    """(net, params, class names) for the run's --model at ``size`` px (see :func:`_default_size`)."""
    from .. import datasets

    if args.model == "small-cnn":
        from ._common import small_cnn_and_params

        net, params = small_cnn_and_params(args)
        return net, params, list(datasets.CLASSES)
    from ._common import imagenet_classes, model_and_params

    if ":" in args.model:  # the user's own: its classes are its output's indices
        ns = argparse.Namespace(arch=None, model=args.model, weights=args.weights, seed=args.seed, size=size)
        net, params = model_and_params(ns)
        import jax
        import jax.numpy as jnp

        from ..models import protocol

        k = jax.eval_shape(lambda p: protocol.forward(net, p, jnp.zeros((1, size, size, 3))), params).shape[-1]
        return net, params, [str(i) for i in range(k)]
    net, params = model_and_params(argparse.Namespace(arch=args.model, weights=args.weights, seed=args.seed))
    return net, params, imagenet_classes()


def _cut(resize: str, shape: tuple[int, int]) -> str:
    """What --resize crop left out of a picture that is not square (``shape``: its (H, W) before the crop), for
    its label (nothing otherwise)."""
    h, w = shape
    if resize != "crop" or h == w:
        return ""
    return " (sides cut)" if w > h else " (top, bottom cut)"


def _default_size(args: argparse.Namespace) -> int:
    """--size when not given, known without building the model: the small CNN's training size, else 224."""
    if args.model == "small-cnn":
        from .. import train

        return train.Config().size
    return 224


def _target(text: str, classes: list[str]) -> int:
    """-1 for top1, else a class index."""
    from ..errors import InputError

    if text == "top1":
        return -1
    try:
        t = int(text)
    except ValueError:
        if text in classes:
            return classes.index(text)
        raise InputError(f"--target: expected 'top1', a class index in [0, {len(classes)}) or a class name, got {text!r}") from None
    if not 0 <= t < len(classes):
        raise InputError(f"--target: expected a class index in [0, {len(classes)}), got {t}")
    return t


# options that do not change the maps (the methods' results do not depend on their batch size)
_NOT_SETTINGS = ("batch_size",)


def _shapes_model_note(paths) -> None:
    """Once per run: the built-in small CNN is a 32 px shapes classifier; on other pictures (a photo: any of the
    first files not 32x32, read from its header) its labels and maps mean little."""
    from PIL import Image

    from .. import datasets

    for p in paths[:8]:
        try:
            with Image.open(p) as im:
                if im.size != (32, 32):
                    break
        except OSError:
            continue
    else:
        return
    print(f"note: small-cnn is jaxviz's 32 px shapes classifier ({', '.join(datasets.CLASSES)}); it knows nothing "
          "about photos, so its labels and maps on them mean little (for photos: --model vgg19 or resnet50 with "
          "pretrained weights)", file=sys.stderr)


def _settings(args: argparse.Namespace, per: dict[str, dict], size: int) -> dict:
    """What decides the outputs, for attribute.json: one method as ``method``/``options``; several as lists,
    their options by method."""
    def opts(options):
        return {k: repr(v) for k, v in sorted(options.items()) if k not in _NOT_SETTINGS}

    methods = list(per)
    one = len(methods) == 1
    return {"method": methods[0] if one else methods,
            "options": opts(per[methods[0]]) if one else {m: opts(o) for m, o in per.items()},
            "target": args.target, "model": args.model, "weights": args.weights,
            "seed": args.seed if args.weights == "random" else None, "size": size, "resize": args.resize,
            "recursive": args.recursive,
            "picture": _picture(args.picture, methods[0]) if one else args.picture}


def _picture(choice: str, method: str) -> str:
    """--picture resolved for a method: ``heat`` or ``gradient`` (auto: gradient for viz.GRADIENT_METHODS)."""
    if choice != "auto":
        return choice
    from ..viz.figures import GRADIENT_METHODS

    return "gradient" if method in GRADIENT_METHODS else "heat"


def _effective(settings: dict) -> dict:
    """``settings`` with the method's defaults filled into its options, so ``--option abs=True`` (saliency's
    default) matches a run without it."""
    from .. import attribution

    def filled(method, options):
        fn = attribution.METHODS.get(method)
        options = dict(options or {})
        if fn is None:
            return options
        defaults = {k: repr(p.default) for k, p in inspect.signature(fn).parameters.items()
                    if p.kind is p.KEYWORD_ONLY and p.default is not p.empty and k not in _NOT_SETTINGS}
        return {**defaults, **{k: v for k, v in options.items() if k not in _NOT_SETTINGS}}

    method = settings.get("method")
    if isinstance(method, list):
        options = {m: filled(m, (settings.get("options") or {}).get(m)) for m in method}
    else:
        options = filled(method, settings.get("options"))
    # folders written before --picture existed drew heat
    return {**settings, "picture": settings.get("picture", "heat"), "resize": settings.get("resize", "crop"),
            "options": options}


# ----------------------------------------------------------------------------- files


PART_GLOB = "summary.process*.csv"


def _part_path(out: Path, process: int) -> Path:
    """The CSV a process appends its rows to: summary.csv for the first (the only one, usually), a part file
    for each other process of a --distributed run (merged into summary.csv when the run ends, or by the next)."""
    return out / ("summary.csv" if process == 0 else f"summary.process{process}.csv")


#: CSV files are UTF-8; a file name that is not (Linux allows any bytes) keeps its bytes through
#: ``surrogateescape``, as Python's own file-system encoding does, so it round-trips into the CSV and back.
CSV_ENCODING = dict(encoding="utf-8", errors="surrogateescape")


def _npy_intact(path: Path) -> bool:
    """The ``.npy`` has a readable header and exactly the bytes it announces (a truncated or partial copy has
    fewer): checked from the header, without reading the array."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
            offset = f.tell()
        return os.path.getsize(path) == offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    except (OSError, ValueError, EOFError, SyntaxError, TypeError):
        return False


def _png_intact(path: Path) -> bool:
    """The ``.png`` starts with the PNG signature and ends with its IEND chunk (a truncated copy does not)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            f.seek(max(0, size - 12))
            tail = f.read(12)
        return head == b"\x89PNG\r\n\x1a\n" and tail[4:8] == b"IEND"
    except OSError:
        return False


def _files(out: Path, methods: Sequence[str]):
    """``name -> (maps, pictures)``: the files an image's outputs are, for one method (``NAME.npy``,
    ``NAME.png``) or several (``METHOD/NAME.npy`` and ``METHOD/NAME.png`` each, and the figure ``NAME.png``)."""
    if len(methods) == 1:
        return lambda name: ([out / f"{name}.npy"], [out / f"{name}.png"])
    return lambda name: ([out / m / f"{name}.npy" for m in methods],
                         [*(out / m / f"{name}.png" for m in methods), out / f"{name}.png"])


def _read_done(csv_path: Path, out: Path, files) -> dict[str, dict]:
    """Rows of a previous run whose files are all there and intact (a torn last line, a malformed row, a map cut
    short or a damaged picture are dropped: their images are done again), from ``csv_path`` and the part files
    other processes of a --distributed run left beside it. A CSV that cannot be parsed at all is set aside
    (``summary.csv.unreadable``) and its images are done again, with one line saying so."""
    done = {}
    for path in [csv_path, *sorted(out.glob(PART_GLOB))]:
        if not path.exists():
            continue
        try:
            with open(path, newline="", **CSV_ENCODING) as f:
                reader = csv.DictReader(f, CSV_FIELDS if path != csv_path else None)  # part files: no header
                rows = list(reader)
                if path == csv_path and tuple(reader.fieldnames or ()) != CSV_FIELDS:
                    raise csv.Error(f"its header is not {','.join(CSV_FIELDS)}")
        except (csv.Error, OSError) as e:
            aside = path.with_name(path.name + ".unreadable")
            os.replace(path, aside)
            print(f"jaxviz attribute: {path} is unreadable ({e}); moved it to {aside.name} and doing its images "
                  "again", file=sys.stderr)
            continue
        for row in rows:
            if None in row or any(row.get(k) in (None, "") for k in CSV_FIELDS):
                continue  # torn or malformed row
            name = row["file"]
            maps, pictures = files(name)
            if all(map(_npy_intact, maps)) and all(map(_png_intact, pictures)):
                done[name] = row
    return done


def _merge_parts(csv_path: Path, out: Path, files, done: dict[str, dict] | None = None) -> None:
    """summary.csv rewritten with the finished rows, sorted by file, then the part files removed. ``done``:
    those rows when already read (by :func:`_read_done`, nothing appended since); by default they are read."""
    parts = sorted(out.glob(PART_GLOB))
    if done is None:
        done = _read_done(csv_path, out, files)
    _rewrite_csv(csv_path, [done[k] for k in sorted(done)])
    for part in parts:
        part.unlink(missing_ok=True)


def image_keys(key, names: Sequence[str]):
    """One PRNG key per image: ``fold_in(key, crc32(name))`` of its name relative to IMAGES_DIR (so a map of a
    random method does not depend on which batch or device the image lands in)."""
    import zlib

    import jax
    import jax.numpy as jnp

    crc = jnp.asarray([zlib.crc32(n.encode("utf-8", "surrogateescape")) for n in names], jnp.uint32)
    return jax.vmap(lambda c: jax.random.fold_in(key, c))(crc)


def _changed_since(paths: Sequence[Path], root: Path, files, done: dict[str, dict]) -> list[str]:
    """Names in ``done`` whose image file was modified after its map (``NAME.npy``) was written, as ``make``
    decides (an edited picture would otherwise keep the old map)."""
    changed = []
    for p in paths:
        name = p.relative_to(root).as_posix()
        if name in done:
            try:
                if p.stat().st_mtime_ns > files(name)[0][0].stat().st_mtime_ns:
                    changed.append(name)
            except OSError:
                pass  # gone or unreadable now: the batch reader reports it
    return changed


def _rewrite_csv(csv_path: Path, rows: Sequence[dict]) -> None:
    from .._io import atomic_write_bytes

    buf = io.StringIO()
    w = csv.DictWriter(buf, CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(csv_path, buf.getvalue().encode(**CSV_ENCODING))


def _append_rows(csv_path: Path, rows: Sequence[dict]) -> None:
    buf = io.StringIO()
    csv.DictWriter(buf, CSV_FIELDS, lineterminator="\n").writerows(rows)
    from .._io import write_error

    try:
        with open(csv_path, "a", newline="", **CSV_ENCODING) as f:
            f.write(buf.getvalue())
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:  # a torn last line is dropped on the next read; its images are done again
        raise write_error(csv_path, e) from e


def _write_outputs(out: Path, name: str, img: np.ndarray, attr: np.ndarray, method: str, label: str | None = None,
                   picture: str = "heat", mark: str | None = None) -> None:
    """The .npy and the PNG of one image (each written atomically): the heat overlay, with a ``label`` in its
    corner and the colour scale under it (the map's values at its two ends); or (``picture="gradient"``) the
    signed RGB gradient around grey (:func:`jaxviz.viz.gradient_image`), with the label. ``mark`` ("random
    weights") goes in the picture's bottom-right corner."""
    from .. import image, viz
    from .._io import atomic_open

    npy = out / f"{name}.npy"
    with atomic_open(npy, "wb") as f:
        np.save(f, attr.astype(np.float32))
    side = max(max(img.shape[:2]), 128)  # tiny inputs (the 32 px small CNN) are shown enlarged
    if picture == "gradient":
        pic = viz.gradient_image(attr, size=side)
        pic = pic if label is None else viz.label(pic, label)
        image.save(pic if mark is None else viz.corner_mark(pic, mark), out / f"{name}.png")
        return
    pic, (lo, hi) = viz.overlay_and_range(img, viz.heat(method, attr[None])[0], size=side)
    if mark is not None:
        pic = viz.corner_mark(pic, mark)
    if label is not None:
        pic = viz.with_colorbar(viz.label(pic, label), lo, hi, cmap="jet", title=viz.heat_title(method))
    image.save(pic, out / f"{name}.png")


def _write_figure(out: Path, name: str, img: np.ndarray, attrs: dict[str, np.ndarray], label: str | None,
                  mark: str | None = None) -> None:
    """``OUT_DIR/NAME.png``: the input, then each method's map over it (titled columns; the label in the corner)."""
    from .. import image, viz
    from ._common import DEMO_METHODS

    titles = {**viz.METHOD_TITLES, **{n: t for n, t, _ in DEMO_METHODS}}
    heats = {m: viz.heat(m, a[None]) for m, a in attrs.items()}
    side = max(img.shape[0], 128)
    pic = viz.overview(img[None], heats, {m: titles.get(m, m) for m in attrs}, [label or ""], size=side)
    image.save(pic if mark is None else viz.corner_mark(pic, mark), out / f"{name}.png")


# ----------------------------------------------------------------------------- main

def memory_floor(net, params, size: int, batch: int) -> int:
    """Bytes a batch of ``batch`` images of ``size`` px needs at the least: the input and the output of every
    layer with parameters of its own (convolutions, dense layers, residual blocks; a gradient keeps them all;
    the methods need more)."""
    import jax
    import jax.numpy as jnp

    from ..models import protocol

    model = protocol.as_model(net)
    inner = params.get("params", params) if isinstance(params, dict) else {}
    layers = [n for n in model.layers if _owns_params(inner, n)]
    x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
    shapes = jax.eval_shape(lambda p, x: protocol.taps(model, p, x, layers), params, x) if layers else {}
    return 4 * batch * size * size * 3 + sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in shapes.values())


def _owns_params(tree, tap: str) -> bool:
    """Whether the tap's module holds parameters: its path in the params tree (``block/conv``), or its path
    joined by ``_`` (jaxviz's ResNet keeps ``layer1/0`` as ``layer1_0``)."""
    for parts in (tap.split("/"), [tap.replace("/", "_")]):
        node = tree
        for part in parts:
            node = node.get(part) if hasattr(node, "get") else None
            if node is None:
                break
        if node is not None:
            return True
    return False


def memory_available(devices=None) -> int | None:
    """Bytes free on the smallest of ``devices`` (default: this process's devices): a GPU/TPU allocator's limit
    less what it already holds (the replicated params, other arrays); on the CPU the host memory available
    (Linux's MemAvailable, else the RAM). None when unknown: a GPU/TPU that reports no limit is not
    compared with host RAM."""
    import jax

    devices = list(devices) if devices is not None else jax.local_devices()
    free = []
    for d in devices:
        stats = d.memory_stats() or {}
        if stats.get("bytes_limit"):
            free.append(int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)))
    if free:
        return min(free)
    if any(d.platform != "cpu" for d in devices):
        return None
    return _host_memory_available()


def _host_memory_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def _check_memory(net, params, size: int, per_device: int, devices=None) -> None:
    """Refuses, before any image is decoded, a --size/--batch-size the device cannot hold (rather than the
    process being killed by the OS once memory runs out)."""
    from ..errors import InputError

    have = memory_available(devices)
    need = memory_floor(net, params, size, per_device)
    if have is not None and need > have:
        raise InputError(f"--size: {size} px in batches of {per_device} per device needs at least "
                         f"{need / 2**30:.1f} GiB, more than the {have / 2**30:.1f} GiB free on a device here; "
                         "use a smaller --size or --batch-size")


def run(args: argparse.Namespace) -> int:
    import jax
    import jax.numpy as jnp
    from tqdm.auto import tqdm

    from .. import _checks, attribution, image, parallel
    from .._io import atomic_write_text
    from ..errors import InputError
    from ..models import protocol

    if args.distributed:  # first: before anything starts JAX's backends
        try:
            parallel.initialize()
        except InputError as e:
            raise InputError(f"--distributed: could not join a multi-process run: {getattr(e, 'reason', e)}; start "
                             "the command on every host under SLURM (srun), Open MPI (mpirun), Cloud TPU or "
                             "Kubernetes") from None
    if args.batch_size < 1:
        raise InputError(f"--batch-size: expected a positive int, got {args.batch_size}")
    if not args.images.is_dir():
        why = ", a file (give its folder)" if args.images.exists() else " (no such folder)"
        raise InputError(f"IMAGES_DIR: expected a folder of images, got {str(args.images)!r}{why}")
    methods = args.method
    multi = len(methods) > 1
    given = parse_options(args.option)
    per: dict[str, dict[str, Any]] = {}  # each method's options: the --option keys it takes
    for m in methods:
        method_fn = attribution.METHODS[m]
        mine = {k: v for k, v in given.items() if not multi or attribution._common.accepts(method_fn, k)}
        try:
            attribution._common.check_options(method_fn, mine)
        except InputError as e:  # "options: saliency has no option 'bogus'; ..." in the command line's words
            raise InputError("--option" + str(e).removeprefix("options")) from None
        if args.model == "small-cnn":
            # the demo's settings for the model it trained (occlusion: a 6 px window at stride 2 on its 32 px
            # pictures, where the library's default 16 px window, made for 224 px, leaves a few coarse blocks)
            from ._common import DEMO_METHODS as DEMO

            for k, v in next((o for name, _, o in DEMO if name == m), {}).items():
                mine.setdefault(k, v)
        if m in attribution.LAYER_METHODS:
            mine.setdefault("upsample", True)
            if not mine["upsample"]:
                raise InputError("--option: upsample=False is not supported here: maps are written at the input's size")
        per[m] = mine
    unused = [k for k in given if not any(attribution._common.accepts(attribution.METHODS[m], k) for m in methods)]
    if unused:
        raise InputError(f"--option: none of {', '.join(methods)} has an option {unused[0]!r}")

    # what is to do is decided before the model is built (a finished folder answers at once)
    size = args.size if args.size is not None else _default_size(args)

    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise InputError(f"--out: expected a folder, got the file {out}")
    settings = _settings(args, per, size)
    pictures = {m: _picture(args.picture, m) for m in methods}
    settings_path = out / "attribute.json"
    if settings_path.exists():
        previous, now = _effective(json.loads(settings_path.read_text())), _effective(settings)
        if previous != now:
            flat = [(k, previous.get(k), v) for k, v in now.items() if k != "options" and previous.get(k) != v]
            if previous["method"] == now["method"] and isinstance(now["method"], str):  # options: those that differ
                was, new = previous["options"], now["options"]
                flat += [(f"option {k}", was.get(k), new.get(k)) for k in sorted({*was, *new}) if was.get(k) != new.get(k)]
            diff = ", ".join(f"{k}={a!r} (now {b!r})" for k, a, b in flat)
            raise InputError(f"--out: {out} holds results of different settings: {diff}; use another --out or delete it")

    root = args.images
    # never the outputs themselves (OUT_DIR inside IMAGES_DIR, or the same folder): a rerun would attribute its
    # own heatmaps (NAME.png beside NAME.npy in OUT_DIR)
    inside = out.resolve()

    def is_output(p: Path) -> bool:
        r = p.resolve()
        if inside != root.resolve() and inside in r.parents:
            return True
        if r.parent != inside or not p.name.endswith(".png"):
            return False
        return any((inside / d / (p.name[:-4] + ".npy")).exists() for d in ("", *methods))  # a map's picture

    paths = [p for p in image.list_images(root, recursive=args.recursive) if not is_output(p)]
    if not paths:
        hint = " (it has sub-folders: add --recursive)" if not args.recursive and any(
            d.is_dir() and d.resolve() != inside for d in root.iterdir()) else ""
        raise InputError(f"IMAGES_DIR: no images in {str(root)!r}{hint}")
    if args.model == "small-cnn":
        _shapes_model_note(paths)
    writable_dir(out, "--out")  # created, and a file written in it, or one line naming --out
    # one run owns OUT_DIR at a time (per process of a --distributed run): a second waits, then finds the
    # work done; rows are never written twice
    with owning(out, jax.process_index()):
        csv_path = out / "summary.csv"
        files = _files(out, methods)
        done = _read_done(csv_path, out, files)
        changed = _changed_since(paths, root, files, done)
        for name in changed:  # an image edited after its map was written: redone, its old row dropped
            del done[name]
        todo = [p for p in paths if p.relative_to(root).as_posix() not in done]
        # several processes (--distributed): every one has read the same state; the first merges the part files
        # into summary.csv before anyone appends, and each takes every nprocs-th image (so all finish together)
        rank, nprocs = jax.process_index(), jax.process_count()
        parallel.barrier("jaxviz-attribute-read")
        if rank == 0:  # the rows read above (less the changed ones): nobody appends before the next barrier
            _merge_parts(csv_path, out, files, done)
        parallel.barrier("jaxviz-attribute-merged")
        if paths and not todo:
            print(f"all {len(paths)} images already done; results in {out}")
            return 0
        ours = todo[rank::nprocs]

        net, params, classes = _model(args, size)
        if size < net.min_size:
            raise InputError(f"--size: expected at least {net.min_size} for {args.model}, got {size}")
        target = _target(args.target, classes)

        occ = per.get("occlusion")
        if occ is not None and occ.get("groups") is None and occ.get("method", "auto") != "full":
            # one compiled call serves the whole folder: size the window groups for all of it (same numbers either way)
            try:
                default_window = inspect.signature(attribution.occlusion).parameters["window"].default
                occ["groups"] = attribution.occlusion_auto_groups(net, (size, size),
                                                window=occ.get("window", default_window),
                                                stride=occ.get("stride"), images=len(todo),
                                                approximate=occ.get("approximate"))
            except (InputError, TypeError, ValueError):
                pass  # malformed window/stride: occlusion() itself reports them

        # a random method (SmoothGrad) gets one key per image, drawn from its file name: its map then depends on
        # neither --batch-size nor the number of devices (one key for the batch would follow each image's position
        # in its batch, and on each device's slice)
        random = {m: "key" in inspect.signature(attribution.METHODS[m]).parameters for m in methods}
        call = {m: {k: v for k, v in per[m].items() if k != "key"} for m in methods}
        random_keys = any(random.values())
        base_key = None
        if random_keys:
            try:
                base_key = _checks.prng_key(given.get("key"))
            except InputError as e:
                raise InputError(f"--option {e}") from None

        def fn(p, x, t, k):
            logits = protocol.forward(net, p, x)
            tgt = jnp.where(t < 0, jnp.argmax(logits, -1), t).astype(jnp.int32)
            attrs = tuple(attribution.METHODS[m](net, p, x, tgt, **call[m], **({"key": k} if random[m] else {}))
                          for m in methods)
            return attrs, jax.nn.softmax(logits, -1), tgt

        try:  # the methods' own checks of their options, before any image is decoded (tracing only, no compute)
            jax.eval_shape(fn, params, jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32),
                           jax.ShapeDtypeStruct((1,), jnp.int32), image_keys(jax.random.key(0), ["x"]))
        except InputError as e:
            if str(e).split(":", 1)[0] in given:  # e.g. "steps: expected a positive int" from --option steps=0
                raise InputError(f"--option {e}") from None
            raise
        sharded = parallel.data_parallel(fn)
        params = parallel.replicate(params, sharded.mesh)
        ndev = sharded.num_devices
        _check_memory(net, params, size, -(-args.batch_size // ndev), sharded.mesh.devices.flat)
        again = f", {len(changed)} modified since their maps" if changed else ""
        hosts = f" (process {rank + 1} of {nprocs}: {len(ours)} of the {len(todo)} images)" if nprocs > 1 else ""
        print(f"{', '.join(methods)} on {len(todo)} image{'s' * (len(todo) != 1)} ({len(done)} already done{again}) with "
              f"{args.model}, batches of {args.batch_size} over {ndev} device{'s' * (ndev > 1)}{hosts}", file=sys.stderr)
        written, first_written = 0, None
        mark = "random weights" if args.weights == "random" else None  # said on each picture, not only here
        skips = Skips("attribute")
        rows_path = _part_path(out, rank)
        with tqdm(total=len(ours), desc="+".join(methods), unit="img", disable=args.no_progress) as bar:
            skips.bar = bar
            for batch_paths, x, boxes, originals in iter_batches(ours, size, args.batch_size, skips, args.resize,
                                                                 boxes=True):
                t = np.full((len(x),), target, np.int32)
                names = [p.relative_to(root).as_posix() for p in batch_paths]
                k = image_keys(base_key, names) if random_keys else np.zeros((len(x),), np.uint32)
                attrs, probs, tgt = jax.device_get(sharded(params, x, t, k))
                if not settings_path.exists():  # recorded with the first results (a run that fails before has none)
                    atomic_write_text(settings_path, json.dumps(settings, indent=2))  # the same text from any process
                rows = []
                for i, name in enumerate(names):
                    pred = int(probs[i].argmax())
                    ti = int(tgt[i])
                    label = None if args.no_label else f"{classes[ti]} {100 * probs[i, ti]:.0f}%" + _cut(
                        args.resize, originals[i])
                    top, left, h, w = boxes[i]  # pad: the picture's pixels in the square, the maps cut to them
                    for m, attr in zip(methods, attrs):
                        _write_outputs(out / m if multi else out, name, x[i, top:top + h, left:left + w],
                                       attr[i, top:top + h, left:left + w], m, label, pictures[m], mark)
                    if multi:  # the side-by-side figure: the input, then one column per method
                        _write_figure(out, name, x[i], {m: a[i] for m, a in zip(methods, attrs)}, label, mark)
                    rows.append({"file": name, "predicted": pred, "predicted_name": classes[pred],
                                 "predicted_prob": f"{probs[i, pred]:.6f}", "target": ti, "target_name": classes[ti],
                                 "target_prob": f"{probs[i, ti]:.6f}"})
                _append_rows(rows_path, rows)
                written += len(rows)
                first_written = first_written or rows[0]["file"]
                bar.update(len(batch_paths))
        parallel.barrier("jaxviz-attribute-end")
        if rank == 0 and nprocs > 1:
            _merge_parts(csv_path, out, files)
        example = out / f"{first_written}.png" if first_written else out
        if multi:
            print(f"wrote {written} images' attributions by {len(methods)} methods to {out} (per method METHOD/NAME.npy "
                  f"and METHOD/NAME.png, and per image NAME.png, every method side by side: e.g. {example}) and "
                  f"{csv_path}{skips.note()}")
        else:
            print(f"wrote {written} attribution{'s' * (written != 1)} to {out} (per image NAME.npy, the map, and "
                  f"NAME.png, the overlay: e.g. {example}) and {csv_path}{skips.note()}")
        random_weights_note(args)
        return 0
