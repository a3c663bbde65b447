"""``jaxviz featmaps IMAGE --layer L --out OUT.png``: a tap's feature maps as a grid."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import add_model_args, check_image_size, model_and_params, picture_layer
from ._outputs import add_output_args, describe, finished, random_weights_note, save

__all__ = ["register", "run"]


# --------------------------------------------------------------------------- the command


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("featmaps", help="a layer's feature maps for an image, as a grid of channels",
                       description="Feature maps (activations) of one tap for IMAGE, one tile per channel, each "
                       "scaled to its own range, strongest mean activation first.")
    p.add_argument("image", type=Path, help="input image")
    p.add_argument("--layer", default=None,
                   help="tap name (default: the model's first feature map, relu1_1 on a VGG)")
    p.add_argument("--size", type=int, default=224, help="longest side of the input in px (default %(default)s)")
    p.add_argument("--order", choices=["mean", "index"], default="mean",
                   help="channel order: strongest mean first, or by index (default %(default)s)")
    p.add_argument("--limit", type=int, default=64, help="show at most this many channels (default %(default)s)")
    p.add_argument("--cmap", default="viridis", help="Matplotlib colormap (default %(default)s)")
    add_output_args(p)
    add_model_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from .. import image
    from ..errors import InputError
    from ..featvis import maps

    if finished(args):
        return 0
    if args.limit < 1:
        raise InputError(f"--limit: expected a positive number of channels, got {args.limit}")
    if args.size < 1:
        raise InputError(f"--size: expected a positive number of px, got {args.size}")
    net, params = model_and_params(args, classifier=False)
    x = image.load(args.image, args.size)
    layer = picture_layer(args, net, params, x.shape, "early")
    check_image_size(args, x, net.min_size)
    fm = np.asarray(maps.feature_maps(net, params, x, layer))[0]
    if fm.ndim != 3:
        raise InputError(f"--layer: expected a convolutional tap, got {layer!r}")
    grid = maps.feature_map_grid(fm, order=args.order, limit=args.limit, cmap=args.cmap, image=x,
                                 labels=True)
    shown = f", the {min(args.limit, fm.shape[2])} strongest" if args.order == "mean" else ""
    save(grid, args.out, args, title=f"Feature maps of {layer} ({fm.shape[2]} channels{shown if args.limit < fm.shape[2] else ''}; "
         f"{args.image.name}) - {describe(args)}")
    print(f"{layer}: {fm.shape[2]} channels of {fm.shape[0]}x{fm.shape[1]}"
          f"{f', showing {min(args.limit, fm.shape[2])}' if args.limit < fm.shape[2] else ''}")
    random_weights_note(args)
    return 0
