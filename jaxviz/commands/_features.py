"""Feature vectors of a folder's images with a resumable cache: what ``jaxviz neighbours`` and
``jaxviz embed`` share."""

from __future__ import annotations

import argparse
import itertools
import json
import sys

from ._common import classifier_tap, file_stamps, model_and_params, resolve_layer, weights_key
from ._outputs import Skips, add_folder_args, checkpoint_path, folder_paths, iter_batches, load_progress, write_npz

__all__ = ["add_feature_args", "folder_features"]


def add_feature_args(p: argparse.ArgumentParser) -> None:
    add_folder_args(p)
    p.add_argument("--layer", default=None,
                   help="tap whose activations are the feature vectors (default: the tap before the class scores, "
                   "measured: relu7 on a VGG, avgpool on a ResNet)")
    p.add_argument("--pool", choices=["mean", "max", "flatten"], default="mean",
                   help="how convolutional taps become vectors (default %(default)s)")
    p.add_argument("--thumb", type=int, default=64, help="thumbnail size in px (default %(default)s)")


def folder_features(args: argparse.Namespace, paths=None):
    """Features of the folder's images (``paths``: its listing, when the caller has it already), with a resumable
    cache next to OUT; returns (Features, layer)."""
    import numpy as np
    from tqdm.auto import tqdm

    from .. import embed
    from ..errors import InputError

    paths = folder_paths(args) if paths is None else paths
    if args.thumb < 1:
        raise InputError(f"--thumb: expected a positive size in px, got {args.thumb}")
    from ..models import protocol

    if args.layer is None:
        net, params = model_and_params(args)
        layer = protocol.embedding_layer(net, params, (1, args.size, args.size, 3))
    else:
        layer = resolve_layer(args, args.layer)
        net, params = model_and_params(args, classifier=classifier_tap(args, layer))
    signature = json.dumps([str(args.folder), args.recursive, layer, args.pool, args.size, args.thumb, args.arch,
                            weights_key(args), file_stamps(paths)])
    cache = checkpoint_path(args.out, "features")
    names, vecs, thumbs = [], [], []
    consumed = 0  # files of the listing read so far (unreadable ones are skipped and count here too)
    saved = load_progress(cache, signature)
    if saved is not None:
        names, vecs, thumbs = list(saved["names"]), [saved["vectors"]], [saved["thumbnails"]]
        consumed = int(saved["consumed"]) if "consumed" in saved else len(names)
        if consumed < len(paths):
            print(f"resuming after {consumed} of {len(paths)} images ({cache})", file=sys.stderr)
    todo = paths[consumed:]
    step = args.batch_size * args.checkpoint_every
    skips = Skips(args.command)
    with tqdm(total=len(paths), initial=consumed, desc=f"features {layer}", unit="img",
              disable=args.no_progress) as bar:
        skips.bar = bar
        for s in range(0, len(todo), step):
            part = todo[s:s + step]
            batches = iter_batches(part, args.size, args.batch_size, skips)
            first = next(batches, None)
            if first is not None:  # else every file of the part was unreadable
                f = embed.features(net, params, itertools.chain([first], batches), layer=layer, pool=args.pool,
                                   thumbnail_size=args.thumb)
                names += [str(p) for p in f.names]
                vecs.append(f.vectors)
                thumbs.append(f.thumbnails)
                bar.update(len(f.names))
            consumed += len(part)
            if vecs:
                write_npz(cache, signature=np.array(signature), names=np.array(names, dtype=str),
                          vectors=np.concatenate(vecs), thumbnails=np.concatenate(thumbs),
                          consumed=np.array(consumed, np.int64))
    if not names:
        raise InputError(f"folder: none of the {len(paths)} files in {args.folder} could be read as an image")
    if skips.paths:
        print(f"features of {len(names)} images{skips.note()}", file=sys.stderr)
    return embed.Features(names, np.concatenate(vecs), np.concatenate(thumbs)), layer
