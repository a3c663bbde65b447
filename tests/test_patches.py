"""Top-activating patches: receptive fields, a constructed folder with a known answer, brute force, bounded state."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz import models, weights
from jaxviz.errors import InputError
from jaxviz.featvis import patches as P


def _uniform(seed, *shape):
    """Test data from NumPy (a jax.random draw of a new shape costs a compilation)."""
    return np.random.default_rng(seed).uniform(size=shape).astype(np.float32)


def _normal(seed, *shape):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)



def test_receptive_fields_by_hand():
    # VGG19's layers at 4 channels each: the field is measured from the structure, not the widths
    net = models.VGG(stages=tuple((4,) * len(s) for s in models.VGG19_STAGES), fc_features=8)
    assert P.receptive_field(net, "relu1_1") == (3, 1, -1)
    assert P.receptive_field(net, "pool1") == (6, 2, -2)  # 5 after two 3x3 convs, +1 by the pool
    assert P.receptive_field(net, "conv2_1") == (10, 2, -4)
    assert P.receptive_field(net, "pool2") == (16, 4, -6)
    assert P.receptive_field(net, "relu4_2") == (84, 8, -38)
    assert P.receptive_field(net, "pool5") == (268, 32, -118)
    assert P.receptive_field(net, "relu1_1").box(2, 3) == (1, 2, 4, 5)
    with pytest.raises(InputError, match=r"^layer: expected a convolutional \(spatial\) tap; 'fc7' sees the whole image"):
        P.receptive_field(net, "fc7")


def _delta_net():
    """Two stages of 2 channels; convolutions pass red (channel 0) and green (channel 1) through unchanged."""
    net = models.VGG(stages=((2,), (2,)), classifier=False, normalize=False)
    k1 = np.zeros((3, 3, 3, 2), np.float32)
    k1[1, 1, 0, 0] = k1[1, 1, 1, 1] = 1.0
    k2 = np.zeros((3, 3, 2, 2), np.float32)
    k2[1, 1, 0, 0] = k2[1, 1, 1, 1] = 1.0
    z = jnp.zeros((2,))
    return net, {"params": {"conv1_1": {"kernel": jnp.asarray(k1), "bias": z},
                            "conv2_1": {"kernel": jnp.asarray(k2), "bias": z}}}


def _folder():
    """7 black 16x16 images; some have one red dot (brightness v at (r, c)), some a green one."""
    dots = [  # name, channel, value, row, col
        ("a", 0, 0.3, 3, 4), ("b", 1, 0.9, 8, 8), ("c", 0, 0.8, 0, 15), ("d", 0, 0.5, 10, 2),
        ("e", 0, 0.8, 7, 7), ("f", 1, 0.2, 1, 1), ("g", 0, 0.95, 15, 0),
    ]
    imgs = np.zeros((7, 16, 16, 3), np.float32)
    for i, (_, ch, v, r, c) in enumerate(dots):
        imgs[i, r, c, ch] = v
        imgs[i, 5, 5, 2] = 0.7  # blue: seen by no channel
    return [d[0] for d in dots], imgs, dots


def _batches(names, imgs, size):
    for s in range(0, len(names), size):
        yield names[s:s + size], imgs[s:s + size]


def test_constructed_folder_gives_the_right_patches_in_the_right_order():
    net, params = _delta_net()
    names, imgs, dots = _folder()
    top = P.top_patches(net, params, _batches(names, imgs, 3), layer="relu2_1", channels=[0, 1], k=4)
    rf = top.field
    assert rf == (8, 2, -3)
    # red channel: g (0.95), then the tie c / e (0.8) in stream order, then d (0.5)
    assert top.names[0] == ["g", "c", "e", "d"]
    np.testing.assert_allclose(top.values[0], [0.95, 0.8, 0.8, 0.5])
    # green channel: b, f, then two black images (value 0; earliest first: a, c)
    assert top.names[1] == ["b", "f", "a", "c"]
    np.testing.assert_allclose(top.values[1], [0.9, 0.2, 0.0, 0.0])
    padded = np.pad(imgs, ((0, 0), (8, 8), (8, 8), (0, 0)), constant_values=0.5)
    for rank, name in enumerate(top.names[0]):
        i = names.index(name)
        _, _, _, r, c = dots[i]
        py, px = r // 2, c // 2  # the 2x2 max pool holding the dot
        np.testing.assert_array_equal(top.position[0, rank], (py, px))
        t, left, b, rr = top.boxes[0, rank]
        assert (t, left, b, rr) == (2 * py - 3, 2 * px - 3, 2 * py + 5, 2 * px + 5)
        np.testing.assert_array_equal(top.patches[0, rank], padded[i, t + 8:b + 8, left + 8:rr + 8])
        assert top.patches[0, rank][r - t, c - left, 0] == dots[i][2]  # the dot is inside its patch


def test_matches_brute_force_on_a_random_vgg():
    net = models.VGG(stages=((8,), (16,)), fc_features=32, num_classes=10, pool_output=(2, 2))
    params = weights.random(net, seed=1)
    imgs = np.asarray(_uniform(0, 11, 24, 24, 3))
    names = [f"img{i}" for i in range(11)]
    chans = [3, 0, 7, 12]
    top = P.top_patches(net, params, _batches(names, imgs, 4), layer="conv2_1", channels=chans, k=5)
    acts = np.asarray(net.apply(params, jnp.asarray(imgs), taps=("conv2_1",))["conv2_1"])[..., chans]
    per_image = acts.reshape(11, -1, 4).max(1)  # (N, C)
    for j in range(4):
        order = np.argsort(-per_image[:, j], kind="stable")[:5]
        assert top.names[j] == [names[i] for i in order]
        np.testing.assert_allclose(top.values[j], per_image[order, j], rtol=1e-5)
        for rank, i in enumerate(order):
            flat = acts[i, ..., j].argmax()
            y, x = divmod(flat, acts.shape[2])
            assert tuple(top.boxes[j, rank][:2]) == (2 * y - 3, 2 * x - 3)  # conv, pool, conv: offset -3


def test_running_state_has_a_fixed_size_and_compiles_once():
    net, params = _delta_net()
    names, imgs, _ = _folder()
    state = P.top_patches_init(net, "relu2_1", 2, k=3)
    shapes = jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), state)
    size0 = None
    for rep in range(4):  # 4 passes over the folder = 28 images, in batches of 4 (+ a padded one)
        for s in range(0, 7, 4):
            chunk = imgs[s:s + 4]
            valid = np.arange(4) < len(chunk)
            chunk = np.concatenate([chunk, np.zeros((4 - len(chunk), 16, 16, 3), np.float32)])
            state = P.top_patches_update(net, params, state, chunk, layer="relu2_1", channels=[0, 1], valid=valid)
            assert jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), state) == shapes
            if size0 is None:
                size0 = P._update._cache_size()
    assert P._update._cache_size() == size0  # one program for every batch
    assert int(state.count) == 28
    np.testing.assert_allclose(state.values[0], [0.95, 0.95, 0.95])  # image g of passes 1, 2, 3
    np.testing.assert_array_equal(state.index[0], [6, 13, 20])


def test_patch_grid_rows_are_channels():
    net, params = _delta_net()
    names, imgs, _ = _folder()
    top = P.top_patches(net, params, _batches(names, imgs, 7), layer="relu2_1", channels=[1, 0], k=3)
    pic = P.patch_grid(top, tile=16, pad=2, labels=False)
    assert pic.shape == (2 * 16 + 3 * 2, 3 * 16 + 4 * 2, 3)  # patches of 8 px enlarged x2
    np.testing.assert_array_equal(pic[2:18:2, 2:18:2], top.patches[0, 0])
    labelled = P.patch_grid(top, tile=16, pad=2)
    assert labelled.shape[0] == pic.shape[0] and labelled.shape[1] > pic.shape[1]
    # values=True writes each patch's activation on its tile
    top32 = top._replace(values=np.array([[12.345, 2.0, 0.5], [7.0, 6.5, 0.001234]], np.float32))
    valued = P.patch_grid(top32, tile=32, pad=2, labels=False, values=True)
    big = lambda t: np.repeat(np.repeat(t, 4, 0), 4, 1)  # noqa: E731  8 px patches enlarged x4
    from jaxviz import viz

    np.testing.assert_allclose(valued[2:34, 2:34], viz.label(big(top.patches[0, 0]), "12.3"), atol=1e-6)
    np.testing.assert_allclose(valued[36:68, 70:102], viz.label(big(top.patches[1, 2]), "0.00123"), atol=1e-6)
    plain = P.patch_grid(top32, tile=32, pad=2, labels=False)
    np.testing.assert_array_equal(plain[2:34, 2:34], big(top.patches[0, 0]))
    assert np.abs(valued - plain).max() > 0.5


def test_errors():
    net, params = _delta_net()
    names, imgs, _ = _folder()
    with pytest.raises(InputError, match=r"^channels: expected indices in \[0, 2\) for relu2_1, got \[0, 5\]"):
        P.top_patches(net, params, _batches(names, imgs, 3), layer="relu2_1", channels=[0, 5])
    with pytest.raises(InputError, match=r"^channels: 2 channels x 9 patches of 8x8 px need 0 MiB \(max_bytes=0 MiB\)"):
        P.top_patches(net, params, _batches(names, imgs, 3), layer="relu2_1", max_bytes=100)
    with pytest.raises(InputError, match=r"^batches: expected at least one image, got none"):
        P.top_patches(net, params, iter([]), layer="relu2_1")
    with pytest.raises(InputError, match=r"^batches: got 2 names for 3 images"):
        P.top_patches(net, params, [(["a", "b"], imgs[:3])], layer="relu2_1")


# --------------------------------------------------------------------------- Zeiler & Fergus projections


def test_projections_equal_captums_neuron_deconvolution():
    """Each unit's projection is Captum's NeuronDeconvolution of that unit (same weights), cropped to its box."""
    torch = pytest.importorskip("torch")
    captum_attr = pytest.importorskip("captum.attr")
    import torch_reference as tr

    stages = ((4,), (8,))
    net = models.VGG(stages=stages, classifier=False)
    ref = tr.make(stages, seed=3, num_classes=10, fc_features=16, pool_output=(2, 2))
    params = weights.from_torchvision(ref.state_dict(), models.VGG(stages=stages, fc_features=16, num_classes=10,
                                                                  pool_output=(2, 2)))
    params = weights.features_only(params)
    x = _uniform(5, 3, 20, 20, 3)
    units = [(0, 2, 3, 4), (1, 5, 0, 9), (2, 7, 9, 9)]  # (image, channel, y, x) at relu2_1 (10 x 10)
    rf = P.receptive_field(net, "relu2_1")
    got = P.projections(net, params, x[[u[0] for u in units]], "relu2_1", [u[1] for u in units],
                        [(u[2], u[3]) for u in units])
    assert got.shape == (3, rf.size, rf.size, 3)

    class Wrapped(torch.nn.Module):  # the reference's own input normalisation, as jaxviz applies it
        def __init__(self):
            super().__init__()
            self.ref = ref

        def forward(self, t):
            return self.ref(t)

    model = Wrapped().eval()
    layer = model.ref.features[4]  # Conv, ReLU, MaxPool, Conv, ReLU: relu2_1
    deconv = captum_attr.NeuronDeconvolution(model, layer)
    for u, (i, c, yy, xx) in enumerate(units):
        xt = tr.to_nchw(x[i:i + 1]).clone().requires_grad_()
        want = tr.to_nhwc(deconv.attribute(xt, neuron_selector=(c, yy, xx)).detach())[0]
        top, left = rf.stride * yy + rf.offset, rf.stride * xx + rf.offset
        box = np.zeros((rf.size, rf.size, 3), np.float32)
        t0, l0 = max(top, 0), max(left, 0)
        t1, l1 = min(top + rf.size, 20), min(left + rf.size, 20)
        box[t0 - top:t1 - top, l0 - left:l1 - left] = want[t0:t1, l0:l1]
        np.testing.assert_allclose(got[u], box, rtol=1e-4, atol=1e-5 * np.abs(box).max())
        assert np.abs(want).sum() == pytest.approx(np.abs(box).sum(), rel=1e-5)  # nothing outside the box


def test_top_patches_projections_follow_their_entries():
    """Streamed in small batches, each (channel, rank) holds its own unit's projection: entries that move down
    the ranking or leave it take theirs along."""
    net = models.VGG(stages=((4,), (8,)), classifier=False)
    params = weights.random(net, seed=2)
    x = _uniform(6, 10, 24, 24, 3)
    top = P.top_patches(net, params, _batches([f"i{n}" for n in range(10)], x, 3), layer="relu2_1",
                        channels=[1, 6], k=3, projection="deconvnet", batch_size=3)
    assert top.projections.shape == top.patches.shape
    for c in range(2):
        for j in range(3):
            i = int(top.index[c, j])
            want = P.projections(net, params, x[i:i + 1], "relu2_1", [top.channels[c]], top.position[c, j][None])[0]
            np.testing.assert_allclose(top.projections[c, j], want, rtol=1e-5, atol=1e-7)
            assert np.abs(want).max() > 0
    plain = P.top_patches(net, params, _batches([f"i{n}" for n in range(10)], x, 3), layer="relu2_1",
                          channels=[1, 6], k=3)
    assert plain.projections is None
    np.testing.assert_array_equal(plain.index, top.index)
    # drawn as Zeiler & Fergus did: k projections, then k patches, per row
    pic = P.patch_grid(top, tile=8, pad=1, labels=False)
    assert pic.shape == (2 * 8 + 3, 6 * 8 + 7, 3)
    from jaxviz import viz

    np.testing.assert_allclose(pic[1:9, 1:9], viz.gradient_image(top.projections[0, 0], size=8), atol=1e-6)
    with pytest.raises(InputError, match="projections: top has none"):
        P.patch_grid(plain, projections=True)
    with pytest.raises(InputError, match="projection: expected None or 'deconvnet', got 'guided'"):
        P.top_patches(net, params, x, layer="relu2_1", projection="guided")
