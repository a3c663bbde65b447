"""The CLI on any model: --arch resnet18 and --model MODULE:FACTORY (a user's own flax module)."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

import titled
from jaxviz import attribution as A
from jaxviz import cli, image, models, weights

USER_MODULE = textwrap.dedent('''
    import flax.linen as nn, jax, jax.numpy as jnp

    class CNN(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(8, (3, 3))(x))
            x = nn.max_pool(x, (2, 2), (2, 2))
            x = nn.relu(nn.Conv(16, (3, 3))(x))
            return nn.Dense(4)(x.mean((1, 2)))

    def build():
        net = CNN()
        return net, net.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))

    def module_only():
        return CNN()
''')


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def user(tmp_path, monkeypatch):
    (tmp_path / "usernet.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    # the tests import it too: from this test's folder, not a module cached by an earlier test in the process
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "usernet", raising=False)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(2):
        yy, xx = np.mgrid[0:40, 0:40]
        img = np.stack([yy / 40, xx / 40, 0.5 + 0.4 * np.sin(xx / (2 + i))], -1)
        Image.fromarray((img * 255).astype(np.uint8)).save(folder / f"{i}.png")
    return tmp_path, folder


def test_featmaps_on_resnet18(user, capsys):
    root, folder = user
    code, out, err = run(capsys, "featmaps", folder / "0.png", "--arch", "resnet18", "--weights", "random",
                         "--layer", "layer2.1", "--size", "64", "--out", root / "r.png")
    assert code == 0, err
    assert "layer2/1: 128 channels of 8x8" in out
    assert image.load(root / "r.png").shape[-1] == 3


def test_user_model_featmaps_and_attribute_equal_the_library(user, capsys):
    root, folder = user
    code, out, err = run(capsys, "featmaps", folder / "0.png", "--model", "usernet:build", "--layer", "Conv_1",
                         "--size", "32", "--out", root / "m.png")
    assert code == 0, err
    assert "Conv_1: 16 channels of 16x16" in out
    code, out, err = run(capsys, "attribute", folder, "--model", "usernet.py:build", "--method", "grad_cam",
                         "--target", "2", "--size", "32", "--out", root / "att", "--no-progress")
    assert code == 0, err
    import usernet

    net, params = usernet.build()
    x = image.load(folder / "0.png", size=32)
    want = A.grad_cam(net, params, x, 2, upsample=True)  # the default layer: the deepest spatial tap, Conv_1
    got = np.load(root / "att" / "0.png.npy")
    np.testing.assert_allclose(got, np.asarray(want)[0], rtol=1e-5, atol=1e-7)


def test_user_model_params_from_a_file(user, capsys):
    root, folder = user
    import usernet

    _, params = usernet.build()
    weights.save(params, root / "p.safetensors")
    code, _, err = run(capsys, "featmaps", folder / "0.png", "--model", "usernet:module_only", "--layer", "Conv_0",
                       "--size", "32", "--out", root / "a.png")
    assert code == 2 and err.strip() == ("jaxviz featmaps: error: --weights: usernet:module_only returned a model "
                                         "without params; pass --weights FILE.safetensors (weights.save writes one) "
                                         "or --weights random")
    code, out, err = run(capsys, "featmaps", folder / "0.png", "--model", "usernet:module_only", "--layer", "Conv_0",
                         "--weights", root / "p.safetensors", "--size", "32", "--out", root / "b.png")
    assert code == 0, err
    code, out2, err = run(capsys, "featmaps", folder / "0.png", "--model", "usernet:build", "--layer", "Conv_0",
                          "--size", "32", "--out", root / "c.png")
    np.testing.assert_array_equal(titled.body(root / "b.png"), titled.body(root / "c.png"))


@pytest.mark.parametrize("spec, message", [
    ("usernet", "--model: expected MODULE:FACTORY (e.g. mynet:build or mynet.py:build), got 'usernet'"),
    ("nosuchmodule:build", "--model: cannot import 'nosuchmodule' (No module named 'nosuchmodule')"),
    ("usernet:nothing", "--model: 'usernet' has no function 'nothing'"),
    ("missing.py:build", "--model: no file 'missing.py'"),
])
def test_bad_model_specs_are_one_line(user, capsys, spec, message):
    root, folder = user
    code, _, err = run(capsys, "featmaps", folder / "0.png", "--model", spec, "--size", "32", "--out", root / "x.png")
    assert code == 2 and err == f"jaxviz featmaps: error: {message}\n"


def test_resnet_attribute_equals_the_library(user, capsys):
    root, folder = user
    code, _, err = run(capsys, "attribute", folder, "--model", "resnet18", "--weights", "random", "--method",
                       "saliency", "--target", "5", "--size", "32", "--out", root / "r", "--no-progress")
    assert code == 0, err
    params = weights.random("resnet18", seed=0)
    x = image.load(folder / "1.png", size=32)
    want = A.saliency(models.resnet18(), params, x, 5)
    got = np.load(root / "r" / "1.png.npy")
    assert got.shape == (32, 32, 3)  # the map as the library returns it
    # batched with the other image, the gradient rounds a little differently: compare by relative L2
    assert np.linalg.norm(got - np.asarray(want[0])) / np.linalg.norm(want[0]) < 1e-5


def test_picture_verbs_take_the_small_cnn(user, capsys):
    root, folder = user
    code, out, err = run(capsys, "featmaps", folder / "0.png", "--arch", "small-cnn", "--weights", "random",
                         "--layer", "relu2", "--size", "32", "--out", root / "s.png")
    assert code == 0, err
    assert "relu2: 32 channels of 16x16" in out
    from jaxviz.commands._common import _small_cnn

    net, _ = _small_cnn()
    import jax
    import jax.numpy as jnp

    params = net.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))  # --seed 0
    code, out, err = run(capsys, "top-patches", folder, "--arch", "small-cnn", "--weights", "random", "--layer",
                         "relu3", "--channels", "0", "--k", "2", "--size", "32", "--out", root / "t.png",
                         "--no-progress")
    assert code == 0, err
    x = np.concatenate([image.load(folder / f"{i}.png", size=32) for i in range(2)])
    acts = np.asarray(net.apply(params, x, taps="relu3")["relu3"])[..., 0].reshape(2, -1).max(1)
    assert f"channel 0: best {acts.max():.4g} in {folder / f'{int(acts.argmax())}.png'}" in out


def test_picture_verbs_default_to_the_models_suggested_layer(user, capsys):
    """No --layer: each verb takes the tap the model suggests (protocol.suggested_layer), measured on a user
    model and a ResNet, never a VGG name the model lacks."""
    from jaxviz.models import protocol

    root, folder = user
    net = models.resnet18()
    params = weights.random(net, seed=0)
    early = protocol.suggested_layer(net, params, (1, 64, 64, 3), "early")
    middle = protocol.suggested_layer(net, params, (1, 64, 64, 3), "middle")
    assert (early, middle) == ("conv1", "layer1/1")  # spatial taps conv1, relu, maxpool, layer1/0, layer1/1, ...
    code, out, err = run(capsys, "featmaps", folder / "0.png", "--arch", "resnet18", "--weights", "random",
                         "--size", "64", "--out", root / "f.png")
    assert code == 0, err
    assert "\nconv1: 64 channels of 32x32" in "\n" + out
    code, out, err = run(capsys, "top-patches", folder, "--arch", "resnet18", "--weights", "random", "--size", "64",
                         "--channels", "0-1", "--k", "2", "--out", root / "t.png", "--no-progress")
    assert code == 0, err
    assert "layer1/1" in out + err
    # a user's linen CNN: conv taps Conv_0, Conv_1; featmaps' default is the first spatial tap
    code, out, err = run(capsys, "featmaps", folder / "0.png", "--model", "usernet:build", "--size", "32",
                         "--out", root / "u.png")
    assert code == 0, err
    user_net, user_params = __import__("usernet").build()
    first = protocol.suggested_layer(user_net, user_params, (1, 32, 32, 3), "early")
    assert f"\n{first}: 8 channels of 32x32" in "\n" + out
    # filters: the first convolution of the params (ResNet's stem, 7x7 RGB)
    code, out, err = run(capsys, "filters", "--arch", "resnet18", "--weights", "random", "--out", root / "k.png")
    assert code == 0, err
    assert "\nconv1: 64 kernels of 7x7x3" in "\n" + out
    code, out, err = run(capsys, "filters", "--arch", "resnet18", "--weights", "random", "--layer", "layer1.0.conv1",
                         "--limit", "4", "--out", root / "k2.png")
    assert code == 0, err
    assert "\nlayer1_0/conv1: 4 of 64 kernels of 3x3x64" in "\n" + out
    code, out, err = run(capsys, "filters", "--arch", "resnet18", "--weights", "random", "--layer", "relu",
                         "--out", root / "k3.png")
    assert code == 2 and "--layer: expected a convolution in params (conv1, layer1_0/conv1, " in err
    assert len(err.strip().splitlines()) == 1
