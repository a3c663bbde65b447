"""The public surface: explicit exports that resolve, and every CLI subcommand registered."""

import importlib

import pytest

import jaxviz
from jaxviz import cli

MODULES = [m for m in jaxviz.__all__ if m not in ("JaxvizError", "__version__")]


@pytest.mark.parametrize("name", MODULES)
def test_every_exported_name_exists(name):
    module = importlib.import_module(f"jaxviz.{name}")
    assert getattr(jaxviz, name) is module
    exported = getattr(module, "__all__", None)
    assert exported, f"jaxviz.{name} has no __all__"
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"jaxviz.{name}.__all__ names missing attributes: {missing}"
    assert len(set(exported)) == len(exported)


def test_foundation_contract_names():
    from jaxviz import image, models, weights

    for fn in (models.vgg16, models.vgg19, weights.from_torchvision, weights.load, weights.random, image.load):
        assert callable(fn)
    assert "relu4_2" in models.vgg19().layers and "logits" in models.ALIASES


def test_cli_registers_every_subcommand():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    expected = {
        "info", "convert", "classify",                       # foundation
        "stylize",                                           # style transfer
        "demo", "attribute",                                 # attribution
        "featmaps", "filters", "dream", "render", "top-patches", "neighbours", "embed",  # feature visualisation
    }
    assert expected <= set(sub.choices), expected - set(sub.choices)


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"jaxviz {jaxviz.__version__}"


def test_python_run_beside_a_clone_says_why_jaxviz_is_not_the_package(tmp_path):
    """From the folder that holds a clone named jaxviz/, `import jaxviz` finds the clone's root (a namespace
    package) and jaxviz.weights its data folder: that import names the cause instead of a later AttributeError."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    (tmp_path / "jaxviz").symlink_to(root, target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = "import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]; " \
           "from jaxviz import weights"
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert p.returncode == 1
    assert p.stderr.strip().splitlines()[-1].startswith(
        "ImportError: jaxviz was imported from the folder that holds the jaxviz clone, not from the package")
