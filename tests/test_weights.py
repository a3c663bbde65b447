"""Weights: torchvision/timm conversion, safe .pth reading, cache, download, checks."""

import hashlib
import http.server
import os
import threading

import jax
import numpy as np
import pytest

from jaxviz import models, weights
from jaxviz.errors import ArchitectureError, ChecksumError, InputError, WeightsError, WeightsNotFoundError

torch = pytest.importorskip("torch")
import torch_reference as tr  # noqa: E402

TINY = dict(stages=((8,), (16, 16)), fc_features=32, num_classes=10, pool_output=(2, 2))


@pytest.fixture(scope="module")
def tiny_ref():
    net = models.VGG(**TINY)
    ref = tr.make(TINY["stages"], seed=0, num_classes=10, fc_features=32, pool_output=(2, 2))
    return net, ref, {k: v.detach().clone() for k, v in ref.state_dict().items()}


def flat(params):
    return {f"{l}.{k}": np.asarray(v) for l, d in params["params"].items() for k, v in d.items()}


def assert_same_params(a, b):
    fa, fb = flat(a), flat(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


def test_random_follows_torchvision_init():
    p = weights.random("vgg16", seed=0)["params"]
    assert len([k for k in p if k.startswith("conv")]) == 13 and p["fc6"]["kernel"].shape == (25088, 4096)
    k = np.asarray(p["conv3_1"]["kernel"])
    assert k.shape == (3, 3, 128, 256)
    assert abs(k.std() / np.sqrt(2 / (256 * 9)) - 1) < 0.02  # kaiming normal, fan_out
    assert abs(np.asarray(p["fc7"]["kernel"]).std() / 0.01 - 1) < 0.01
    assert not np.asarray(p["conv3_1"]["bias"]).any() and not np.asarray(p["fc8"]["bias"]).any()
    again = weights.random(models.VGG(**TINY), seed=5)
    assert_same_params(again, weights.random(models.VGG(**TINY), seed=5))
    other = flat(weights.random(models.VGG(**TINY), seed=6))
    assert not np.array_equal(other["conv1_1.kernel"], flat(again)["conv1_1.kernel"])


def test_convert_layout_and_fc6_permutation(tiny_ref):
    net, ref, state = tiny_ref
    params = weights.from_torchvision(state, net)["params"]
    w = state["features.0.weight"].numpy()
    np.testing.assert_array_equal(params["conv1_1"]["kernel"], w.transpose(2, 3, 1, 0))
    # conv2_2 is features.5: conv(0) relu(1) pool(2) conv(3) relu(4) conv(5)
    np.testing.assert_array_equal(params["conv2_2"]["bias"], state["features.5.bias"].numpy())
    # fc6: torchvision flattens (C, H, W); we flatten (H, W, C)
    w6 = state["classifier.0.weight"].numpy()  # (32, 16*2*2)
    k6 = np.asarray(params["fc6"]["kernel"])  # (2*2*16, 32)
    h, wd, c, f = 1, 0, 7, 3
    assert k6[(h * 2 + wd) * 16 + c, f] == w6[f, c * 4 + h * 2 + wd]
    np.testing.assert_array_equal(params["fc8"]["kernel"], state["classifier.6.weight"].numpy().T)


def test_to_torchvision_round_trip(tiny_ref):
    net, _, state = tiny_ref
    back = weights.to_torchvision(weights.from_torchvision(state, net), net)
    assert back.keys() == state.keys()
    for k in state:
        np.testing.assert_array_equal(back[k], state[k].numpy(), err_msg=k)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-format"])
def test_pth_file_equals_mapping(tmp_path, tiny_ref, legacy):
    net, _, state = tiny_ref
    path = tmp_path / "tiny.pth"
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    assert_same_params(weights.from_torchvision(path, net), weights.from_torchvision(state, net))


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch " + str(_Evil.marker),))


def test_pth_with_pickled_code_is_refused_and_nothing_runs(tmp_path, tiny_ref):
    net, _, state = tiny_ref
    _Evil.marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({**state, "extra": _Evil()}, path)
    with pytest.raises(WeightsError, match=r"evil.pth: refused: the file holds pickled Python objects"):
        weights.from_torchvision(path, net)
    assert not _Evil.marker.exists()


@pytest.mark.parametrize("payload", [b"garbage", b"\x89PNG\r\n\x1a\n not weights"])
def test_pth_of_garbage_is_called_not_a_checkpoint_not_pickled_code(tmp_path, tiny_ref, payload):
    path = tmp_path / "bad.pth"
    path.write_bytes(payload)
    with pytest.raises(WeightsError) as e:
        weights.from_torchvision(path, tiny_ref[0])
    assert str(e.value) == (f"{path}: not a PyTorch checkpoint (those are zip archives or pickles; this file "
                            f"starts with {payload[:4]!r})")


def test_pth_errors_never_pass_on_torchs_advice_to_load_unsafely(tmp_path, tiny_ref):
    path = tmp_path / "bad.pth"
    path.write_bytes(b"\x80\x02 a pickle that is not one")  # a pickle's first bytes, then garbage
    with pytest.raises(WeightsError, match=r"bad.pth: corrupt or truncated PyTorch file") as e:
        weights.from_torchvision(path, tiny_ref[0])
    assert "weights_only" not in str(e.value) and "Re-running" not in str(e.value)
    with pytest.raises(WeightsError, match=r"a folder, expected a weights file \(\.pth or \.safetensors\)$"):
        weights.from_torchvision(tmp_path, tiny_ref[0])


def test_truncated_and_garbage_files(tmp_path, tiny_ref):
    net, _, state = tiny_ref
    good = tmp_path / "good.pth"
    torch.save(state, good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(WeightsError, match=r"cut.pth: corrupt or truncated PyTorch file"):
        weights.from_torchvision(cut, net)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(WeightsError, match=r"junk.safetensors: corrupt or truncated safetensors file"):
        weights.from_torchvision(junk, net)
    with pytest.raises(WeightsNotFoundError, match=r"missing.pth: no such file"):
        weights.from_torchvision(tmp_path / "missing.pth", net)


def test_checksum_prefix_in_torchvision_file_name(tmp_path, tiny_ref):
    net, _, state = tiny_ref
    tmp = tmp_path / "x.pth"
    torch.save(state, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    good = tmp_path / f"tiny-{digest[:8]}.pth"
    tmp.rename(good)
    weights.from_torchvision(good, net)  # verified, accepted
    bad = tmp_path / f"tiny-{'0' * 8 if digest[:8] != '0' * 8 else '1' * 8}.pth"
    bad.write_bytes(good.read_bytes())
    with pytest.raises(ChecksumError, match=r"checksum mismatch: the name promises sha256 (0{8}|1{8})\.\.\., the file has " + digest):
        weights.from_torchvision(bad, net)


def test_wrong_architecture_is_named():
    ref16 = tr.make("vgg16")
    state = {k: v for k, v in ref16.state_dict().items() if k.startswith("features")}
    with pytest.raises(ArchitectureError, match=r"wrong architecture: expected vgg19 with 16 convolutions in 'features', found 13 \(looks like VGG16\)"):
        weights.from_torchvision(state, "vgg19")
    # inferred when arch=None; a features-only file gives a features-only params tree
    params = weights.from_torchvision(state, None)
    assert "conv5_3" in params["params"] and "fc6" not in params["params"]
    with pytest.raises(ArchitectureError, match=r"neither VGG16 \(13\) nor VGG19 \(16\)"):
        weights.from_torchvision({"features.0.weight": np.zeros((64, 3, 3, 3))}, None)


def test_wrong_shapes_are_named(tiny_ref):
    net, _, state = tiny_ref
    bad = dict(state)
    bad["features.3.weight"] = torch.zeros(16, 4, 3, 3)
    with pytest.raises(ArchitectureError, match=r"features.3.weight \(conv2_1\) has shape \(16, 4, 3, 3\), expected \(16, 8, 3, 3\)"):
        weights.from_torchvision(bad, net)
    with pytest.raises(InputError, match=r"state: expected a mapping"):
        weights.convert([1, 2], net)


def _faulty_states(state):
    """(what, state dict, error type, message) for every fault a weight file may carry."""
    missing = {k: v for k, v in state.items() if k != "features.0.bias"}
    extra = dict(state, **{"features.1.running_mean": torch.zeros(8)})
    reshaped = dict(state, **{"features.0.bias": torch.zeros(9)})
    nan = dict(state, **{"classifier.3.weight": state["classifier.3.weight"].clone().fill_(float("nan"))})
    inf = dict(state, **{"features.0.weight": state["features.0.weight"].clone().fill_(float("inf"))})
    integer = dict(state, **{"features.0.bias": torch.arange(8, dtype=torch.int64)})
    return [
        ("missing", missing, ArchitectureError, r"wrong architecture: no features\.0\.bias \(conv1_1\) for"),
        ("extra", extra, ArchitectureError, r"unexpected key features\.1\.running_mean for .*strict=False"),
        ("reshaped", reshaped, ArchitectureError, r"features\.0\.bias \(conv1_1\) has shape \(9,\), expected \(8,\)"),
        ("nan", nan, WeightsError, r"classifier\.3\.weight: 1024 NaN or infinite values; the file is damaged"),
        ("inf", inf, WeightsError, r"features\.0\.weight: 216 NaN or infinite values"),
        ("integer", integer, WeightsError, r"features\.0\.bias: expected floating-point weights, got int64"),
    ]


@pytest.mark.parametrize("form", ["mapping", "pth", "safetensors"])
def test_faulty_state_dicts_are_refused_by_name(tmp_path, tiny_ref, form):
    from safetensors.torch import save_file

    net, _, state = tiny_ref
    for what, bad, error, message in _faulty_states(state):
        if form == "mapping":
            source = bad
        elif form == "pth":
            source = tmp_path / f"{what}.pth"
            torch.save(bad, source)
        else:
            source = tmp_path / f"{what}.safetensors"
            save_file({k: v.contiguous() for k, v in bad.items()}, source)
        with pytest.raises(error, match=message):
            weights.from_torchvision(source, net)
    # strict=False ignores an unexpected key, and only that
    extra = _faulty_states(state)[1][1]
    assert_same_params(weights.from_torchvision(extra, net, strict=False), weights.from_torchvision(state, net))
    with pytest.raises(ArchitectureError, match=r"no features\.0\.bias"):
        weights.from_torchvision(_faulty_states(state)[0][1], net, strict=False)


def test_cli_convert_of_a_faulty_file_writes_nothing(tmp_path, monkeypatch, capsys):
    from jaxviz import cli

    monkeypatch.setenv("JAXVIZ_CACHE", str(tmp_path / "cache"))
    ref = tr.make("vgg16")
    state = {k: v for k, v in ref.state_dict().items() if k != "features.0.bias"}
    torch.save(state, tmp_path / "vgg16.pth")
    assert cli.main(["convert", str(tmp_path / "vgg16.pth"), "--arch", "vgg16"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"jaxviz convert: error: {tmp_path / 'vgg16.pth'}: wrong architecture: no features.0.bias "
                   "(conv1_1) for vgg16")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_safetensors_torchvision_and_timm_layouts(tmp_path, tiny_ref):
    from safetensors.numpy import save_file

    net, _, state = tiny_ref
    tv = {k: v.numpy() for k, v in state.items()}
    save_file(tv, tmp_path / "tv.safetensors")
    # timm's vgg stores the first classifier layer as a 7x7 (here 2x2) conv, the second as 1x1
    timm = {k: v for k, v in tv.items() if k.startswith("features")}
    timm["pre_logits.fc1.weight"] = tv["classifier.0.weight"].reshape(32, 16, 2, 2)
    timm["pre_logits.fc1.bias"] = tv["classifier.0.bias"]
    timm["pre_logits.fc2.weight"] = tv["classifier.3.weight"].reshape(32, 32, 1, 1)
    timm["pre_logits.fc2.bias"] = tv["classifier.3.bias"]
    timm["head.fc.weight"] = tv["classifier.6.weight"]
    timm["head.fc.bias"] = tv["classifier.6.bias"]
    save_file(timm, tmp_path / "timm.safetensors")
    expected = weights.from_torchvision(state, net)
    assert_same_params(weights.from_torchvision(tmp_path / "tv.safetensors", net), expected)
    assert_same_params(weights.from_torchvision(tmp_path / "timm.safetensors", net), expected)


def test_save_load_round_trip_and_corruption(tmp_path, tiny_ref):
    net, _, state = tiny_ref
    params = weights.from_torchvision(state, net)
    path = weights.save(params, tmp_path / "p.jaxviz.safetensors")
    assert (tmp_path / "p.jaxviz.safetensors.sha256").read_text().split()[0] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert_same_params(weights.load_file(path, net), params)
    assert sorted(os.listdir(tmp_path)) == ["p.jaxviz.safetensors", "p.jaxviz.safetensors.sha256"]  # no temp files
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=r"p.jaxviz.safetensors: checksum mismatch: expected sha256 [0-9a-f]{64}, got"):
        weights.load_file(path, net)
    other = weights.save(weights.random(models.VGG(stages=((4,), (16, 16)), fc_features=32, num_classes=10, pool_output=(2, 2))), tmp_path / "o.safetensors")
    with pytest.raises(ArchitectureError, match=r"o.safetensors: wrong architecture: conv1_1.(bias|kernel) has shape \((3, 3, 3, )?4,?\), expected \((3, 3, 3, )?8,?\)"):
        weights.load_file(other, net)



def test_replacing_a_saved_file_never_pairs_it_with_the_old_checksum(tmp_path, tiny_ref, monkeypatch):
    """An interrupt between writing the new file and its sidecar leaves the new file unverified, not refused as
    corrupt beside the old file's sha256 (convert --overwrite stopped there left the cache unusable)."""
    net, _, state = tiny_ref
    old = weights.from_torchvision(state, net)
    path = weights.save(old, tmp_path / "p.jaxviz.safetensors")
    new = jax.tree_util.tree_map(lambda a: a + 1, old)

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(weights, "atomic_write_text", interrupted)
    with pytest.raises(KeyboardInterrupt):
        weights.save(new, path)
    assert not (tmp_path / "p.jaxviz.safetensors.sha256").exists()
    assert_same_params(weights.load_file(path, net), new)  # the whole new file, loaded unverified
    monkeypatch.undo()
    weights.save(new, path)
    assert (tmp_path / "p.jaxviz.safetensors.sha256").read_text().split()[0] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_save_load_keeps_batch_norm_statistics(tmp_path):
    """A BatchNorm network's variables (BN ``scale`` params and ``batch_stats``) survive the round trip."""
    import jax
    import jax.numpy as jnp

    net = models.small_cnn(widths=(4, 8), batch_norm=True)
    v = net.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    rng = np.random.default_rng(0)
    v = jax.tree_util.tree_map(lambda a: np.asarray(a) + rng.uniform(0.5, 1.5, a.shape).astype(np.float32), v)
    back = weights.load_file(weights.save(v, tmp_path / "bn.safetensors"))
    assert sorted(back) == ["batch_stats", "params"]
    assert sorted(back["batch_stats"]["bn1"]) == ["mean", "var"]
    for got, want in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(v)):
        np.testing.assert_array_equal(np.asarray(got), want)
    x = rng.random((2, 32, 32, 3), dtype=np.float32)
    np.testing.assert_array_equal(np.asarray(net.apply(back, x)), np.asarray(net.apply(v, x)))
    # the params alone (the inner mapping) still save as the plain layout every earlier file has
    plain = weights.save(v["params"], tmp_path / "p.safetensors")
    assert sorted(weights.load_file(plain)) == ["params"]


# ---------------------------------------------------------------------- cache + loopback download


class _Server:
    def __init__(self, payload: bytes):
        self.payload, self.requests = payload, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests.append(self.path)
                body = outer.payload
                if self.path.endswith("corrupt.pth"):
                    body = body[:-1] + bytes([body[-1] ^ 1])
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def tiny_arch(monkeypatch, tmp_path, tiny_ref):
    """Registers a 'tiny' arch served from a loopback HTTP server, as torchvision serves vgg19."""
    net, _, state = tiny_ref
    src = tmp_path / "src.pth"
    torch.save(state, src)
    payload = src.read_bytes()
    prefix = hashlib.sha256(payload).hexdigest()[:8]
    server = _Server(payload)
    monkeypatch.setitem(models.ARCHS, "tiny", lambda **kw: models.VGG(**TINY, **kw))
    monkeypatch.setitem(
        weights.SOURCES, "tiny", weights.Source("tiny", f"{server.url}/tiny-{prefix}.pth", f"tiny-{prefix}.pth", prefix, 0.01)
    )
    monkeypatch.delenv("JAXVIZ_OFFLINE", raising=False)
    yield server, weights.from_torchvision(state, net)
    server.close()


def test_load_downloads_verifies_converts_and_caches(tmp_path, tiny_arch):
    server, expected = tiny_arch
    cache = tmp_path / "cache"
    params = weights.load("tiny", cache=cache, progress=False)
    assert_same_params(params, expected)
    assert len(server.requests) == 1
    src = weights.SOURCES["tiny"]
    assert (cache / src.filename).exists() and (cache / src.converted_name).exists()
    assert weights.cached(cache)["tiny"]["converted"] == cache / src.converted_name
    again = weights.load("tiny", cache=cache, progress=False)  # from the cache, no request
    assert_same_params(again, expected)
    assert len(server.requests) == 1  # loaded from the cache: no second download
    assert "fc6" not in weights.load("tiny", cache=cache, classifier=False)["params"]


def test_load_refuses_a_corrupted_download(tmp_path, monkeypatch, tiny_arch):
    server, _ = tiny_arch
    src = weights.SOURCES["tiny"]
    monkeypatch.setitem(weights.SOURCES, "tiny", weights.Source("tiny", f"{server.url}/corrupt.pth", src.filename, src.sha256_prefix, 0.01))
    cache = tmp_path / "cache"
    with pytest.raises(ChecksumError, match=src.filename):
        weights.load("tiny", cache=cache, progress=False)
    assert not (cache / src.filename).exists() and not (cache / src.converted_name).exists()


def test_offline_with_nothing_cached_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXVIZ_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("JAXVIZ_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError) as e:
        weights.load("vgg19", progress=False)
    msg = str(e.value)
    assert "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth" in msg
    assert str(tmp_path / "c" / "vgg19-dcbb9e9d.pth") in msg
    assert "weights.random('vgg19')" in msg and "offline" in msg
    with pytest.raises(WeightsNotFoundError, match="no pretrained weights for vgg16"):
        weights.load("vgg16", download=False)
    with pytest.raises(WeightsNotFoundError, match=r"https://download.pytorch.org/models/resnet50-0676ba61.pth "
                                                   r"\(98 MB\)"):
        weights.load("resnet50", progress=False)
    with pytest.raises(InputError, match=r"arch: expected one of 'vgg16', 'vgg19', 'resnet18', .*; got 'alexnet'"):
        weights.load("alexnet")


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("JAXVIZ_CACHE", str(tmp_path / "x"))
    assert weights.cache_dir() == tmp_path / "x"
    monkeypatch.delenv("JAXVIZ_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert weights.cache_dir() == tmp_path / "xdg" / "jaxviz"


def test_saved_files_have_the_same_bytes_every_time(tmp_path):
    """The safetensors writer emits its metadata in hash order (it changed between calls); jaxviz sorts the
    header, so the same params give the same bytes and sha256 (a converted file can be checked against a
    published digest), and the file still reads back with safetensors itself."""
    from safetensors import safe_open

    net = models.VGG(stages=((8,), (16,)), classifier=False)
    params = weights.random(net, seed=0)
    digests = set()
    for i in range(6):
        path = weights.save(params, tmp_path / f"p{i}.safetensors", arch="vgg19")
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(digests) == 1
    with safe_open(str(tmp_path / "p0.safetensors"), "np") as f:
        assert f.metadata() == {"format": "jaxviz", "layout": "flax-nhwc", "arch": "vgg19"}
        np.testing.assert_array_equal(f.get_tensor("conv1_1.kernel"), params["params"]["conv1_1"]["kernel"])


def test_torchvision_keys_name_every_tensor_of_the_reference_state_dict():
    """The public map users rename other layouts to: exactly torchvision's keys, for both VGGs and a custom one."""
    for arch in ("vgg16", "vgg19"):
        keys = weights.torchvision_keys(arch)
        state = tr.make(arch).state_dict()
        assert {f"{p}.{leaf}" for p in keys.values() for leaf in ("weight", "bias")} == set(state)
        features = weights.torchvision_keys(arch, classifier=False)
        assert set(features) == {k for k in keys if k.startswith("conv")}
    net = models.VGG(**TINY)
    ref = tr.make(TINY["stages"], seed=0, num_classes=10, fc_features=32, pool_output=(2, 2))
    keys = weights.torchvision_keys(net)
    assert {f"{p}.{leaf}" for p in keys.values() for leaf in ("weight", "bias")} == set(ref.state_dict())
    # renamed from a stranger's names back to torchvision's, the dict converts to the same params
    renamed = {f"my.{layer}.{leaf}": ref.state_dict()[f"{p}.{leaf}"] for layer, p in keys.items()
               for leaf in ("weight", "bias")}
    back = {f"{keys[k.split('.')[1]]}.{k.split('.')[2]}": v for k, v in renamed.items()}
    assert_same_params(weights.from_torchvision(back, net), weights.from_torchvision(ref.state_dict(), net))
