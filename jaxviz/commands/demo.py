"""``jaxviz demo OUT_DIR``: attribution pictures from a model that means something, offline.

Trains the small CNN on the procedural shapes (about half a minute on 2 CPU
cores; cached in the weight cache, so a second run loads it), then explains
a few held-out pictures with saliency, guided backprop, Grad-CAM, CAM and
occlusion, and writes:

* ``OUT_DIR/overview.png``: one row per picture (input, then every method),
* ``OUT_DIR/<method>.png``: a grid of that method's heatmap overlays,
* ``OUT_DIR/maps/<method>.npy``: the raw attribution arrays,
* ``OUT_DIR/index.html``: all of it on one page,
* ``OUT_DIR/demo.json``: what was done, so a rerun only does what is missing.
"""

from __future__ import annotations

import argparse
import html
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ._common import DEMO_METHODS as METHODS
from ._common import seed, writable_dir

__all__ = ["register", "run", "METHODS"]

def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="train the built-in small CNN (or reuse it) and write attribution pictures; offline",
        description="Trains a small CNN on procedural shapes (cached after the first run) and writes "
        "saliency, guided backprop, Grad-CAM, CAM and occlusion pictures for held-out images.",
    )
    p.add_argument("out", type=Path, metavar="OUT_DIR", help="directory for the pictures")
    p.add_argument("--per-class", type=int, default=2, help="pictures per shape class (default %(default)s)")
    p.add_argument("--retrain", action="store_true", help="train again even if a cached model exists")
    p.add_argument("--overwrite", "--force", dest="overwrite", action="store_true",
                   help="recompute every picture even if it exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--seed", type=seed, default=0, help="training seed (default %(default)s)")
    p.set_defaults(func=run, resumable=True)  # the trained model is cached and finished pictures are kept


def _pick(run_: Any, per_class: int) -> np.ndarray:
    """Indices of the first ``per_class`` correctly classified test pictures of each class."""
    from .. import train

    test = run_.test
    pred = train.predict(run_.net, run_.params, test.images).argmax(-1)
    picked = []
    for c in range(len(test.classes)):
        ok = np.flatnonzero((test.labels == c) & (pred == c))
        if len(ok) < per_class:
            ok = np.flatnonzero(test.labels == c)
        picked.extend(ok[:per_class].tolist())
    return np.asarray(picked)


def _cam_family():
    """(name, title, options) of the CAM family beyond Grad-CAM (and FullGrad), drawn in ``cam_family.png`` beside
    Grad-CAM."""
    from ..attribution import CAM_METHODS
    from ..viz import METHOD_TITLES

    layer = tuple((n, METHOD_TITLES[n], {"upsample": True}) for n in CAM_METHODS if n != "grad_cam")
    return layer + (("full_grad", METHOD_TITLES["full_grad"], {}),)  # input-resolution maps already


def _relevance_family():
    """(name, title, options) of the relevance methods, drawn in ``relevance.png`` beside saliency: LRP (zennit's
    EpsilonGammaBox) and DeepLIFT against the grey the occlusion uses."""
    from ..viz import METHOD_TITLES

    return (("lrp", METHOD_TITLES["lrp"], {}), ("deeplift", METHOD_TITLES["deeplift"], {"baselines": 0.5}))


