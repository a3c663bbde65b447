"""jaxviz._xla_flags: YNNPACK fusions limited to single matrix products on import, only where safe, never over the user's choice."""

import os
import subprocess
import sys
from importlib import metadata

import pytest

from jaxviz import _xla_flags as xf


def test_adds_the_flag_for_known_jaxlib_keeping_other_flags():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    assert xf.apply(env, "0.10.2")
    assert env["XLA_FLAGS"] == ("--xla_force_host_platform_device_count=4 "
                                "--xla_cpu_experimental_ynn_fusion_type=individual_dot")
    env = {}
    assert xf.apply(env, "0.10.7")
    assert env["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=individual_dot"


@pytest.mark.parametrize("version", ["0.10.1", "0.4.30", "0.11.0", "1.0.0", "nightly"])
def test_unknown_jaxlib_is_left_alone(version):  # XLA aborts on a flag it does not know
    env = {"XLA_FLAGS": "--foo"}
    assert not xf.apply(env, version)
    assert env == {"XLA_FLAGS": "--foo"}


def test_user_choice_and_opt_out_win():
    env = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=-reduce"}
    assert not xf.apply(env, "0.10.2")
    assert env["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=-reduce"
    env = {xf.OPT_OUT: "1"}
    assert not xf.apply(env, "0.10.2")
    assert "XLA_FLAGS" not in env
    env = {xf.OPT_OUT: "0"}
    assert xf.apply(env, "0.10.2")


_PROBE = """
import os, jaxviz, jax, jax.numpy as jnp
from jaxviz import models, weights
net = models.VGG(stages=((4,), (8,), (8,)), fc_features=8, num_classes=3, pool_output=(1, 1))
params = weights.random(net)
hlo = jax.jit(lambda p, x: net.apply(p, x, taps="pool3")).lower(params, jnp.zeros((1, 32, 32, 3))).compile().as_text()
print(os.environ.get("XLA_FLAGS", ""), "|", "ynn_fusion" in hlo)
"""


def _probe(**env):
    full = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", xf.OPT_OUT)}
    full.update(env, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", _PROBE], env=full, capture_output=True, text=True, check=True)
    return out.stdout.strip().rsplit("\n", 1)[-1]


def test_a_fresh_process_compiles_the_vgg_without_ynn_fusions():
    version = xf._version(metadata.version("jaxlib"))
    if not (xf.KNOWN_JAXLIB[0] <= version < xf.KNOWN_JAXLIB[1]):
        pytest.skip(f"jaxlib {metadata.version('jaxlib')} is outside the range the flag is known for")
    assert _probe() == "--xla_cpu_experimental_ynn_fusion_type=individual_dot | False"
    # opting out shows what the flag prevents on this jaxlib: the network handed to YNNPACK
    assert _probe(**{xf.OPT_OUT: "1"}) == "| True"


def test_stylize_remat_adds_its_scheduler_flag_only_for_a_known_jaxlib(monkeypatch, capsys):
    from jaxviz import cli
    from jaxviz.commands import stylize

    assert xf.known_jaxlib("0.10.2") and xf.known_jaxlib("0.10.9")
    assert not xf.known_jaxlib("0.10.1") and not xf.known_jaxlib("0.11.0") and not xf.known_jaxlib("nightly")
    argv = ["stylize", "c.png", "s.png", "--out", "o.png", "--remat", "--steps", "0"]  # refused right after
    for known, want in ((False, "--keep"), (True, "--keep " + stylize._LEAN_SCHEDULER)):
        monkeypatch.setenv("XLA_FLAGS", "--keep")
        monkeypatch.setattr(xf, "known_jaxlib", lambda v=None, known=known: known)
        assert cli.main(argv) == 2 and "--steps" in capsys.readouterr().err
        assert os.environ["XLA_FLAGS"] == want
