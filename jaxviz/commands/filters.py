"""``jaxviz filters --out OUT.png``: a convolution's kernels (conv1_1's as RGB tiles)."""

from __future__ import annotations

import argparse

from ._common import add_model_args, model_and_params
from ._outputs import add_output_args, describe, finished, random_weights_note, save

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("filters", help="a convolution's kernels as a grid (conv1_1: RGB tiles)",
                       description="The kernels of one convolution, one tile each. conv1_1's 3-channel kernels "
                       "are drawn in colour (grey = 0, one scale for the whole layer); deeper kernels as their "
                       "input-channel mean on a diverging colormap.")
    p.add_argument("--layer", default=None,
                   help="convolution, by its path in the params (default: the first one, conv1_1 on a VGG)")
    p.add_argument("--tile", type=int, default=48, help="tile size in px (default %(default)s)")
    p.add_argument("--limit", type=int, default=None, help="show only the first N kernels")
    add_output_args(p)
    add_model_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..featvis import maps

    if finished(args):
        return 0
    if args.tile < 1:
        raise InputError(f"--tile: expected a positive size in px, got {args.tile}")
    net, params = model_and_params(args, classifier=False)
    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit: expected a positive number of kernels, got {args.limit}")
    try:
        layer = maps.find_convolution(params, args.layer)
    except InputError as e:  # "layer: expected a convolution in params (...)" in the command line's words
        raise InputError("--" + str(e)) from None
    total = maps.filters(params, layer)
    k = total[: args.limit]
    ncols = 8 if k.shape[0] == 64 else None
    shown = f"{k.shape[0]} of {total.shape[0]}" if k.shape[0] < total.shape[0] else f"{total.shape[0]}"
    convention = getattr(net, "input_convention", None)  # (mean, std, bgr): Keras' kernels read B, G, R
    bgr = bool(convention and convention[2])
    save(maps.filter_grid(params, layer, tile=args.tile, ncols=ncols, limit=args.limit, bgr=bgr), args.out, args,
         title=f"Filters of {layer}: {shown} kernels of {k.shape[1]}x{k.shape[2]}x{k.shape[3]} - {describe(args)}")
    print(f"{layer}: {shown} kernels of {k.shape[1]}x{k.shape[2]}x{k.shape[3]}")
    random_weights_note(args)
    return 0
