"""Helpers shared by the CLI subcommands: model and weight selection."""

from __future__ import annotations

from typing import Any

import argparse
from pathlib import Path

from .. import models, weights
from ..errors import InputError, WeightsNotFoundError

__all__ = ["add_model_args", "model_and_params", "imagenet_classes"]


#: Size limit of the persistent compilation cache jaxviz sets up (LRU eviction beyond it).
COMPILE_CACHE_BYTES = 1 << 30


#: (name, title, options) of the methods ``jaxviz demo`` shows, in column order; the options are the ones for
#: the small CNN's 32 px pictures, which ``jaxviz attribute --model small-cnn`` uses too.
DEMO_METHODS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("saliency", "Saliency", {}),
    ("guided_backprop", "Guided backprop", {}),
    ("grad_cam", "Grad-CAM", {"upsample": True}),
    ("cam", "CAM", {"upsample": True}),
    ("occlusion", "Occlusion", {"window": 6, "stride": 2, "baseline": 0.5}),
)


def enable_compile_cache() -> str | None:
    """Point JAX's persistent compilation cache at ``<jaxviz cache>/xla`` (LRU, at most
    :data:`COMPILE_CACHE_BYTES`) unless the user configured one or set ``JAXVIZ_COMPILE_CACHE=0``.

    Returns the directory in use (None: off). Takes effect only before the
    process's first compilation, which is why ``jaxviz.cli.main`` calls it before any command runs. The
    library's jitted functions take params as arguments, so entries hold programs, not weights.
    """
    import os

    import jax

    if os.environ.get("JAXVIZ_COMPILE_CACHE", "1") == "0":
        return None
    if jax.config.jax_compilation_cache_dir:
        return str(jax.config.jax_compilation_cache_dir)
    path = weights.cache_dir() / "xla"
    jax.config.update("jax_compilation_cache_dir", str(path))
    if jax.config.jax_compilation_cache_max_size == -1:
        jax.config.update("jax_compilation_cache_max_size", COMPILE_CACHE_BYTES)
    return str(path)


def seed(text: str) -> int:
    """argparse type of --seed: a non-negative int (what PRNG keys take)."""
    try:
        v = int(text)
    except ValueError:
        v = None
    if v is None or v < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative int, got {text!r}")
    return v


def writable_dir(path: Path, flag: str) -> None:
    """Creates the output folder ``path`` (and its parents) and checks a file can be written in it, before any
    work: a file in its place, or a place that cannot be written, is an InputError naming ``flag``."""
    if path.exists() and not path.is_dir():
        raise InputError(f"{flag}: expected a folder, got the file {str(path)!r}")
    check_writable(path, flag)


def check_writable(folder: Path, flag: str) -> None:
    """Creates ``folder`` (and its parents) and writes a file in it, before any work; an InputError naming
    ``flag`` when either fails."""
    import tempfile

    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".jaxviz-write-check-"):
            pass
    except OSError as e:
        raise InputError(f"{flag}: cannot write in {str(folder)!r} ({e.strerror or e})") from None


def add_model_args(p: argparse.ArgumentParser, *, default_arch: str = "vgg19", seed_also: str | None = None) -> None:
    """--arch, --model, --weights and --seed; ``seed_also`` names what else --seed draws (``render``'s start and
    transforms...), for its help and so a picture's settings keep it with pretrained weights."""
    p.add_argument("--arch", default=None, choices=sorted(models.ALL_ARCHS) + [SMALL_CNN],
                   help=f"network (default: the one a --weights FILE.safetensors names, else {default_arch}); "
                   "small-cnn is the built-in shapes classifier (32 px; pretrained: the one `jaxviz demo` trains)")
    p.add_argument("--preprocess", default=None, choices=sorted(models.PREPROCESSING),
                   help="a VGG's input convention: torchvision (ImageNet mean/std; torchvision's and timm's weights), "
                   "caffe (BGR, 0-255, minus the mean; Keras' weights) or none (default: what a --weights "
                   "FILE.safetensors records, else torchvision)")
    p.set_defaults(_default_arch=default_arch)
    p.add_argument("--model", default=None, metavar="MODULE:FACTORY",
                   help="your own model instead of --arch: FACTORY() in MODULE (importable, or a .py file) returns "
                   "(module, params) or a module whose params come from --weights FILE.safetensors (or random); "
                   "a flax.linen or NNX module, or a function f(params, x) -> logits or (logits, taps)")
    p.add_argument(
        "--weights",
        default="pretrained",
        metavar="pretrained|random|FILE",
        help="pretrained ImageNet weights from the cache (downloaded when online), random weights "
        "(torchvision's init; runs offline, meaningless output), or a .pth/.safetensors file",
    )
    also = f" and {seed_also}" if seed_also else ""
    p.add_argument("--seed", type=seed, default=0, help=f"seed for --weights random{also} (default %(default)s)")
    p.set_defaults(_seed_only_weights=seed_also is None)


