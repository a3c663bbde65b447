"""``jaxviz top-patches FOLDER --layer L --out OUT.png``: the image patches that drive each channel most.

Streams the folder in batches keeping only a fixed-size running top-k per
channel. Progress is saved to ``OUT.topk.npz`` every ``--checkpoint-every``
batches; running the same command again resumes after the images already
seen (the folder listing is sorted, so the order is the same).
"""

from __future__ import annotations

import argparse
import json
import sys

from .._checks import index_ranges
from ._common import add_model_args, file_stamps, model_and_params, picture_layer, weights_key
from ._outputs import (
    Skips,
    add_folder_args,
    add_output_args,
    checkpoint_path,
    describe,
    finished,
    folder_paths,
    iter_batches,
    load_progress,
    parse_channels,
    random_weights_note,
    save,
    save_table,
    write_npz,
)

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("top-patches", help="top-activating patches of channels over a folder (Zeiler & Fergus)",
                       description="For each channel, the k images of FOLDER whose strongest response is "
                       "largest, shown as the receptive-field patch around that response; one row per channel. "
                       "Memory stays fixed however large the folder; reruns resume.")
    add_folder_args(p)
    p.add_argument("--layer", default=None,
                   help="convolutional tap (default: a middle feature map the model suggests, relu3_1 on a VGG)")
    p.add_argument("--channels", type=parse_channels, default=list(range(8)), metavar="0-7",
                   help="channels, e.g. 0-7 or 3,5 (default 0-7)")
    p.add_argument("--k", type=int, default=9, help="patches per channel (default %(default)s)")
    p.add_argument("--tile", type=int, default=64, help="small patches are enlarged to about this (default %(default)s)")
    p.add_argument("--projection", default=None, choices=["deconvnet"],
                   help="also draw each patch's deconvnet projection (Zeiler & Fergus: that one activation "
                   "projected back to pixels, grey = 0) to the left of the patches")
    add_output_args(p)
    add_model_args(p)
    p.set_defaults(func=run, resumable=True)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm.auto import tqdm

    from ..errors import InputError
    from ..featvis import patches as P

    if finished(args):
        return 0
    if args.k < 1:
        raise InputError(f"--k: expected a positive number of patches, got {args.k}")
    if args.tile < 1:
        raise InputError(f"--tile: expected a positive size in px, got {args.tile}")
    paths = folder_paths(args)
    net, params = model_and_params(args, classifier=False)
    layer = picture_layer(args, net, params, (1, args.size, args.size, 3), "middle")
    rf = P.receptive_field(net, layer, params)
    import jax.numpy as jnp

    from ..models import protocol

    width = protocol.tap_shapes(net, params, (1, args.size, args.size, 3))[layer][-1]
    bad = [c for c in args.channels if c >= width]
    if bad:
        raise InputError(f"--channels: {layer} has {width} channels (0-{width - 1}), got {index_ranges(bad)}")
    signature = json.dumps([str(args.folder), args.recursive, layer, args.channels, args.k, args.size, args.arch,
                            weights_key(args), file_stamps(paths)])
    ckpt = checkpoint_path(args.out, "topk")
    state = P.top_patches_init(net, layer, len(args.channels), k=args.k, params=params)
    names: dict[int, str] = {}
    consumed = 0  # files of the listing read so far (images fed to the state, plus unreadable ones skipped)
    saved = load_progress(ckpt, signature)  # with --overwrite too (see render)
    if saved is not None:
        state = P.TopState(*(jnp.asarray(saved[f]) for f in P.TopState._fields))
        names = {int(i): str(n) for i, n in zip(saved["name_index"], saved["names"])}
        consumed = int(saved["consumed"]) if "consumed" in saved else int(state.count)
        print(f"resuming after {consumed} of {len(paths)} images ({ckpt})", file=sys.stderr)
    start = consumed
    place = {p: start + i + 1 for i, p in enumerate(paths[start:])}

    # (state, names, consumed) of the batches fully processed, replaced in one assignment once a batch's result
    # is computed: JAX returns before it is, so an interrupt can land while the next state is still pending, and
    # must then save the previous one with its own count (saving the new state with the old count fed that
    # batch in twice on resume)
    done = (state, names, consumed)

    def checkpoint():
        state, names, consumed = done
        keep = sorted(names)
        write_npz(ckpt, signature=np.array(signature), names=np.array([names[i] for i in keep], dtype=str),
                  name_index=np.array(keep, np.int64), consumed=np.array(consumed, np.int64),
                  **{f: np.asarray(getattr(state, f)) for f in P.TopState._fields})

    skips = Skips(args.command)
    bar = tqdm(total=len(paths), initial=start, desc=f"top patches {layer}", unit="img", disable=args.no_progress)
    skips.bar = bar
    try:
        for b, (chunk, x) in enumerate(iter_batches(paths[start:], args.size, args.batch_size, skips)):
            n = len(chunk)
            valid = np.arange(args.batch_size) < n
            if n < args.batch_size:
                x = np.concatenate([x, np.zeros((args.batch_size - n,) + x.shape[1:], np.float32)])
            state, names, _ = done
            base = int(state.count)
            state = P.top_patches_update(net, params, state, x, layer=layer, channels=args.channels, valid=valid)
            kept = set(np.asarray(state.index).ravel().tolist())  # waits for the batch's result
            names = {i: v for i, v in {**names, **{base + i: str(p) for i, p in enumerate(chunk)}}.items() if i in kept}
            done = (state, names, place[chunk[-1]])
            bar.update(n)
            if (b + 1) % args.checkpoint_every == 0:
                checkpoint()
    except KeyboardInterrupt:
        checkpoint()
        raise
    finally:
        bar.close()
    state, names, consumed = done
    if int(state.count) == 0:
        raise InputError(f"folder: none of the {len(paths)} files in {args.folder} could be read as an image")
    index = np.asarray(state.index)
    pos = np.asarray(state.position)
    top = P.TopPatches(
        layer=layer, channels=np.asarray(args.channels), values=np.asarray(state.values),
        names=[[names.get(int(i)) if i >= 0 else None for i in row] for row in index], index=index, position=pos,
        boxes=np.concatenate([rf.stride * pos + rf.offset] * 2, -1) + np.array([0, 0, rf.size, rf.size]),
        patches=np.asarray(state.patches), field=rf,
    )
    if args.projection:
        top = top._replace(projections=_projections(args, net, params, top))
    table = args.out.with_suffix(".csv")
    save_table(table, ("channel", "rank", "activation", "file", "top", "left", "bottom", "right"),
               [(int(c), r + 1, f"{float(top.values[ci, r]):.6g}", top.names[ci][r], *map(int, top.boxes[ci, r]))
                for ci, c in enumerate(args.channels) for r in range(top.index.shape[1]) if top.index[ci, r] >= 0])
    count = int(state.count)
    fewer = f"; only {count} images, so rows end in empty grey cells" if count < args.k else ""
    save(P.patch_grid(top, tile=args.tile, values=True), args.out, args,
         title=f"Top {args.k} patches per channel of {layer} over {count} images{fewer} - {describe(args)}")
    if count < args.k:
        print(f"note: --k {args.k} but the folder has {count} readable images: each row ends in "
              f"{args.k - count} empty grey cell{'s' * (args.k - count > 1)}", file=sys.stderr)
    print(f"wrote {table} (every patch: its activation, file and receptive-field box in the resized picture, which may reach past its edges)")
    ckpt.unlink(missing_ok=True)
    print(f"{layer}: receptive field {rf.size}x{rf.size} px at stride {rf.stride}; {int(state.count)} images"
          f"{skips.note()}")
    for c, row, vals in zip(args.channels, top.names, top.values):
        best = next((n for n in row if n), None)
        print(f"  channel {c}: best {vals[0]:.4g} in {best}")
    random_weights_note(args)
    return 0


def _projections(args, net, params, top):
    """Each entry's deconvnet projection, from its file read again as the stream read it (only the files in the
    final top-k: at most channels x k, and the folder's size)."""
    import numpy as np

    from ..featvis import patches as P

    slots = [(c, j) for c in range(top.index.shape[0]) for j in range(top.index.shape[1]) if top.index[c, j] >= 0]
    files = sorted({top.names[c][j] for c, j in slots})
    pictures = {}
    for batch_paths, x in iter_batches([type(args.folder)(f) for f in files], args.size, args.batch_size):
        pictures.update(zip(map(str, batch_paths), np.asarray(x)))
    out = np.zeros(top.patches.shape, np.float32)
    if slots:
        proj = P.projections(net, params, np.stack([pictures[top.names[c][j]] for c, j in slots]), top.layer,
                             [top.channels[c] for c, _ in slots], [top.position[c, j] for c, j in slots],
                             batch_size=args.batch_size)
        for (c, j), v in zip(slots, proj):
            out[c, j] = v
    return out
