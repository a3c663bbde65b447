"""``jaxviz stylize CONTENT STYLE [STYLE ...] --out OUT.png``: neural style transfer.

Writes OUT atomically when done. While running, a checkpoint (``OUT.ckpt.npz``,
e.g. ``out.png.ckpt.npz``: image and optimiser state) and a preview image
(``OUT.ckpt.png``) are written every ``--checkpoint-every`` steps; running the
same command again resumes from it (``--resume`` insists on one, ``--fresh``
ignores it). A finished OUT is not redone unless ``--overwrite``; a PNG records the
settings that made it, and a rerun with others is refused with the
differences.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ._common import add_model_args, model_and_params
from ._outputs import check_out, finished, random_weights_note, save

__all__ = ["register", "run"]

_LEAN_SCHEDULER = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def _floats(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def register(sub: argparse._SubParsersAction) -> None:
    from .. import style

    p = sub.add_parser(
        "stylize",
        help="neural style transfer (Gatys et al.) of a content image",
        description="Paint CONTENT in the style of STYLE (several styles are blended). "
        "Presets: " + ", ".join(style.PRESETS) + ". Reruns resume from the checkpoint.",
    )
    p.add_argument("content", type=Path, help="content image")
    p.add_argument("styles", type=Path, nargs="+", metavar="style", help="style image(s)")
    p.add_argument("--out", type=Path, required=True, help="output image (.png, .jpg, ...)")
    p.add_argument("--preset", default="gatys", choices=list(style.PRESETS), help="default %(default)s")
    p.add_argument("--steps", type=int, default=None, help="steps per scale (default: the preset's)")
    p.add_argument("--size", type=int, default=512, help="longest side of the output in px (default %(default)s)")
    p.add_argument("--scales", type=int, default=1, help="coarse-to-fine scales, halving the size each (default 1)")
    p.add_argument("--style-weights", type=_floats, default=None, metavar="W1,W2,..", help="blend weights of the styles")
    p.add_argument("--style-scale", type=float, default=1.0, help="style size relative to the output (default 1)")
    p.add_argument("--preserve-colors", action="store_true", help="keep the content's colours (luminance-only transfer)")
    p.add_argument("--optimizer", choices=list(style.OPTIMIZERS), default=None, help="default: the preset's")
    p.add_argument("--lr", type=float, default=None, help="learning rate (Adam; in the preset's pixel scale)")
    p.add_argument("--init", choices=list(style.INITS), default=None, help="initial image (default: the preset's)")
    p.add_argument("--content-weight", type=float, default=None)
    p.add_argument("--style-weight", type=float, default=None)
    p.add_argument("--tv-weight", type=float, default=None, help="total-variation weight (default: the preset's)")
    p.add_argument("--content-layers", default=None, metavar="L1,L2", help="e.g. relu4_2")
    p.add_argument("--style-layers", default=None, metavar="L1,L2,..", help="e.g. relu1_1,relu2_1,relu3_1")
    p.add_argument("--pooling", choices=["max", "avg"], default="max", help="VGG pooling (Gatys et al. use avg)")
    p.add_argument("--init-seed", type=int, default=0, help="seed of noisy initialisations (default 0)")
    p.add_argument("--remat", action="store_true",
                   help="save memory: recompute activations block by block in the backward pass")
    p.add_argument("--checkpoint-every", type=int, default=50, metavar="K", help="default %(default)s steps")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="require a checkpoint to resume from")
    group.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint and start over")
    p.add_argument("--overwrite", action="store_true", help="redo even if OUT exists")
    p.add_argument("--no-download", action="store_true", help="never download pretrained weights")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_model_args(p)
    p.set_defaults(func=run, resumable=True, _aliases={"learning_rate": "--lr", "styles": "style"},
                   _not_settings=("resume", "fresh", "no_download", "remat"))  # they change how, not what


def run(args: argparse.Namespace) -> int:
    from .._xla_flags import known_jaxlib

    if args.remat and _LEAN_SCHEDULER not in os.environ.get("XLA_FLAGS", "") and known_jaxlib():
        # read when JAX starts its CPU backend: effective if nothing ran on it yet in this process; only for a
        # jaxlib known to have the flag (XLA aborts on an unknown one)
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _LEAN_SCHEDULER).strip()
    from .. import image, style
    from ..errors import InputError

    out: Path = args.out
    ckpt = out.with_name(out.name + ".ckpt.npz")  # the whole name: out.png and out.jpg are two runs
    preview = out.with_name(out.name + ".ckpt.png")
    if ckpt.exists():  # an unfinished run into OUT: resumed, or refused below when it was another's
        check_out(out)
    elif finished(args):  # OUT there: nothing to do, or refused when made with other settings
        return 0
    if args.steps is not None and args.steps < 1:
        raise InputError(f"--steps: expected a positive number of steps, got {args.steps}")
    if args.resume and not ckpt.exists():
        raise InputError(f"--resume: no checkpoint at {ckpt}")
    if args.fresh:
        for f in (ckpt, preview):
            f.unlink(missing_ok=True)
    resumed = ckpt.exists()  # (a checkpoint of another run is refused below, with advice)

    overrides = {
        k: v
        for k, v in dict(
            steps=args.steps,
            optimizer=args.optimizer,
            learning_rate=args.lr,
            init=args.init,
            content_weight=args.content_weight,
            style_weight=args.style_weight,
            tv_weight=args.tv_weight,
            content_layers=args.content_layers,
            style_layers=args.style_layers,
        ).items()
        if v is not None
    }
    if args.optimizer == "lbfgs" and args.lr is None:
        overrides["learning_rate"] = None
    cfg = style.config(args.preset, remat=args.remat, **overrides)  # bad options fail before any loading

    content = image.load(args.content)
    styles = [image.load(s) for s in args.styles]
    net, params = model_and_params(args, classifier=False, download=not args.no_download, pooling=args.pooling)

    def on_checkpoint(info: dict) -> None:
        image.save(info["images"][0], preview)

    try:
        result = style.run(
            net,
            params,
            content,
            styles,
            preset=cfg,
            size=args.size,
            scales=args.scales,
            style_weights=args.style_weights,
            style_scale=args.style_scale,
            preserve_colors=args.preserve_colors,
            seed=args.init_seed,
            checkpoint=ckpt,
            checkpoint_every=args.checkpoint_every,
            resume=not args.fresh,
            progress=not args.no_progress,
            callback=on_checkpoint,
        )
    except InputError as e:  # the library's advice, in the command line's words
        raise InputError(str(e).replace("pass resume=False", "run with --fresh")) from None
    save(result[0], out, args)
    for f in (ckpt, preview):
        f.unlink(missing_ok=True)
    if resumed:
        print(f"resumed from {ckpt}", file=sys.stderr)
    random_weights_note(args)
    return 0

