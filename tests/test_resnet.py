"""ResNet-18/50 against a torch.nn re-creation of torchvision's (same state-dict keys, random weights and
trained-looking BatchNorm statistics), conversion strictness, files, taps."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch_reference import TorchResNet, to_nchw, to_nhwc  # noqa: E402

from jaxviz import models, weights  # noqa: E402
from jaxviz.errors import ArchitectureError  # noqa: E402


def _rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


@pytest.fixture(scope="module")
def resnet18():
    ref = TorchResNet("resnet18", seed=0)
    return ref, weights.convert(ref.state_dict())


@pytest.mark.parametrize("size", [224, 100])
def test_resnet18_every_tap_equals_torch(resnet18, size):
    ref, params = resnet18
    net = models.resnet18()
    x = np.random.RandomState(size).rand(2, size, size, 3).astype(np.float32)
    with torch.no_grad():
        want = {k: to_nhwc(v) for k, v in ref.taps(to_nchw(x)).items()}
    with jax.default_matmul_precision("highest"):
        out, got = net.run(params, jnp.asarray(x), net.layers)
    assert set(got) == set(want)
    for k in want:
        assert _rel(got[k], want[k]) < 1e-5, k
    assert _rel(out, want["fc"]) < 1e-5


def test_resnet50_taps_and_logits_equal_torch():
    ref = TorchResNet("resnet50", seed=1)
    params = weights.convert(ref.state_dict())  # the architecture is inferred from the keys
    net = models.resnet50()
    x = np.random.RandomState(0).rand(1, 224, 224, 3).astype(np.float32)
    with torch.no_grad():
        want = {k: to_nhwc(v) for k, v in ref.taps(to_nchw(x)).items()}
    with jax.default_matmul_precision("highest"):
        out, got = net.run(params, jnp.asarray(x), ("maxpool", "layer1", "layer2.3", "layer3", "layer4", "avgpool"))
    for name, key in (("maxpool", "maxpool"), ("layer1", "layer1/2"), ("layer2.3", "layer2/3"), ("layer3", "layer3/5"),
                      ("layer4", "layer4/2"), ("avgpool", "avgpool")):
        assert _rel(got[name], want[key]) < 1e-5, name
    assert _rel(out, want["fc"]) < 1e-5


def test_conversion_is_strict(resnet18):
    ref, _ = resnet18
    state = {k: v.numpy() for k, v in ref.state_dict().items()}
    missing = dict(state)
    del missing["layer2.0.downsample.1.running_var"]
    with pytest.raises(ArchitectureError, match=r"no layer2\.0\.downsample\.1\.running_var for resnet18"):
        weights.convert(missing, "resnet18")
    extra = dict(state, **{"layer1.0.conv9.weight": np.zeros((1,), np.float32)})
    with pytest.raises(ArchitectureError, match=r"unexpected key layer1\.0\.conv9\.weight for resnet18"):
        weights.convert(extra, "resnet18")
    with pytest.raises(ArchitectureError, match=r"layer1\.0\.conv1\.weight has shape \(64, 64, 3, 3\), expected "
                                                r"\(64, 64, 1, 1\) for resnet50"):
        weights.convert(state, "resnet50")
    ten = dict(state, **{"fc.weight": state["fc.weight"][:10], "fc.bias": state["fc.bias"][:10]})
    with pytest.raises(ArchitectureError, match=r"fc has 10 classes; build the model with "
                                                r"models.resnet18\(num_classes=10\)"):
        weights.convert(ten, "resnet18")
    p10 = weights.convert(ten, models.resnet18(num_classes=10))
    assert p10["params"]["fc"]["kernel"].shape == (512, 10)


def test_save_and_load_nested_params(resnet18, tmp_path):
    _, params = resnet18
    path = weights.save(params, tmp_path / "r18.safetensors", arch="resnet18")
    back = weights.load_file(path, "resnet18")
    for (pa, a), (pb, b) in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                                jax.tree_util.tree_flatten_with_path(back)[0]):
        assert pa == pb
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ArchitectureError, match=r"wrong architecture: fc\.kernel has shape \(512, 1000\), expected "
                                                r"\(2048, 1000\) for resnet50"):
        weights.load_file(path, "resnet50")


def test_torchvision_safetensors_file_is_converted(resnet18, tmp_path):
    from safetensors.numpy import save_file

    ref, params = resnet18
    save_file({k: v.numpy() for k, v in ref.state_dict().items()}, str(tmp_path / "tv.safetensors"))
    got = weights.load_file(tmp_path / "tv.safetensors", "resnet18")
    np.testing.assert_array_equal(got["params"]["layer4_1"]["conv2"]["kernel"],
                                  params["params"]["layer4_1"]["conv2"]["kernel"])


def test_random_weights_follow_torchvision_init():
    p = weights.random("resnet50", seed=0)["params"]
    k = np.asarray(p["layer3_0"]["conv2"]["kernel"])  # 3x3, 256 -> 256
    assert k.shape == (3, 3, 256, 256)
    np.testing.assert_allclose(k.std(), np.sqrt(2 / (256 * 9)) / np.sqrt(1 + 1e-5), rtol=0.02)
    fc = np.asarray(p["fc"]["kernel"])
    assert fc.shape == (2048, 1000) and np.abs(fc).max() <= 1 / np.sqrt(2048)


def test_taps_and_aliases():
    net = models.resnet34()
    assert net.layers[:5] == ("conv1", "relu", "maxpool", "layer1/0", "layer1/1")
    assert net.layers[-2:] == ("avgpool", "fc") and len(net.layers) == 3 + 16 + 2
    assert net.resolve("layer4") == "layer4/2" and net.resolve("layer3.5") == "layer3/5"
    assert net.resolve("logits") == "fc" and net.default_layer == "layer4/2" and net.cam_layers == ("layer4/2", "fc")
