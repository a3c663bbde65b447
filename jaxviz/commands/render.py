"""``jaxviz render --layer L --channels 0-15 --out OUT.png``: activation maximisation of channels or classes.

Channels are rendered ``--batch-size`` at a time; finished groups are kept in
``OUT.render.npz``, so running the same command again after an interruption
resumes after them (with the same pictures as an uninterrupted run).
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from .._checks import index_ranges
from ._common import (
    add_model_args,
    classifier_tap,
    imagenet_classes,
    model_and_params,
    picture_layer,
    resolve_layer,
    weights_key,
)
from ._outputs import (
    add_output_args,
    checkpoint_path,
    describe,
    finished,
    load_progress,
    parse_channels,
    random_weights_note,
    save,
    write_npz,
)

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("render", help="activation maximisation: the images channels (or classes) respond to most",
                       description="Synthesise one image per channel of --layer (or per --classes logit) by "
                       "gradient ascent on a Fourier-parameterised, colour-decorrelated image under random "
                       "jitter, scale and rotation (Olah et al., Feature Visualization). Channels are rendered "
                       "--batch-size at a time, each group in one compiled call.")
    p.add_argument("--layer", default=None,
                   help="tap name, convolutional or classifier (fc6 .. fc8/logits) (default: a deep feature map "
                   "the model suggests, relu4_1 on a VGG)")
    p.add_argument("--channels", type=parse_channels, default=list(range(16)), metavar="0-15",
                   help="channels, e.g. 0-15 or 3,7,9 (default 0-15)")
    p.add_argument("--classes", type=parse_channels, default=None, metavar="K,..",
                   help="render ImageNet class logits instead (e.g. 1,130,954); implies --layer logits")
    p.add_argument("--neuron", action="store_true", help="maximise the centre neuron instead of the channel mean")
    p.add_argument("--size", type=int, default=128, help="image size in px (default %(default)s)")
    p.add_argument("--steps", type=int, default=256, help="optimisation steps (default %(default)s)")
    p.add_argument("--lr", type=float, default=0.05, help="Adam learning rate (default %(default)s)")
    p.add_argument("--param", choices=["fourier", "pixel"], default="fourier", help="default %(default)s")
    p.add_argument("--no-decorrelate", action="store_true", help="optimise plain RGB instead of decorrelated colour")
    p.add_argument("--no-transforms", action="store_true", help="no random jitter/scale/rotation")
    p.add_argument("--tv", type=float, default=0.0, help="total-variation penalty weight (default 0)")
    p.add_argument("--batch-size", type=int, default=8, help="channels rendered together (default %(default)s)")
    add_output_args(p)
    add_model_args(p, seed_also="the start image and the transforms")
    p.set_defaults(func=run, resumable=True, _aliases={"learning_rate": "--lr"})


def _tile_names(chans, classes: bool, width: int) -> list[str]:
    """Tile labels: channel numbers, or classes by index and ImageNet name ("1 goldfish") on a 1000-way fc8."""
    if classes and width == 1000:
        names = imagenet_classes()
        return [f"{c} {names[c]}" for c in chans]
    return [f"{'class ' if classes else ''}{c}" for c in chans]


def _logits(net):
    """The model's class-score tap (its ``logits`` alias), or None for a model without one."""
    from ..errors import InputError

    try:
        return net.resolve("logits", "layer")
    except InputError:
        return None


def _labelled(tiles, labels):
    """Each label in its tile's top-left corner (:func:`jaxviz.viz.label`)."""
    from .. import viz

    return [viz.label(t, text) for t, text in zip(tiles, labels)]


