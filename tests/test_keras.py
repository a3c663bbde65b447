"""weights.from_keras on files written here (Keras 2 and 3 .h5 via h5py, ONNX via onnx.helper) for a small VGG,
the input conventions (models.vgg16(preprocess=...)), and what weights.save records of them."""

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from jaxviz import models, weights
from jaxviz.errors import ArchitectureError, InputError, WeightsError

# a VGG small enough to write by hand: two blocks, a 2x2 pool output, a 16-16-5 classifier
NET = models.VGG(stages=((4, 4), (8,)), fc_features=16, num_classes=5, pool_output=(2, 2), preprocess="caffe")


def _params(seed=0):
    return jax.tree.map(np.asarray, weights.random(NET, seed=seed))["params"]


def _keras_dict(params):
    """jaxviz params -> Keras' names and layout (HWIO kernels, fc1 over the (H, W, C) flattening: jaxviz's own)."""
    names = {v: k for k, v in weights.keras_names(NET).items()}
    return {f"{names[layer]}/{leaf}": value for layer, leaves in params.items() for leaf, value in leaves.items()}


def _same(a, b):
    a, b = a["params"] if "params" in a else a, b["params"] if "params" in b else b
    assert sorted(a) == sorted(b)
    for layer in a:
        for leaf in a[layer]:
            np.testing.assert_array_equal(np.asarray(a[layer][leaf]), np.asarray(b[layer][leaf]), err_msg=layer)


def test_keras_names_follow_the_stages():
    assert weights.keras_names("vgg19")["block5_conv4"] == "conv5_4"
    assert "block5_conv4" not in weights.keras_names("vgg16")
    assert weights.keras_names(NET) == {"block1_conv1": "conv1_1", "block1_conv2": "conv1_2",
                                        "block2_conv1": "conv2_1", "fc1": "fc6", "fc2": "fc7", "predictions": "fc8"}


def test_dict_round_trip_and_features_only():
    p = _params()
    _same(weights.from_keras(_keras_dict(p), NET), p)
    convs = {k: v for k, v in _keras_dict(p).items() if k.startswith("block")}
    _same(weights.from_keras(convs, NET.clone(classifier=False)), {k: v for k, v in p.items() if k.startswith("conv")})
    # Keras' ":0" suffixes are accepted
    _same(weights.from_keras({f"{k}:0": v for k, v in _keras_dict(p).items()}, NET), p)


def test_fc1_is_read_in_keras_flattening_order():
    """The output of a Keras-style forward pass in NumPy (Flatten over H, W, C) equals jaxviz's."""
    p = _params(1)
    x = np.random.default_rng(0).uniform(0, 1, (2, 8, 8, 3)).astype(np.float32)
    feats = NET.clone(classifier=False).apply({"params": {k: v for k, v in p.items() if k.startswith("conv")}}, x)
    flat = np.asarray(feats).reshape(2, -1)  # pool2 is 2 x 2 = pool_output: Keras flattens (H, W, C) as here
    k = _keras_dict(p)
    h = np.maximum(flat @ k["fc1/kernel"] + k["fc1/bias"], 0)
    h = np.maximum(h @ k["fc2/kernel"] + k["fc2/bias"], 0)
    logits = h @ k["predictions/kernel"] + k["predictions/bias"]
    ours = NET.apply(weights.from_keras(k, NET), x)
    np.testing.assert_allclose(ours, logits, rtol=1e-5, atol=1e-5)


def _write_keras2(path, arrays, *, whole_model=False):
    with h5py.File(path, "w") as f:
        root = f.create_group("model_weights") if whole_model else f
        layers = sorted({k.split("/")[0] for k in arrays})
        root.attrs["layer_names"] = [n.encode() for n in layers + ["flatten"]]
        root.create_group("flatten").attrs["weight_names"] = []
        for name in layers:
            g = root.create_group(name)
            g.attrs["weight_names"] = [f"{name}/{leaf}:0".encode() for leaf in ("kernel", "bias")]
            for leaf in ("kernel", "bias"):
                g.create_dataset(f"{name}/{leaf}:0", data=arrays[f"{name}/{leaf}"])


def _write_keras3(path, arrays):
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            name, leaf = key.split("/")
            f.create_dataset(f"layers/{name}/vars/{('kernel', 'bias').index(leaf)}", data=value)
        f.create_dataset("optimizer/vars/0", data=np.zeros(1))