def _html(out: Path, info: dict) -> str:
    rows = "\n".join(
        f'<h2>{html.escape(title)}</h2><img src="{name}.png" alt="{html.escape(title)}">'
        for name, title, _ in METHODS + _cam_family() + _relevance_family()
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>jaxviz demo</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1000px}} img{{image-rendering:auto;max-width:100%}}</style>
</head><body>
<h1>jaxviz demo: what a small CNN looks at</h1>
<p>A small CNN (conv/ReLU/max-pool blocks, global average pool, linear head) trained for
{info['train_seconds']:.0f} s on procedural shapes ({', '.join(info['classes'])}) on textured backgrounds;
held-out accuracy {100 * info['accuracy']:.1f}%. Each row is a held-out picture with the model's
prediction and probability; each column a method explaining the predicted class (red: most important).</p>
<img src="overview.png" alt="overview">
<h2>The CAM family</h2><img src="cam_family.png" alt="the CAM family">
<h2>Relevance propagation: LRP and DeepLIFT beside saliency</h2><img src="relevance.png" alt="LRP and DeepLIFT">
{rows}
</body></html>
"""


def run(args: argparse.Namespace) -> int:
    import jax

    from .. import attribution, image, train, viz
    from .._io import atomic_open, atomic_write_text
    from ..errors import InputError

    if args.per_class < 1 or args.per_class > 16:
        raise InputError(f"--per-class: expected 1..16, got {args.per_class}")
    out: Path = args.out
    writable_dir(out, "OUT_DIR")  # before the half minute of training
    config = train.Config(seed=args.seed)
    t0 = time.time()
    cached_before = train.cache_path(config).exists()
    print(("loading" if cached_before and not args.retrain else "training") + " the small CNN on procedural shapes ...",
          file=sys.stderr)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        r = train.small_cnn_run(config, retrain=args.retrain, progress=not args.no_progress)
    for w in caught:
        print(f"jaxviz demo: warning: {w.message}", file=sys.stderr)
    train_seconds = time.time() - t0
    where = f"cached at {r.path}" if r.path else "not cached"
    print(f"model: small CNN, held-out accuracy {100 * r.accuracy:.1f}% ({'loaded' if r.cached else 'trained'} "
          f"in {train_seconds:.1f} s; {where})")

    manifest_path = out / "demo.json"
    family = _cam_family() + _relevance_family()
    key = {"model": config.key(), "per_class": args.per_class,
           "methods": [[n, o] for n, _, o in METHODS + family]}
    manifest: dict[str, Any] = {}
    if manifest_path.exists() and not args.overwrite:
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            manifest = {}
        if manifest.get("key") != key:
            manifest = {}
    done = set(manifest.get("done", []))

    idx = _pick(r, args.per_class)
    images = r.test.images[idx]
    probs = np.asarray(jax.nn.softmax(train.predict(r.net, r.params, images), -1))
    pred = probs.argmax(-1)
    labels = [f"{r.test.classes[p]} {100 * probs[i, p]:.0f}%" for i, p in enumerate(pred)]

    maps: dict[str, np.ndarray] = {}
    titles = {n: t for n, t, _ in METHODS + family}
    for name, title, options in METHODS + family:
        npy = out / "maps" / f"{name}.npy"
        png = out / f"{name}.png"
        if name in done and npy.exists() and png.exists():
            maps[name] = viz.heat(name, np.load(npy))
            continue
        t = time.time()
        attr = np.asarray(attribution.METHODS[name](r.net, r.params, images, pred, **options))
        with atomic_open(npy, "wb") as f:
            np.save(f, attr)
        maps[name] = viz.heat(name, attr)
        image.save(viz.method_grid(images, maps[name], title, labels), png)
        done.add(name)
        atomic_write_text(manifest_path, json.dumps({"key": key, "done": sorted(done)}, indent=2))
        print(f"  {title:16s} {time.time() - t:5.1f} s -> {png}")

    overview = out / "overview.png"
    image.save(viz.overview(images, {n: maps[n] for n, _, _ in METHODS}, titles, labels), overview)
    cams = ["grad_cam", *(n for n, _, _ in _cam_family())]
    image.save(viz.overview(images, {n: maps[n] for n in cams}, titles, labels), out / "cam_family.png")
    relevance = ["saliency", *(n for n, _, _ in _relevance_family())]
    image.save(viz.overview(images, {n: maps[n] for n in relevance}, titles, labels), out / "relevance.png")
    info = {"accuracy": r.accuracy, "classes": list(r.test.classes), "train_seconds": r.seconds}
    atomic_write_text(out / "index.html", _html(out, info))
    print(f"wrote {overview}, {out / 'cam_family.png'}, {out / 'relevance.png'}, one PNG per method and {out / 'index.html'} "
          f"(total {time.time() - t0:.1f} s)")
    return 0
