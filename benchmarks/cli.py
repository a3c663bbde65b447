"""The CLI's first minute: how long a command takes to say something, against a bare ``import jax``.

    python benchmarks/cli.py                 # 6 procedural pictures, the built-in small CNN, random weights
    python benchmarks/cli.py --images 32 --repeats 3

Measured in the same run, each a fresh process (what a user waits for):

* ``import jax``: ``python -c "import jax"``, the floor any JAX program pays;
* cold: ``jaxviz attribute`` on a new output folder with an empty compilation cache: seconds to its first
  progress line (the "saliency on N images" line, printed when the work starts) and to its exit;
* warm: the same on another new output folder, the compilation cache filled by the cold run;
* finished: the same command again on the cold run's folder: seconds to "all N images already done".

Goals (issue 25): a finished folder answers within 2x the bare JAX import; a warm run's first progress
update within 3x. Prints each time, its ratio to ``import jax`` and whether the goal is met.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import machine


def _pictures(folder: Path, n: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray((rng.uniform(size=(32, 32, 3)) * 255).astype(np.uint8)).save(folder / f"{i}.png")


def _timed(argv: list[str], env: dict, first: str | None = None) -> tuple[float, float]:
    """(seconds to the first stderr/stdout line containing ``first``, seconds to exit) of a fresh process."""
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = None
    for line in p.stdout:
        if seen is None and first is not None and first in line:
            seen = time.perf_counter() - t0
    p.wait()
    total = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed with exit code {p.returncode}")
    return (seen if seen is not None else total), total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3, help="best of this many for each measurement")
    args = ap.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _pictures(tmp / "imgs", args.images)
        env = dict(os.environ, JAXVIZ_CACHE=str(tmp / "cache"))
        cmd = [sys.executable, "-m", "jaxviz.cli", "attribute", str(tmp / "imgs"), "--model", "small-cnn",
               "--weights", "random", "--no-progress"]
        bare = min(_timed([sys.executable, "-c", "import jax"], env)[1] for _ in range(args.repeats))
        cold_first, cold_total = _timed(cmd + ["--out", str(tmp / "cold")], env, " on ")
        warm = [_timed(cmd + ["--out", str(tmp / f"warm{r}")], env, " on ") for r in range(args.repeats)]
        warm_first, warm_total = min(w[0] for w in warm), min(w[1] for w in warm)
        done = min(_timed(cmd + ["--out", str(tmp / "cold")], env, "already done")[0] for _ in range(args.repeats))
    rows = [("python -c 'import jax'", bare, None), ("cold: first progress line", cold_first, None),
            ("cold: exit", cold_total, None), ("warm: first progress line", warm_first, 3.0),
            ("warm: exit", warm_total, None), ("finished folder: 'already done'", done, 2.0)]
    print(f"{'what':36s} {'seconds':>8s} {'x import jax':>12s}  goal")
    for what, sec, goal in rows:
        ratio = sec / bare
        verdict = "" if goal is None else (f"<= {goal:g}x: {'met' if ratio <= goal else 'NOT met'}")
        print(f"{what:36s} {sec:8.2f} {ratio:12.2f}  {verdict}")


if __name__ == "__main__":
    main()