@pytest.mark.parametrize("layout", ["keras2", "keras2-model", "keras3"])
def test_h5_files(tmp_path, layout):
    p = _params(2)
    path = tmp_path / "vgg.weights.h5"
    if layout == "keras3":
        _write_keras3(path, _keras_dict(p))
    else:
        _write_keras2(path, _keras_dict(p), whole_model=layout == "keras2-model")
    _same(weights.from_keras(path, NET), p)


def test_errors_name_the_keras_key(tmp_path):
    p = _keras_dict(_params())
    with pytest.raises(ArchitectureError, match=r"unexpected key block3_conv1/kernel"):
        weights.from_keras({**p, "block3_conv1/kernel": np.zeros((3, 3, 8, 8), np.float32)}, NET)
    # not strict: the extra layer is ignored
    _same(weights.from_keras({**p, "block3_conv1/kernel": np.zeros((3, 3, 8, 8), np.float32)}, NET, strict=False),
          _params())
    with pytest.raises(ArchitectureError, match=r"no block2_conv1/bias \(conv2_1\)"):
        weights.from_keras({k: v for k, v in p.items() if k != "block2_conv1/bias"}, NET)
    with pytest.raises(ArchitectureError, match=r"block1_conv2/kernel \(conv1_2\) has shape \(4, 5, 3, 3\)"):
        weights.from_keras({**p, "block1_conv2/kernel": np.zeros((3, 3, 5, 4), np.float32)}, NET)
    with pytest.raises(WeightsError, match=r"block1_conv1/bias: 1 NaN"):
        weights.from_keras({**p, "block1_conv1/bias": np.array([0, np.nan, 0, 0], np.float32)}, NET)
    with pytest.raises(ArchitectureError, match="neither VGG16 \\(13\\) nor VGG19 \\(16\\)"):
        weights.from_keras(p)  # 3 convolutions, no arch given
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5 at all")
    with pytest.raises(WeightsError, match="corrupt or not an HDF5 file"):
        weights.from_keras(bad, NET)
    empty = tmp_path / "empty.h5"
    with h5py.File(empty, "w") as f:
        f.create_dataset("dense/kernel:0", data=np.zeros((2, 2)))
    with pytest.raises(WeightsError, match="no Keras VGG layers.*dense/kernel:0"):
        weights.from_keras(empty, NET)


