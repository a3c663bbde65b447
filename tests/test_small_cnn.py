"""The small CNN: the VGG tap protocol, hand-derived head, seams, dropout, BatchNorm folding, validation."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz import attribution
from jaxviz.errors import InputError
from jaxviz.models.small_cnn import SmallCNN, fold_batch_norm, small_cnn, small_cnn_layers

H = 16


@pytest.fixture(scope="module")
def net_params():
    net = small_cnn(num_classes=5, widths=(4, 6, 8))
    params = jax.jit(net.init)(jax.random.key(0), jnp.zeros((1, H, H, 3)))
    x = jax.random.uniform(jax.random.key(1), (3, H, H, 3))
    return net, params, x


def _manual(params, x, widths=(4, 6, 8)):
    """The network written out by hand with lax primitives."""
    p = params["params"]
    a = (x - 0.5) / 0.25
    taps = {}
    for b in range(1, len(widths) + 1):
        a = jax.lax.conv_general_dilated(
            a, p[f"conv{b}"]["kernel"], (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision="highest",
        ) + p[f"conv{b}"]["bias"]
        taps[f"conv{b}"] = a
        a = jnp.maximum(a, 0)
        taps[f"relu{b}"] = a
        if b < len(widths):
            a = jax.lax.reduce_window(a, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
            taps[f"pool{b}"] = a
    taps["gap"] = a.mean((1, 2))
    taps["fc"] = jnp.dot(taps["gap"], p["fc"]["kernel"], precision="highest") + p["fc"]["bias"]
    return taps


def test_layers_and_cam_layers(net_params):
    net, params, _ = net_params
    assert net.layers == ("conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "conv3", "relu3", "gap", "fc")
    assert small_cnn_layers(2) == ("conv1", "relu1", "pool1", "conv2", "relu2", "gap", "fc")
    assert net.cam_layers == ("relu3", "fc")
    assert net.cam_layers[1] in params["params"]
    assert net.min_size == 4
    assert net.resolve("logits") == "fc"
    assert net.resolve("relu2") == "relu2"
    with pytest.raises(InputError, match=r"^taps: unknown layer 'relu9'; this network has conv1, relu1"):
        net.resolve("relu9")
    with pytest.raises(InputError, match=r"^start: expected layer names \(str\), got 3"):
        net.resolve(3, "start")


def test_every_tap_matches_hand_written_network(net_params):
    net, params, x = net_params
    with jax.default_matmul_precision("highest"):
        got = net.apply(params, x, taps=net.layers)
        logits = net.apply(params, x)
    want = _manual(params, x)
    for name in net.layers:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(logits, want["fc"], rtol=1e-5, atol=1e-5)
    assert logits.shape == (3, 5)
    assert got["relu3"].shape == (3, H // 4, H // 4, 8)


def test_cam_identity_logits_are_mean_of_class_map(net_params):
    """GAP + linear head: logit_c = mean_xy (relu3 @ W[:, c]) + b_c, which is what makes CAM exact."""
    net, params, x = net_params
    with jax.default_matmul_precision("highest"):
        feats = net.apply(params, x, taps="relu3")["relu3"]
        logits = net.apply(params, x)
    w, b = params["params"]["fc"]["kernel"], params["params"]["fc"]["bias"]
    class_maps = jnp.einsum("nhwk,kc->nhwc", feats, w, precision="highest")
    np.testing.assert_allclose(class_maps.mean((1, 2)) + b, logits, rtol=1e-5, atol=1e-5)
    # jaxviz.attribution.cam on this net is that class map
    cam = attribution.cam(net, params, x, 2)
    np.testing.assert_allclose(cam, class_maps[..., 2], rtol=1e-4, atol=1e-5)


def test_taps_stop_at_deepest_and_aliases(net_params):
    net, params, x = net_params
    out = net.apply(params, x, taps=("relu1", "logits"))
    assert set(out) == {"relu1", "logits"}
    # a net stopping at pool1 needs no parameters past conv1: apply with only conv1's params works
    only_conv1 = {"params": {"conv1": params["params"]["conv1"]}}
    shallow = net.apply(only_conv1, x, taps="pool1")["pool1"]
    np.testing.assert_allclose(shallow, net.apply(params, x, taps="pool1")["pool1"])
    with pytest.raises(InputError, match=r"^taps: expected at least one layer name, got an empty sequence"):
        net.apply(params, x, taps=())


def test_start_enters_after_a_tap(net_params):
    net, params, x = net_params
    a = net.apply(params, x, taps="pool2")["pool2"]
    np.testing.assert_allclose(net.apply(params, a, start="pool2"), net.apply(params, x), rtol=1e-6, atol=1e-6)
    g = net.apply(params, x, taps="relu3")["relu3"]
    got = net.apply(params, g, start="relu3", taps=("gap", "logits"))
    np.testing.assert_allclose(got["gap"], g.mean((1, 2)), rtol=1e-6)
    with pytest.raises(InputError, match=r"^taps: every tap must come after start='relu3'"):
        net.apply(params, g, start="relu3", taps="conv3")["conv3"]
    with pytest.raises(InputError, match=r"^start: unknown layer 'conv7'"):
        net.apply(params, g, start="conv7")


def test_relu_seam(net_params):
    net, params, x = net_params
    # every ReLU replaced by zero: the features are zero, the logits are the head's bias
    out = net.apply(params, x, relu=jnp.zeros_like)
    np.testing.assert_allclose(out, jnp.broadcast_to(params["params"]["fc"]["bias"], (3, 5)), atol=1e-7)
    # the module field does the same
    z = SmallCNN(num_classes=5, widths=(4, 6, 8), relu=jnp.zeros_like)
    np.testing.assert_allclose(z.apply(params, x), out)
    # identity "ReLU": relu1 is conv1 unchanged (negative values kept)
    lin = net.apply(params, x, taps="relu1", relu=lambda v: v)["relu1"]
    conv1 = net.apply(params, x, taps="conv1")["conv1"]
    np.testing.assert_allclose(lin, conv1)
    assert (conv1 < 0).any()


def test_dropout_only_in_training(net_params):
    net, params, x = net_params
    eval1 = net.apply(params, x)
    np.testing.assert_array_equal(eval1, net.apply(params, x, train=False))
    d1 = net.apply(params, x, train=True, rngs={"dropout": jax.random.key(0)})
    d2 = net.apply(params, x, train=True, rngs={"dropout": jax.random.key(1)})
    assert not np.allclose(d1, eval1) and not np.allclose(d1, d2)
    # with an identity head the logits are the dropped-out features: each 0 or feats / (1 - p)
    eye = small_cnn(num_classes=8, widths=(4, 6, 8))
    p8 = {"params": dict(params["params"], fc={"kernel": jnp.eye(8), "bias": jnp.zeros(8)})}
    feats = np.asarray(eye.apply(p8, x, taps="gap")["gap"])
    dropped = np.asarray(eye.apply(p8, x, train=True, rngs={"dropout": jax.random.key(3)}))
    kept = dropped != 0
    np.testing.assert_allclose(dropped[kept], feats[kept] / 0.75, rtol=1e-5)
    live = feats > 0
    assert live.sum() >= 12 and 0.4 < kept[live].mean() < 0.95
    with pytest.raises(InputError, match=r"^train: dropout needs a PRNG key"):  # no "dropout" rng given
        net.apply(params, x, train=True)
    # no dropout at all with rate 0
    net0 = small_cnn(num_classes=5, widths=(4, 6, 8), dropout=0.0)
    np.testing.assert_allclose(net0.apply(params, x, train=True), eval1, rtol=1e-6)


def test_input_validation(net_params):
    net, params, x = net_params
    with pytest.raises(InputError, match=r"^images: expected shape \(N, H, W, 3\), got \(16, 16, 3\) \(add a batch axis"):
        net.apply(params, x[0])
    with pytest.raises(InputError, match=r"^images: expected a floating dtype with values in \[0, 1\], got uint8"):
        net.apply(params, np.zeros((1, H, H, 3), np.uint8))
    with pytest.raises(InputError, match=r"^images: expected height and width >= 4, got 2x2"):
        net.apply(params, jnp.zeros((1, 2, 2, 3)))
    with pytest.raises(InputError, match=r"^num_classes: expected a positive int, got 0"):
        small_cnn(num_classes=0)
    with pytest.raises(InputError, match=r"^widths: expected a non-empty sequence of positive ints, got \(\)"):
        small_cnn(widths=())
    with pytest.raises(InputError, match=r"^widths: expected a positive int, got -1"):
        small_cnn(widths=(8, -1))
    with pytest.raises(InputError, match=r"^dropout: expected a rate in \[0, 1\), got 1.0"):
        small_cnn(dropout=1.0)


def test_fold_batch_norm_is_exact():
    net = small_cnn(num_classes=4, widths=(4, 6, 8), batch_norm=True)
    x = jax.random.uniform(jax.random.key(2), (4, H, H, 3))
    variables = jax.jit(net.init)(jax.random.key(0), x)
    # a few training-mode passes give non-trivial running statistics; random scales/shifts for the affine part
    train_pass = jax.jit(lambda v, x, k: net.apply(v, x, train=True, rngs={"dropout": k}, mutable=["batch_stats"])[1])
    for i in range(3):
        variables = {"params": variables["params"], **train_pass(variables, x * (i + 1) / 3, jax.random.key(i))}
    rng = np.random.default_rng(0)
    p = {k: ({n: v + 0.3 * rng.standard_normal(v.shape).astype(np.float32) for n, v in leaves.items()}
             if k.startswith("bn") else leaves) for k, leaves in variables["params"].items()}
    variables = {"params": p, "batch_stats": variables["batch_stats"]}
    plain, folded = fold_batch_norm(net, variables)
    assert not plain.batch_norm and set(folded["params"]) == {"conv1", "conv2", "conv3", "fc"}
    with jax.default_matmul_precision("highest"):
        want = jax.jit(lambda v, x: net.apply(v, x, taps=("conv2", "relu3", "logits")))(variables, x)
        got = jax.jit(lambda v, x: plain.apply(v, x, taps=("conv2", "relu3", "logits")))(folded, x)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-4, err_msg=k)
    with pytest.raises(InputError, match=r"^net: expected a SmallCNN with batch_norm=True"):
        fold_batch_norm(plain, variables)
    with pytest.raises(InputError, match=r"^variables: expected 'params' and 'batch_stats', got params"):
        fold_batch_norm(net, {"params": variables["params"]})


def test_jit_equals_eager_and_no_retrace(net_params):
    net, params, x = net_params

    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(p, v):
        return net.apply(p, v, taps=("relu2", "logits"))

    eager = net.apply(params, x, taps=("relu2", "logits"))
    for _ in range(2):
        got = f(params, x)
    for k in eager:
        np.testing.assert_allclose(got[k], eager[k], rtol=1e-5, atol=1e-6)
    # vmap over single images equals the batch
    one = jax.vmap(lambda v: net.apply(params, v[None])[0])(x)
    np.testing.assert_allclose(one, eager["logits"], rtol=1e-5, atol=1e-6)


def test_grad_cam_on_gap_head_is_scaled_cam(net_params):
    """For GAP + linear heads, Grad-CAM's channel weights are W[:, c] / (h w): Grad-CAM = ReLU(CAM) / (h w)."""
    net, params, x = net_params
    with jax.default_matmul_precision("highest"):
        cam = attribution.cam(net, params, x, 1)
        gc = attribution.grad_cam(net, params, x, 1, relu=False)
    hw = (H // 4) ** 2
    np.testing.assert_allclose(gc * hw, cam, rtol=1e-4, atol=1e-5)


def test_is_a_flax_module():
    assert isinstance(small_cnn(), nn.Module)
