"""Pytest configuration shared by tests/ and the doctests of jaxviz/ (``pytest`` runs both).

The docstring examples run with the working directory set to a fresh temporary folder that holds the files
the examples name (``cat.jpg``, a ``photos/`` folder), drawn here: no downloads.
"""

import os

import numpy as np
import pytest

# Most of the suite's programs run once, on tiny inputs: with a warm compilation cache the two biggest test files
# ran in half their time, so about half of it was XLA:CPU compiling. The tests compile with LLVM at -O0 (XLA's own
# graph passes still run; results do not depend on the level, and the suite passes at XLA's default as well: run
# it with XLA_FLAGS=--xla_backend_optimization_level=2). With two pytest-xdist workers on 2 cores: 10.5-12 minutes
# instead of 13.5-14 (runtime-heavy tests get slower at -O0). Set before JAX starts its backend; the CLI
# subprocesses of the tests inherit it (and pytest-xdist's workers the controller's setting), so a marker variable
# says the -O0 is the suite's: the `runtime_env` fixture takes it out again for a child process.
_O0 = "--xla_backend_optimization_level=0"
_ADDED = "JAXVIZ_TESTS_ADDED_XLA_O0"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _O0).strip()
    os.environ[_ADDED] = "1"

# old module names kept as aliases of the moved modules (``sys.modules`` swaps): nothing to collect there
collect_ignore = ["jaxviz/dream.py", "jaxviz/embed.py", "jaxviz/losses.py"]


@pytest.fixture(scope="session")
def runtime_env():
    """The environment for a child process whose time is spent running, not compiling, a program (training a
    model): ``XLA_FLAGS`` as the suite was given them, without the -O0 added above (training the demo's CNN
    takes ~3x longer at -O0)."""
    env = dict(os.environ)
    if env.pop(_ADDED, None):
        env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split() if f != _O0)
    return env


def _picture(h: int, w: int, seed: int) -> np.ndarray:
    """A procedural photo stand-in: a smooth colour gradient with a bright disc."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    rng = np.random.default_rng(seed)
    c = rng.uniform(0.2, 0.8, 3)
    img = np.stack([x * c[0] + 0.2, y * c[1] + 0.2, (1 - x) * c[2] + 0.1], -1)
    cy, cx, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.1, 0.25)
    img[(y - cy) ** 2 + (x - cx) ** 2 < r * r] = rng.uniform(0.6, 1.0, 3)
    return np.clip(img, 0, 1).astype(np.float32)


@pytest.fixture(autouse=True)
def _doctest_folder(request):
    """For doctest items only: cwd = a temporary folder with ``cat.jpg`` (240x320) and ``photos/`` (3 images)."""
    if not isinstance(request.node, pytest.DoctestItem):
        yield
        return
    from jaxviz import image

    tmp_path = request.getfixturevalue("tmp_path")
    monkeypatch = request.getfixturevalue("monkeypatch")
    image.save(_picture(240, 320, 0), tmp_path / "cat.jpg")
    (tmp_path / "photos").mkdir()
    for i in range(3):
        image.save(_picture(64 + 16 * i, 80, i + 1), tmp_path / "photos" / f"photo{i}.png")
    monkeypatch.chdir(tmp_path)
    yield
