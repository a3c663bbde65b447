"""``jaxviz neighbours FOLDER --out OUT.png``: each image's nearest neighbours in feature space.

Feature vectors are saved to ``OUT.features.npz`` as they are computed
(every ``--checkpoint-every`` batches); a rerun resumes from them, and a
rerun with other display options (``--k``, ``--metric``, ``--queries``) reuses
them without running the network.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys

from ._common import (
    add_model_args,
    classifier_tap,
    file_stamps,
    model_and_params,
    resolve_layer,
    weights_key,
)
from ._outputs import (
    Skips,
    add_folder_args,
    add_output_args,
    checkpoint_path,
    finished,
    folder_paths,
    iter_batches,
    load_progress,
    random_weights_note,
    save,
    save_table,
    write_npz,
)

__all__ = ["register", "run", "add_feature_args", "folder_features"]


def add_feature_args(p: argparse.ArgumentParser) -> None:
    add_folder_args(p)
    p.add_argument("--layer", default="relu7",
                   help="tap whose activations are the feature vectors (default %(default)s: the penultimate layer)")
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
    layer = resolve_layer(args, args.layer)
    net, params = model_and_params(args, classifier=classifier_tap(layer))
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


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("neighbours", help="nearest neighbours of images in a layer's feature space",
                       description="Feature vectors (a tap, pooled) for every image of FOLDER; each query row "
                       "shows an image (framed) and its k nearest neighbours by L2, L1 or cosine distance.")
    add_feature_args(p)
    p.add_argument("--metric", choices=["l2", "l1", "cosine"], default="cosine", help="default %(default)s")
    p.add_argument("--k", type=int, default=6, help="neighbours per query (default %(default)s)")
    p.add_argument("--queries", type=int, default=8, help="query rows: the first N images (default %(default)s)")
    p.add_argument("--query", action="append", default=None, metavar="FILE",
                   help="a query image from the folder (repeatable; replaces --queries)")
    add_output_args(p)
    add_model_args(p)
    p.set_defaults(func=run, resumable=True)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from .. import embed
    from ..errors import InputError

    if finished(args):
        return 0
    if args.k < 1 or args.queries < 1:
        raise InputError(f"--k, --queries: expected positive numbers, got {args.k}, {args.queries}")
    paths = folder_paths(args)
    if args.k > len(paths) - 1:  # before any feature is computed (checked again below, after unreadable files)
        raise InputError(f"--k: the folder has {len(paths)} images, so at most {len(paths) - 1} neighbours; "
                         f"got {args.k}")
    feats, layer = folder_features(args, paths)
    n = len(feats.names)
    if args.k > n - 1:
        raise InputError(f"--k: the folder has {n} images, so at most {n - 1} neighbours; got {args.k}")
    if args.query:
        from pathlib import Path

        lookup = {Path(p).resolve(): i for i, p in enumerate(feats.names)}
        queries = []
        for q in args.query:
            i = lookup.get(Path(q).resolve())
            if i is None:
                raise InputError(f"--query: {q} is not one of the folder's images")
            queries.append(i)
    else:
        queries = list(range(min(args.queries, n)))
    idx, dist = embed.nearest_neighbours(feats.vectors, k=args.k, metric=args.metric)
    idx, dist = np.asarray(idx)[queries], np.asarray(dist)[queries]
    table = args.out.with_suffix(".csv")
    save_table(table, ("query", "rank", "neighbour", "distance"),
               [(feats.names[q], r + 1, feats.names[j], f"{v:.6g}")
                for q, row, d in zip(queries, idx, dist) for r, (j, v) in enumerate(zip(row, d))])
    save(embed.neighbour_grid(feats.thumbnails, idx, queries, distances=dist), args.out, args)
    for q, row, d in zip(queries, idx, dist):
        near = ", ".join(f"{_short(feats.names[j])} ({v:.3g})" for j, v in zip(row, d))
        print(f"{_short(feats.names[q])}: {near}")
    print(f"wrote {table} (every neighbour with its distance; {args.metric} distances on the picture)")
    random_weights_note(args)
    return 0


def _short(name: str) -> str:
    from pathlib import Path

    p = Path(name)
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name