def run(args: argparse.Namespace) -> int:
    from ..cli import check_terminated

    import jax
    import jax.numpy as jnp
    import numpy as np
    from tqdm.auto import tqdm

    from .. import viz
    from ..errors import InputError
    from ..featvis import render as R

    if finished(args):
        return 0
    for flag, v in (("--size", args.size), ("--steps", args.steps), ("--batch-size", args.batch_size)):
        if v < 1:
            raise InputError(f"{flag}: expected a positive number, got {v}")
    if not (math.isfinite(args.tv) and args.tv >= 0):
        raise InputError(f"--tv: expected a finite number >= 0, got {args.tv}")
    classes = args.classes is not None
    if classes and args.neuron:
        raise InputError("--neuron: expected a convolutional --layer; class logits have no positions")
    if classes or args.layer is not None:
        layer = resolve_layer(args, "logits" if classes else args.layer)
        net, params = model_and_params(args, classifier=classifier_tap(args, layer))
    else:
        net, params = model_and_params(args, classifier=False)
        layer = picture_layer(args, net, params, (1, args.size, args.size, 3), "deep")
    if args.size < net.min_size:
        raise InputError(f"--size: expected at least {net.min_size} px (the network's minimum), got {args.size}")
    from ..models import protocol

    shape = protocol.tap_shapes(net, params, (1, max(64, net.min_size), max(64, net.min_size), 3))[layer]
    if args.neuron and len(shape) != 4:
        raise InputError(f"--neuron: expected a convolutional --layer; {layer} has no positions")
    classes = classes or layer == _logits(net)  # --layer logits (fc8 on a VGG): its channels are the classes
    chans = args.classes if args.classes is not None else args.channels
    width = shape[-1]
    bad = [c for c in chans if c >= width]
    if bad:
        raise InputError(f"--{'classes' if args.classes is not None else 'channels'}: {layer} has {width} "
                         f"channels (0-{width - 1}), got {index_ranges(bad)}")
    param = R.fourier(decorrelate=not args.no_decorrelate) if args.param == "fourier" else R.pixel(
        decorrelate=not args.no_decorrelate)
    transforms = None if args.no_transforms else R.standard_transforms(args.size / 128)
    maker = _maker(layer, args.neuron, args.tv)
    bs = min(args.batch_size, len(chans))
    key = jax.random.key(args.seed)
    images = []
    groups = [chans[i:i + bs] for i in range(0, len(chans), bs)]
    # finished groups are kept next to OUT, so an interrupted run resumes after them (group g is keyed
    # fold_in(key, g): the result does not depend on where a run stopped)
    ckpt = checkpoint_path(args.out, "render")
    signature = json.dumps([layer, chans, args.neuron, args.size, args.steps, args.lr, args.param,
                            args.no_decorrelate, args.no_transforms, args.tv, bs, args.arch, weights_key(args),
                            args.seed])
    # resumed with --overwrite too: a checkpoint is the unfinished progress of a run of these very settings (it
    # is deleted when the run completes), such as an interrupted --overwrite run that was told to rerun
    saved = load_progress(ckpt, signature)
    if saved is not None:
        images = list(saved["images"])
        print(f"resuming after {len(images)} of {len(chans)} renders ({ckpt})", file=sys.stderr)
    with tqdm(total=len(chans), initial=len(images), desc=f"render {layer}", unit="channel",
              disable=args.no_progress) as bar:
        for g, group in enumerate(groups):
            if g * bs < len(images):
                continue
            check_terminated()  # a group boundary (finished groups are checkpointed)
            padded = group + [group[-1]] * (bs - len(group))  # equal groups share one compiled program
            imgs = R.render_each(net, params, maker, jnp.asarray(padded, jnp.int32), key=jax.random.fold_in(key, g),
                                 size=args.size, steps=args.steps, param=param, transforms=transforms,
                                 learning_rate=args.lr, progress=not args.no_progress)
            images.extend(np.asarray(imgs)[: len(group), 0])
            if g + 1 < len(groups):
                write_npz(ckpt, signature=np.array(signature), images=np.stack(images))
            bar.update(len(group))
    names = _tile_names(chans, classes, width)
    ncols = min(len(chans), max(1, int(np.ceil(np.sqrt(len(chans))))))
    what = "classes" if classes else ("centre neurons of channels" if args.neuron else "channels")
    save(viz.grid(_labelled(images, names), ncols=ncols, pad=4), args.out, args,
         title=f"Activation maximisation of {layer} {what} ({args.steps} steps, {args.size} px) - {describe(args)}")
    ckpt.unlink(missing_ok=True)
    what = "classes" if classes else ("neurons" if args.neuron else "channels")
    print(f"{layer}: {len(chans)} {what} ({index_ranges(chans)}), {args.steps} steps at {args.size} px")
    random_weights_note(args)
    return 0


def _maker(layer: str, neuron: bool, tv: float):
    """A hashable objective factory (so groups reuse one compiled program)."""
    return _Maker(layer, neuron, float(tv))


class _Maker:
    def __init__(self, layer, neuron, tv):
        self.key = (layer, neuron, tv)

    def __hash__(self):
        return hash(self.key)

    def __eq__(self, other):
        return isinstance(other, _Maker) and other.key == self.key

    def __call__(self, c):
        from ..featvis import render as R

        layer, neuron, tv = self.key
        obj = R.neuron(layer, c) if neuron else R.channel(layer, c)
        return obj - tv * R.total_variation() if tv else obj
