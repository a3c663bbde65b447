"""``jaxviz info``, ``jaxviz convert`` and ``jaxviz classify``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ._common import add_model_args, imagenet_classes, model_and_params


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="devices, JAX backend and cached weights")
    p.set_defaults(func=info, compiles=False)

    from .. import models

    p = sub.add_parser("convert", help="convert a torchvision/timm VGG or ResNet file into the jaxviz cache, or a "
                       "Keras VGG (.h5, .onnx) into a jaxviz file")
    p.add_argument("file", type=Path, help="torchvision .pth or torchvision/timm .safetensors file; Keras .h5 or an "
                   ".onnx export of a Keras VGG (needs h5py / onnx: pip install 'jaxviz[keras]')")
    p.add_argument("--preprocess", default=None, choices=sorted(models.PREPROCESSING),
                   help="the input convention recorded with the weights (default: torchvision for torchvision/timm "
                   "files, caffe for Keras'); --weights FILE builds the model with it")
    p.add_argument("--arch", default=None, choices=list(models.ALL_ARCHS), help="default: inferred from the file")
    p.add_argument("--no-strict", dest="strict", action="store_false",
                   help="ignore keys the architecture does not have (a missing or misshapen key is an error anyway)")
    p.add_argument("--out", type=Path, default=None, help="output file (default: the cache, where weights.load finds "
                   "it; for a Keras file: FILE's name with .safetensors, in the current folder)")
    p.add_argument("--overwrite", "--force", dest="overwrite", action="store_true",
                   help="overwrite an existing converted file")
    p.set_defaults(func=convert, compiles=False)

    p = sub.add_parser("classify", help="top-k ImageNet classes of images")
    p.add_argument("images", nargs="+", type=Path, help="image files")
    add_model_args(p)
    p.add_argument("--top", type=int, default=5, help="how many classes to show (default %(default)s)")
    p.set_defaults(func=classify)


def info(args: argparse.Namespace) -> int:
    import jax

    from .. import __version__, _xla_flags, weights

    print(f"jaxviz {__version__}, jax {jax.__version__}")
    print(f"backend: {jax.default_backend()}")
    print(f"XLA_FLAGS: {os.environ.get('XLA_FLAGS', '') or '(none)'} (see jaxviz/_xla_flags.py; "
          f"{_xla_flags.OPT_OUT}=1 keeps jaxlib's defaults)")
    for d in jax.devices():
        print(f"  device {d.id}: {d.device_kind} ({d.platform})")
    root = weights.cache_dir()
    print(f"weight cache: {root} (set JAXVIZ_CACHE to move it)")
    for arch, files in weights.cached(root).items():
        if files["converted"]:
            state = f"converted ({files['converted'].name})"
        elif files["original"]:
            state = f"torchvision file only ({files['original'].name}); converted on first use"
        else:
            state = f"not cached (weights.load downloads {weights.SOURCES[arch].url})"
        print(f"  {arch}: {state}")
    print(f"  small-cnn: {_small_cnn_state(root)}")
    return 0


def _small_cnn_state(root: Path) -> str:
    """The demo's small CNN in the cache (``jaxviz demo`` and ``attribute --model small-cnn`` use it)."""
    import json

    from .. import train

    path = train.cache_path(train.Config(), root)
    meta = path.with_suffix(".json")
    if not (path.exists() and meta.exists()):
        return "not trained yet (jaxviz demo trains it, about half a minute, and keeps it here)"
    try:
        accuracy = float(json.loads(meta.read_text())["accuracy"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"{path.relative_to(root)} (its {meta.name} is unreadable: delete both to retrain)"
    return f"trained, held-out accuracy {accuracy:.1%} ({path.relative_to(root)})"


def _arch_of(params) -> str:
    """The architecture converted params belong to: a VGG by its last convolution, a ResNet by its blocks."""
    from .. import weights

    inner = params["params"]
    if "layer1_0" not in inner:
        return "vgg16" if "conv5_4" not in inner else "vgg19"
    blocks = tuple(sum(1 for k in inner if k.startswith(f"layer{s}_")) for s in range(1, 5))
    kind = "bottleneck" if "conv3" in inner["layer1_0"] else "basic"
    return next(a for a, spec in weights.RESNETS.items() if spec == (kind, blocks))


def convert(args: argparse.Namespace) -> int:
    import jax

    from .. import weights
    from ..errors import InputError

    if args.out is not None and args.out.suffix != ".safetensors":
        raise InputError(f"--out: expected a file name ending in .safetensors, got {str(args.out)!r}")

    keras = args.file.suffix.lower() in (".h5", ".hdf5", ".keras", ".onnx")
    preprocess = args.preprocess or ("caffe" if keras else "torchvision")

    def target(arch: str | None) -> Path:
        if args.out:
            return args.out
        if keras or preprocess != "torchvision":  # not torchvision's ImageNet weights: not where weights.load looks
            return Path(args.file.name.removesuffix(".weights.h5")).with_suffix(".safetensors")
        return weights.cache_dir() / weights.SOURCES[arch].converted_name

    def kept(out: Path) -> bool:
        if out.exists() and not args.overwrite:
            print(f"{out} exists; kept it (use --overwrite to replace it)")
            return True
        return False

    if keras and args.arch is not None and args.arch not in weights.models.ARCHS:
        raise InputError(f"--arch: a Keras file holds a VGG (vgg16 or vgg19), not {args.arch}")
    if preprocess != "torchvision" and args.arch is not None and args.arch not in weights.models.ARCHS:
        raise InputError(f"--preprocess: only the VGGs take an input convention, not {args.arch}")
    if (args.out or args.arch or keras) and kept(target(args.arch)):
        return 0  # known before converting (seconds for a 550 MB file)
    if keras:
        params = weights.from_keras(args.file, args.arch, strict=args.strict)
    else:
        params = weights.from_torchvision(args.file, args.arch, strict=args.strict)
    arch = args.arch or _arch_of(params)
    if preprocess != "torchvision" and arch not in weights.models.ARCHS:
        raise InputError(f"--preprocess: only the VGGs take an input convention, not {arch}")
    out = target(arch)
    if kept(out):
        return 0
    weights.save(params, out, arch=arch, preprocess=preprocess if arch in weights.models.ARCHS else None)
    n = sum(int(v.size) for v in jax.tree_util.tree_leaves(params))
    print(f"converted {args.file} ({arch}, {n:,} parameters, {preprocess} input) -> {out}")
    if out != weights.cache_dir() / weights.SOURCES[arch].converted_name:
        print(f"use it with: jaxviz COMMAND ... --weights {out}")
    return 0


def classify(args: argparse.Namespace) -> int:
    import jax
    import numpy as np

    from .. import image
    from ..errors import InputError

    if args.top < 1 or args.top > 1000:
        raise InputError(f"--top: expected 1..1000, got {args.top}")
    net, params = model_and_params(args)
    names = imagenet_classes()
    from ..models import protocol

    forward = jax.jit(lambda p, x: jax.nn.softmax(protocol.forward(net, p, x), axis=-1))
    for path in args.images:
        x = image.imagenet_eval(path)
        probs = np.asarray(forward(params, x))[0]
        top = np.argsort(-probs, kind="stable")[: args.top]
        print(f"{path}:")
        for k in top:
            print(f"  {probs[k]:7.2%}  {k:4d}  {names[k]}")
    if args.weights == "random":
        print("(random weights: these classes mean nothing; use --weights pretrained)", file=sys.stderr)
    return 0
