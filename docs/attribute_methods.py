"""Draws docs/attribute_methods.png, the picture at the top of the README: `jaxviz attribute` with several
methods in one pass, its side-by-side figures of three held-out shapes stacked.

    python docs/attribute_methods.py     # offline; trains the built-in small CNN on first use (about a minute)

The same command a user runs (through ``jaxviz.cli.main``): the built-in shapes classifier (its trained,
cached weights), saliency, guided backprop, Grad-CAM and occlusion, one figure per image in OUT_DIR.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from jaxviz import cli, datasets, image, train  # noqa: E402


def main() -> None:
    run = train.small_cnn_run()
    test = run.test
    picked = [int(np.flatnonzero(test.labels == c)[0]) for c in (0, 2, 3)]  # a circle, a triangle, a cross
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "in").mkdir()
        for k, i in enumerate(picked):
            image.save(test.images[i], tmp / "in" / f"{k}_{datasets.CLASSES[test.labels[i]]}.png")
        code = cli.main(["attribute", str(tmp / "in"), "--model", "small-cnn", "--method",
                         "saliency,guided_backprop,grad_cam,occlusion", "--out", str(tmp / "out"), "--no-progress"])
        assert code == 0
        figures = [image.load(tmp / "out" / f"{p.name}.png")[0] for p in sorted((tmp / "in").iterdir())]
    # the first figure keeps its column titles; the others only their row
    body = [figures[0]] + [f[32:] for f in figures[1:]]
    out = Path(__file__).with_name("attribute_methods.png")
    image.save(np.concatenate(body, axis=0), out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
