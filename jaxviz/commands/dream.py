"""``jaxviz dream IMAGE --out OUT.png``: DeepDream with octaves, jitter and tiles.

Progress is kept in ``OUT.dream.npz`` after every octave; running the same
command again after an interruption resumes after the finished octaves (same
picture as an uninterrupted run).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._common import add_model_args, check_image_size, model_and_params
from ._outputs import add_output_args, checkpoint_path, finished, random_weights_note, save

__all__ = ["register", "run", "parse_layers"]


def parse_layers(text: str) -> dict[str, float]:
    """``"relu4_2"`` or ``"relu4_2:1,relu3_1:0.5"`` -> {name: weight} (argparse type)."""
    out: dict[str, float] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, _, w = part.partition(":")
        try:
            out[name.strip()] = out.get(name.strip(), 0.0) + (float(w) if w else 1.0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected LAYER[:WEIGHT],..., got {text!r}") from None
    if not out:
        raise argparse.ArgumentTypeError(f"expected at least one layer, got {text!r}")
    return out


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dream", help="DeepDream: amplify what layers see in an image",
                       description="DeepDream (Mordvintsev et al.): gradient ascent on ½‖a‖² of the chosen "
                       "layers, from a small octave up to full size, with random roll jitter and normalised "
                       "steps. --tile computes gradients in tiles (same result, less memory) for large images.")
    p.add_argument("image", type=Path, help="input image")
    p.add_argument("--layers", type=parse_layers, default=None, metavar="L[:W],...",
                   help="layers and weights, e.g. relu4_2 or relu4_2:1,relu3_1:0.5 (default: the tap the model "
                   "suggests, relu4_2 on a VGG)")
    p.add_argument("--size", type=int, default=512, help="longest side in px (default %(default)s; 0 keeps it)")
    p.add_argument("--octaves", type=int, default=4, help="default %(default)s")
    p.add_argument("--octave-scale", type=float, default=1.4, help="default %(default)s")
    p.add_argument("--steps", type=int, default=10, help="steps per octave (default %(default)s)")
    p.add_argument("--step-size", type=float, default=0.01,
                   help="mean absolute pixel change per step, pixels in [0, 1] (default %(default)s)")
    p.add_argument("--jitter", type=int, default=32, help="largest random roll in px (default %(default)s)")
    p.add_argument("--tile", type=int, default=512, metavar="PX",
                   help="gradient tile size in px, 0 for none (default %(default)s; exact either way)")
    p.add_argument("--guide", type=Path, default=None, help="guide image: dream towards its features")
    p.add_argument("--smoothing", default="laplacian", choices=["laplacian", "none"],
                   help="each step's gradient: laplacian = every band of its Laplacian pyramid at unit std (less "
                   "grainy speckle in flat regions; the TF tutorial's), none = as computed (default %(default)s)")
    add_output_args(p)
    add_model_args(p, seed_also="the jitter shifts")
    p.set_defaults(func=run, resumable=True)


def run(args: argparse.Namespace) -> int:
    import jax

    from .. import dream, image
    from ..errors import CheckpointError, InputError

    if finished(args):
        return 0
    if args.size < 0:
        raise InputError(f"--size: expected a size in px (0 keeps the image's), got {args.size}")
    if args.tile < 0:
        raise InputError(f"--tile: expected a tile size in px (0 for none), got {args.tile}")
    net, params = model_and_params(args, classifier=False)
    x = image.load(args.image, args.size or None)
    check_image_size(args, x, net.min_size)
    guide = image.load(args.guide, 224) if args.guide else None
    # written after every octave; a rerun resumes after them, with --overwrite too (see render)
    ckpt = checkpoint_path(args.out, "dream")
    kw = dict(key=jax.random.key(args.seed), layers=args.layers, octaves=args.octaves,
              octave_scale=args.octave_scale, steps=args.steps, step_size=args.step_size, jitter=args.jitter,
              tile_size=args.tile or None, guide=guide, progress=not args.no_progress, return_objectives=True,
              checkpoint=ckpt, smoothing=args.smoothing)
    resumed = ckpt.exists()
    try:
        out, objectives = dream.dream(net, params, x, **kw)
    except CheckpointError as e:
        why = "it was made with other settings" if e.reason == "mismatch" else "unreadable"
        print(f"ignoring {ckpt}: {why}", file=sys.stderr)
        resumed = False
        out, objectives = dream.dream(net, params, x, **kw, resume=False)
    save(jax.device_get(out)[0], args.out, args)
    ckpt.unlink(missing_ok=True)
    if resumed:
        print(f"resumed from {ckpt}", file=sys.stderr)
    for o, (before, after) in enumerate(objectives):
        print(f"octave {o + 1}/{len(objectives)}: objective {before:.4g} -> {after:.4g}")
    random_weights_note(args)
    return 0