def _onnx_model(p, head):
    """A Keras-exported-like ONNX graph of NET's features (NHWC input, transposed to NCHW), with ``head``:
    ``"vgg"`` (Keras' fc1/fc2/predictions as MatMul + Add over the (H, W, C) flattening) or ``"other"`` (a
    different dense head, which from_keras leaves out)."""
    init, nodes, x = [], [], "x_nchw"
    nodes.append(helper.make_node("Transpose", ["input"], [x], perm=[0, 3, 1, 2]))
    names = {v: k for k, v in weights.keras_names(NET).items()}
    for b, stage in enumerate(NET.stages, 1):
        for n in range(1, len(stage) + 1):
            conv = f"conv{b}_{n}"
            kname, bname = f"{names[conv]}/kernel", f"{names[conv]}/bias"
            init += [numpy_helper.from_array(p[conv]["kernel"].transpose(3, 2, 0, 1).copy(), kname),
                     numpy_helper.from_array(p[conv]["bias"], bname)]
            nodes += [helper.make_node("Conv", [x, kname, bname], [f"{conv}_out"], kernel_shape=[3, 3],
                                       pads=[1, 1, 1, 1]),
                      helper.make_node("Relu", [f"{conv}_out"], [f"relu{b}_{n}"])]
            x = f"relu{b}_{n}"
        nodes.append(helper.make_node("MaxPool", [x], [f"pool{b}"], kernel_shape=[2, 2], strides=[2, 2]))
        x = f"pool{b}"
    nodes += [helper.make_node("Transpose", [x], ["nhwc"], perm=[0, 2, 3, 1]),
              helper.make_node("Flatten", ["nhwc"], ["flat"], axis=1)]
    x = "flat"
    widths = ((p["fc6"]["kernel"], p["fc6"]["bias"]), (p["fc7"]["kernel"], p["fc7"]["bias"]),
              (p["fc8"]["kernel"], p["fc8"]["bias"]))
    if head == "other":
        widths = ((np.ones((32, 3), np.float32), np.zeros(3, np.float32)),)
    for i, (w, b) in enumerate(widths):
        init += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"mm{i}"]), helper.make_node("Add", [f"mm{i}", f"b{i}"],
                                                                                        [f"fc{i}"])]
        x = f"fc{i}"
        if i < len(widths) - 1:
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"]))
            x = f"r{i}"
    graph = helper.make_graph(nodes, "vgg", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                          [None, 8, 8, 3])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)], init)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_onnx_export_convolutions_and_outputs(tmp_path, monkeypatch):
    p = _params(3)
    path = tmp_path / "vgg.onnx"
    onnx.save(_onnx_model(p, "other"), str(path))
    features = weights.from_keras(path, NET.clone(classifier=False))
    _same(features, {k: v for k, v in p.items() if k.startswith("conv")})
    # every tap equals onnxruntime's (raw input: the graph applies no preprocessing)
    model = _onnx_model(p, "other")
    for tap in ("relu1_1", "relu1_2", "relu2_1"):
        model.graph.output.append(helper.make_tensor_value_info(tap, TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32)
    got = sess.run(["relu1_1", "relu1_2", "relu2_1"], {"input": x})
    ours = NET.clone(classifier=False, preprocess="none").apply(features, x, taps=("relu1_1", "relu1_2", "relu2_1"))
    for ref, tap in zip(got, ("relu1_1", "relu1_2", "relu2_1")):
        np.testing.assert_allclose(ours[tap], ref.transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-6)
    # a VGG head is read as the classifier when its shapes are VGG's (7 x 7 x 512 -> 4096 -> 4096 -> N)
    monkeypatch.setattr(weights, "_VGG_HEAD_INPUTS", (2 * 2 * 8, 16))
    onnx.save(_onnx_model(p, "vgg"), str(path))
    full = weights.from_keras(path, NET)
    _same(full, p)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(NET.clone(preprocess="none").apply(full, x), sess.run(None, {"input": x})[0],
                               rtol=1e-5, atol=1e-5)


def test_onnx_errors(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(WeightsError, match="corrupt or not an ONNX file"):
        weights.from_keras(bad, NET)
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["y"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    onnx.save(helper.make_model(graph), str(bad))
    with pytest.raises(WeightsError, match="no convolutions"):
        weights.from_keras(bad, NET)
    with pytest.raises(weights.WeightsNotFoundError, match="no such file"):
        weights.from_keras(tmp_path / "missing.onnx")


# --------------------------------------------------------------------------- input conventions


@pytest.mark.parametrize("preprocess", ["torchvision", "caffe", "none"])
def test_preprocess_is_the_documented_formula(preprocess):
    net = NET.clone(classifier=False, preprocess=preprocess)
    raw = NET.clone(classifier=False, preprocess="none")
    p = {"params": {k: v for k, v in _params(4).items() if k.startswith("conv")}}
    x = np.random.default_rng(1).uniform(0, 1, (2, 8, 8, 3)).astype(np.float32)
    if preprocess == "torchvision":
        fed = (x - np.array(models.IMAGENET_MEAN)) / np.array(models.IMAGENET_STD)
    elif preprocess == "caffe":
        fed = x[..., ::-1] * 255.0 - np.array(models.CAFFE_MEAN_BGR)
    else:
        fed = x
    a = net.apply(p, x, taps="relu1_2")["relu1_2"]
    b = raw.apply(p, fed.astype(np.float32), taps="relu1_2")["relu1_2"]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
    # a model that converts its input takes RGB in [0, 1] only; "none" takes anything
    assert net.unit_range is (preprocess != "none")
    assert NET.clone(normalize=False).input_convention is None


def test_caffe_occlusion_takes_the_same_convention():
    """Incremental occlusion recomputes the first layers on patches: the BGR flip must be part of it."""
    from jaxviz import attribution as A

    net = NET.clone(preprocess="caffe")
    p = weights.random(net, seed=5)
    x = np.random.default_rng(2).uniform(0, 1, (1, 16, 16, 3)).astype(np.float32)
    fast = A.occlusion(net, p, x, 1, window=4, stride=4, method="incremental")
    plain = A.occlusion(net, p, x, 1, window=4, stride=4, method="full")
    np.testing.assert_allclose(fast, plain, rtol=1e-4, atol=1e-5 * float(np.abs(plain).max()))


def test_unknown_preprocess_is_refused():
    with pytest.raises(InputError, match="preprocess: expected one of 'torchvision', 'caffe', 'none'"):
        NET.clone(preprocess="keras").apply(weights.random(NET), jnp.zeros((1, 8, 8, 3)))
    with pytest.raises(InputError, match="preprocess: expected one of"):
        weights.save(weights.random(NET), "x.safetensors", preprocess="BGR")


def test_save_records_arch_and_preprocess(tmp_path):
    path = weights.save(weights.random(NET), tmp_path / "w.safetensors", arch="vgg16", preprocess="caffe")
    assert weights.file_info(path) == {"arch": "vgg16", "preprocess": "caffe", "format": "jaxviz",
                                       "layout": "flax-nhwc"}
    old = weights.save(weights.random(NET), tmp_path / "old.safetensors")
    assert "preprocess" not in weights.file_info(old)
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        weights.file_info(tmp_path / "junk.safetensors")


# --------------------------------------------------------------------------- the command line


def _parsed(*argv):
    from jaxviz import cli
    from jaxviz.commands import _common

    args = cli.build_parser().parse_args([str(a) for a in argv] + ["--out", "o.png"])
    _common.settle_model_args(args)
    return args


def test_cli_takes_arch_and_preprocess_from_the_file(tmp_path, capsys):
    from jaxviz import cli
    from jaxviz.commands import _common

    net = models.vgg16(classifier=False)
    path = weights.save(weights.random(net, seed=0), tmp_path / "keras.safetensors", arch="vgg16",
                        preprocess="caffe")
    args = _parsed("featmaps", "in.png", "--weights", path)
    assert (args.arch, args.preprocess) == ("vgg16", "caffe")
    built, params = _common.model_and_params(args, classifier=False)
    assert built.preprocess == "caffe" and len(built.stages[2]) == 3  # VGG16's
    # the flags win over the record; a file without a record falls back to the defaults
    assert _parsed("featmaps", "in.png", "--weights", path, "--preprocess", "none").preprocess == "none"
    plain = weights.save(weights.random(net, seed=0), tmp_path / "plain.safetensors")
    assert (_parsed("featmaps", "in.png", "--weights", plain).arch,
            _parsed("featmaps", "in.png", "--weights", plain).preprocess) == ("vgg19", "torchvision")
    assert _parsed("featmaps", "in.png", "--weights", "random").preprocess == "torchvision"
    # a convention for a network that has its own: one line, exit 2
    code = cli.main(["featmaps", "in.png", "--arch", "resnet18", "--preprocess", "caffe", "--weights", "random",
                     "--out", str(tmp_path / "o.png")])
    assert code == 2
    assert capsys.readouterr().err.strip() == ("jaxviz featmaps: error: --preprocess: only the VGGs take an input "
                                               "convention; --arch resnet18 applies its own")
    # the resume key tells the conventions apart
    a, b = _parsed("featmaps", "in.png", "--weights", path), _parsed("featmaps", "in.png", "--weights", path,
                                                                    "--preprocess", "torchvision")
    assert _common.weights_key(a) != _common.weights_key(b)


def test_cli_convert_keras_onnx(tumor, tmp_path, capsys, monkeypatch):
    from jaxviz import cli

    monkeypatch.chdir(tmp_path)
    assert cli.main(["convert", str(tumor.onnx_path())]) == 0
    out = tmp_path / "Tumor_classification_vgg16.safetensors"
    text = capsys.readouterr().out
    assert "(vgg16, 14,714,688 parameters, caffe input)" in text and f"--weights {out.name}" in text
    assert weights.file_info(out)["preprocess"] == "caffe" and weights.file_info(out)["arch"] == "vgg16"
    _same(weights.load_file(out), tumor.features())
    assert cli.main(["convert", str(tumor.onnx_path())]) == 0
    assert "exists; kept it" in capsys.readouterr().out
    code = cli.main(["convert", str(tumor.onnx_path()), "--arch", "resnet50", "--out", str(tmp_path / "r.safetensors")])
    assert code == 2 and "--arch: a Keras file holds a VGG" in capsys.readouterr().err
