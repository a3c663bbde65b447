"""``jaxviz embed FOLDER --out OUT.png``: a 2-D map (PCA or t-SNE) of images in feature space, as thumbnails.

Feature vectors are cached in ``OUT.features.npz`` (resumable, as for
``jaxviz neighbours``).
"""

from __future__ import annotations

import argparse
import math

from ._outputs import add_output_args, describe, finished, random_weights_note, save
from ._common import add_model_args
from ._features import add_feature_args, folder_features

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", help="PCA / t-SNE map of a folder's images in feature space, drawn with thumbnails",
                       description="Feature vectors (a tap, pooled) for every image of FOLDER, mapped to 2-D by "
                       "PCA (JAX) or t-SNE (scikit-learn), drawn as a scatter plot of thumbnails. With "
                       "--recursive, images are coloured by their sub-folder.")
    add_feature_args(p)
    p.add_argument("--method", choices=["pca", "tsne"], default="tsne", help="default %(default)s")
    p.add_argument("--perplexity", type=float, default=30.0, help="t-SNE perplexity (default %(default)s)")
    p.add_argument("--plot-size", type=float, default=None,
                   help="plot size in inches at 100 dpi (default 10, smaller for a few images)")
    add_output_args(p)
    add_model_args(p, seed_also="t-SNE's start")
    p.set_defaults(func=run, resumable=True)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np

    from .. import embed
    from ..errors import InputError

    if finished(args):
        return 0
    # checked before the features are extracted (minutes on a big folder), and by flag: the library's
    # scatter_thumbnails calls --plot-size "size", which is --size here
    if args.plot_size is not None and not (math.isfinite(args.plot_size) and args.plot_size * 100 >= 1):
        raise InputError(f"--plot-size: expected a finite size of at least 0.01 inches (1 px), got {args.plot_size}")
    if args.method == "tsne" and not (math.isfinite(args.perplexity) and args.perplexity > 0):
        raise InputError(f"--perplexity: expected a positive finite number, got {args.perplexity}")
    feats, layer = folder_features(args)
    if len(feats.names) < (4 if args.method == "tsne" else 2):
        raise InputError(f"folder: a {args.method} map needs more images, got {len(feats.names)}")
    if args.method == "pca":
        res = embed.pca(feats.vectors, 2)
        xy = np.asarray(res.points)
        ratio = np.asarray(res.explained_variance_ratio)
        title = f"PCA of {layer} ({len(xy)} images; {ratio[0]:.0%} + {ratio[1]:.0%} of the variance)"
    else:
        xy = embed.tsne(feats.vectors, perplexity=args.perplexity, seed=args.seed)
        title = f"t-SNE of {layer} ({len(xy)} images, perplexity {min(args.perplexity, (len(xy) - 1) / 3):.3g})"
    labels = None
    if args.recursive:
        parents = [Path(n).parent.name for n in feats.names]
        labels = parents if len(set(parents)) > 1 else None
    title += f" - {describe(args)}"
    # a few points on the default 10-inch canvas are a few specks on a blank page: the plot shrinks with them
    size = args.plot_size if args.plot_size is not None else min(10.0, max(4.0, 1.2 * math.sqrt(len(xy)) + 2))
    pic = embed.scatter_thumbnails(xy, feats.thumbnails, labels=labels, title=title, size=size)
    save(pic, args.out, args, title, drawn=False)  # the plot carries its title
    random_weights_note(args)
    return 0