def settle_model_args(args: argparse.Namespace) -> None:
    """Fills --arch and --preprocess left unset: from what a ``--weights FILE.safetensors`` records (``weights.save``
    writes the arch and input convention beside the weights), else the command's defaults. A --preprocess given for
    a network that is not a VGG is refused."""
    if not hasattr(args, "_default_arch"):
        return
    info: dict = {}
    if args.weights not in ("pretrained", "random") and not getattr(args, "model", None):
        path = Path(args.weights)
        if path.suffix == ".safetensors" and path.is_file():
            info = weights.file_info(path)
    if args.arch is None:
        recorded = info.get("arch")
        args.arch = recorded if recorded in models.ALL_ARCHS or recorded == SMALL_CNN else args._default_arch
    vgg = args.arch in models.ARCHS and not getattr(args, "model", None)
    if args.preprocess is not None and not vgg:
        what = "--model's network" if getattr(args, "model", None) else f"--arch {args.arch}"
        raise InputError(f"--preprocess: only the VGGs take an input convention; {what} applies its own")
    if args.preprocess is None:
        args.preprocess = info.get("preprocess", "torchvision") if vgg else None


def classifier_tap(args: argparse.Namespace, layer: str) -> bool:
    """True for a tap that only the network with its classifier has (a VGG's ``avgpool``, ``fc6`` ..
    ``fc8``/``logits``): asked of the features-only network --arch builds (models without that option have every
    tap either way)."""
    if getattr(args, "model", None) or args.arch == SMALL_CNN or args.arch in models.RESNET_ARCHS:
        return True
    try:
        models.get(args.arch, classifier=False, **vgg_options(args)).resolve(layer, "layer")
    except InputError:
        return True
    return False


def resolve_layer(args: argparse.Namespace, name: str) -> str:
    """``name``'s canonical tap, checked against the whole --arch network (classifier taps included), so an
    unknown --layer is reported with every name the command takes, before any weights are loaded."""
    return network(args).resolve(name, "--layer")


def picture_layer(args: argparse.Namespace, net, params, image_shape, role: str) -> str:
    """``--layer`` resolved, or, when it is not given, the tap the model suggests for ``role``
    (:func:`jaxviz.models.protocol.suggested_layer`: VGG's literature layers, measured elsewhere)."""
    from ..models import protocol

    if args.layer is not None:
        return net.resolve(args.layer, "--layer")
    return protocol.suggested_layer(net, params, tuple(image_shape), role)


def network(args: argparse.Namespace):
    """The network --arch or --model names (a --model's factory runs once per command)."""
    if getattr(args, "model", None):
        return user_model(args)[0]
    if args.arch == SMALL_CNN:
        return _small_cnn()[0]
    return models.get(args.arch, **vgg_options(args))


def vgg_options(args: argparse.Namespace) -> dict:
    """The VGG fields the command line sets (``preprocess``); empty for other networks."""
    if args.arch in models.ARCHS and getattr(args, "preprocess", None):
        return {"preprocess": args.preprocess}
    return {}


