"""``jaxviz neighbours FOLDER --out OUT.png``: each image's nearest neighbours in feature space.

Feature vectors are saved to ``OUT.features.npz`` as they are computed
(every ``--checkpoint-every`` batches); a rerun resumes from them, and a
rerun with other display options (``--k``, ``--metric``, ``--queries``) reuses
them without running the network.
"""

from __future__ import annotations

import argparse

from ._features import add_feature_args, folder_features
from ._common import (
    add_model_args,
)
from ._outputs import (
    add_output_args,
    describe,
    finished,
    folder_paths,
    random_weights_note,
    save,
    save_table,
)

__all__ = ["register", "run"]


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
    save(embed.neighbour_grid(feats.thumbnails, idx, queries, distances=dist), args.out, args,
         title=f"Nearest neighbours in {layer} ({args.metric} distance; query framed in orange) - {describe(args)}")
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