def user_model(args: argparse.Namespace):
    """``(net, params)`` of ``--model MODULE:FACTORY`` behind the model contract, with --weights/--seed applied."""
    cached = getattr(args, "_user_model", None)
    if cached is not None:
        return cached
    import importlib
    import importlib.util
    import os
    import sys

    import flax.linen as nn

    from ..models import protocol

    spec = args.model
    mod_name, sep, attr = spec.rpartition(":")
    if not sep or not mod_name or not attr.isidentifier():
        raise InputError(f"--model: expected MODULE:FACTORY (e.g. mynet:build or mynet.py:build), got {spec!r}")
    try:
        if mod_name.endswith(".py"):
            if not Path(mod_name).is_file():
                raise InputError(f"--model: no file {mod_name!r}")
            loader = importlib.util.spec_from_file_location(Path(mod_name).stem, mod_name)
            module = importlib.util.module_from_spec(loader)
            loader.loader.exec_module(module)
        else:
            if os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())  # a module beside the user, as `python -c` would find it
            module = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        raise InputError(f"--model: cannot import {mod_name!r} ({e})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise InputError(f"--model: {mod_name!r} has no function {attr!r}")
    out = factory()
    net, params = out if isinstance(out, tuple) and len(out) == 2 else (out, None)
    try:
        from flax import nnx

        if isinstance(net, nnx.Module):
            net, params = models.from_nnx(net)
    except ImportError:  # pragma: no cover
        pass
    size = getattr(args, "size", None) or 224
    if args.weights == "random":
        if not isinstance(net, nn.Module):
            raise InputError("--weights: random weights need a flax.linen module from --model; this factory returned "
                             f"{type(net).__name__}")
        import jax
        import jax.numpy as jnp

        params = jax.jit(net.init)(jax.random.key(args.seed), jnp.zeros((1, size, size, 3)))
    elif args.weights != "pretrained":
        path = Path(args.weights)
        if not path.exists():
            raise InputError(f"--weights: expected 'pretrained', 'random' or an existing file, got {args.weights!r}")
        params = weights.load_file(path)
    elif params is None:
        raise InputError(f"--weights: {spec} returned a model without params; pass --weights FILE.safetensors "
                         "(weights.save writes one) or --weights random")
    import numpy as np

    model = protocol.as_model(net, np.zeros((1, size, size, 3), np.float32))
    args._user_model = (model, params)
    return model, params


def check_image_size(args: argparse.Namespace, x, min_size: int) -> None:
    """Refuses, by --size, a loaded (1, H, W, 3) image too small for the network (the library would name
    ``images``)."""
    h, w = x.shape[1:3]
    if min(h, w) < min_size:
        at = f" at --size {args.size}" if args.size else ""
        raise InputError(f"--size: the image is {h}x{w} px{at}, below the network's minimum of {min_size} px; "
                         "use a larger --size")


SMALL_CNN = "small-cnn"


def _small_cnn():
    """The built-in shapes classifier as ``jaxviz demo`` builds it, and its training configuration."""
    from .. import datasets, train
    from ..models.small_cnn import small_cnn

    config = train.Config()
    return small_cnn(num_classes=len(datasets.CLASSES), widths=config.widths, dropout=config.dropout), config


def small_cnn_and_params(args: argparse.Namespace):
    """The built-in shapes classifier: pretrained = the one ``jaxviz demo`` trains (cached; trained now, about a
    minute, on first use), random, or a FILE written by jaxviz for it."""
    from .. import train

    net, config = _small_cnn()
    if args.weights == "pretrained":
        r = train.small_cnn_run(config, progress=not getattr(args, "no_progress", False))
        return r.net, r.params
    if args.weights == "random":
        import jax
        import jax.numpy as jnp

        return net, net.init(jax.random.key(args.seed), jnp.zeros((1, config.size, config.size, 3)))
    path = Path(args.weights)
    if not path.exists():
        raise InputError(f"--weights: expected 'pretrained', 'random' or an existing file, got {args.weights!r}")
    params = weights.load_file(path)
    if not train.params_fit(net, params, config.size):
        raise InputError(f"--weights: {str(path)!r} does not hold the small-cnn's parameters "
                         f"(expected a file written by jaxviz for --model small-cnn)")
    return net, params


def model_and_params(args: argparse.Namespace, *, classifier: bool = True, download: bool = True, **model_kwargs):
    """The network and params the --arch/--model/--weights/--seed arguments ask for (``download``: pretrained
    weights missing from the cache may be downloaded). ``classifier`` and ``model_kwargs`` (VGG options) are
    for the VGGs; a ResNet keeps its small head and takes none of them."""
    if getattr(args, "model", None):
        return user_model(args)
    if args.arch == SMALL_CNN:
        return small_cnn_and_params(args)
    if args.arch in models.RESNET_ARCHS:
        classifier, model_kwargs = True, {}
    else:
        model_kwargs = dict(model_kwargs, classifier=classifier, **vgg_options(args))
    net = models.get(args.arch, **model_kwargs)
    choice = args.weights
    if choice == "pretrained":
        try:
            params = weights.load(args.arch, classifier=classifier, download=download)
        except WeightsNotFoundError as e:  # the library's offline hint, in the command line's words
            raise WeightsNotFoundError(str(e).replace(f"use weights.random({args.arch!r}) offline",
                                         "use --weights random offline")) from None
    elif choice == "random":
        params = weights.random(net, seed=args.seed)
    else:
        path = Path(choice)
        if not path.exists():
            raise InputError(f"--weights: expected 'pretrained', 'random' or an existing file, got {choice!r}")
        if path.suffix == ".safetensors":
            # jaxviz's own files by their keys, torchvision/timm layouts handed on to from_torchvision
            params = weights.load_file(path, net)
        else:
            params = weights.from_torchvision(path, net)
        if not classifier:
            params = weights.features_only(params)
    return net, params


def weights_key(args: argparse.Namespace) -> list:
    """What of --weights/--seed decides the network's outputs, for a resume key: the seed only for random
    weights, and a weights FILE by path, size and modification time (replacing the file is noticed)."""
    preprocess = getattr(args, "preprocess", None)
    convention = [] if preprocess in (None, "torchvision") else [preprocess]  # old keys stay valid
    if args.weights == "random":
        return ["random", args.seed, *convention]
    if args.weights == "pretrained":
        return ["pretrained", *convention]
    return ["file", *file_stamps([Path(args.weights)])[0], *convention]


def file_stamps(paths) -> list[list]:
    """[path, size, mtime_ns] per file, for a resume key: an image edited or replaced since is noticed."""
    out = []
    for p in paths:
        st = Path(p).stat()
        out.append([str(p), st.st_size, st.st_mtime_ns])
    return out


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet class names, in torchvision's order."""
    from importlib import resources

    return resources.files("jaxviz").joinpath("data/imagenet_classes.txt").read_text().splitlines()
