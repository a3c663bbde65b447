"""The procedural dataset and the training loop (mechanics on tiny data; the full run is in test_meaning)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxviz import datasets, train, weights
from jaxviz.errors import ChecksumError, InputError
from jaxviz.models.small_cnn import small_cnn

TINY = train.Config(num_train=64, num_test=16, widths=(4, 8, 8), epochs=1, batch_size=16)


# ----------------------------------------------------------------------------- dataset


def test_shapes_contract_and_determinism():
    d = datasets.shapes(40, size=24, seed=3)
    assert d.images.shape == (40, 24, 24, 3) and d.images.dtype == np.float32
    assert d.labels.shape == (40,) and d.labels.dtype == np.int32
    assert d.masks.shape == (40, 24, 24) and d.masks.dtype == bool
    assert d.images.min() >= 0 and d.images.max() <= 1
    assert np.bincount(d.labels).tolist() == [10, 10, 10, 10]  # balanced
    again = datasets.shapes(40, size=24, seed=3)
    np.testing.assert_array_equal(again.images, d.images)
    np.testing.assert_array_equal(again.masks, d.masks)
    other = datasets.shapes(40, size=24, seed=4)
    assert not np.array_equal(other.images, d.images)
    sub = d[5:9]
    assert isinstance(sub, datasets.Shapes) and len(sub) == 4 and sub.classes == datasets.CLASSES
    assert len(d[3]) == 1 and d[3].labels[0] == d.labels[3]


def test_shapes_masks_are_the_objects():
    d = datasets.shapes(200, size=32, seed=0)
    area = d.masks.mean((1, 2))
    assert area.min() > 0.03 and area.max() < 0.5
    # the whole shape is inside the picture: no mask pixel on the border
    border = d.masks[:, 0].any(1) | d.masks[:, -1].any(1) | d.masks[:, :, 0].any(1) | d.masks[:, :, -1].any(1)
    assert not border.any()
    # the object is one flat colour (plus shading and grain), different from the background around it
    for img, m in zip(d.images[:20], d.masks[:20]):
        inside, outside = img[m], img[~m]
        assert inside.std(0).max() < 0.12
        assert np.abs(inside.mean(0) - outside.mean(0)).max() > 0.2
    # circles fill about pi/4 of their bounding box, squares about all of it (rotation up to 30 degrees)
    def fill(i):
        ys, xs = np.nonzero(d.masks[i])
        return d.masks[i].sum() / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1))

    circles = [fill(i) for i in np.flatnonzero(d.labels == 0)[:10]]
    assert 0.65 < np.mean(circles) < 0.85
    crosses = [fill(i) for i in np.flatnonzero(d.labels == 3)[:10]]
    assert np.mean(crosses) < 0.6


def test_shapes_class_subset_and_errors():
    d = datasets.shapes(24, size=32, classes=("cross", "circle"))
    assert d.classes == ("cross", "circle") and set(d.labels.tolist()) == {0, 1}
    # label i draws classes[i]: how much of its bounding box a mask fills tells the shapes apart. A disc fills
    # pi/4 = 0.785 of its box (pixelised: within 0.06); a cross, its four corners empty, well under that
    # (rotated squares fill 0.6 to 1 and triangles about half, so a wrong class shows)
    fill = np.array([m.sum() / (np.ptp(np.nonzero(m)[0]) + 1) / (np.ptp(np.nonzero(m)[1]) + 1) for m in d.masks])
    assert np.all(fill[d.labels == 0] < 0.6), fill[d.labels == 0]
    np.testing.assert_allclose(fill[d.labels == 1], np.pi / 4, atol=0.06)
    with pytest.raises(InputError, match=r"^n: expected a positive int, got 0"):
        datasets.shapes(0)
    with pytest.raises(InputError, match=r"^size: expected at least 8 pixels, got 4"):
        datasets.shapes(4, size=4)
    with pytest.raises(InputError, match=r"^classes: unknown class 'star'; expected names from circle, square"):
        datasets.shapes(4, classes=("circle", "star"))
    with pytest.raises(InputError, match=r"^min_radius, max_radius: expected 0 < min_radius <= max_radius <= 0.42"):
        datasets.shapes(4, min_radius=0.3, max_radius=0.2)


# ----------------------------------------------------------------------------- fit


def _data():
    return datasets.shapes(64, size=16, seed=0)


def test_fit_is_sgd_with_momentum_step_by_step():
    """Two steps of fit equal two hand-written Nesterov-SGD steps on the same batches."""
    d = _data()
    net = small_cnn(num_classes=4, widths=(4, 4, 4), dropout=0.0)
    init = jax.jit(net.init)(jax.random.key(5), d.images[:1])
    got, losses = train.fit(net, d.images[:32], d.labels[:32], epochs=1, batch_size=16, learning_rate=0.1,
                            warmup=0.0, seed=1, params=init, progress=False)
    # replay: same shuffle (numpy, seed 1), cosine lr over 2 steps: 0.1 then 0.05; momentum 0.9, nesterov
    order = np.random.default_rng(1).permutation(32)[:32].reshape(2, 16)
    w, m = init["params"], jax.tree.map(jnp.zeros_like, init["params"])

    def loss(w, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(net.apply({"params": w}, x), y).mean()

    grad = jax.jit(jax.value_and_grad(loss))
    step_losses = []
    for i, lr in enumerate((0.1, 0.05)):
        val, g = grad(w, d.images[order[i]], d.labels[order[i]])
        step_losses.append(float(val))
        m = jax.tree.map(lambda mi, gi: 0.9 * mi + gi, m, g)
        w = jax.tree.map(lambda wi, mi, gi: wi - lr * (gi + 0.9 * mi), w, m, g)
    for a, b in zip(jax.tree.leaves(got["params"]), jax.tree.leaves(w)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(losses, [np.mean(step_losses)], rtol=1e-5)


def test_fit_errors():
    d = _data()
    net = small_cnn(num_classes=4, widths=(4,))
    with pytest.raises(InputError, match=r"^batch_size: expected at most the number of images \(64\), got 65"):
        train.fit(net, d.images, d.labels, batch_size=65)
    with pytest.raises(InputError, match=r"^labels: expected 64 integer class indices of shape \(64,\), got shape \(3,\)"):
        train.fit(net, d.images, d.labels[:3])
    with pytest.raises(InputError, match=r"^epochs: expected a positive int, got 0"):
        train.fit(net, d.images, d.labels, epochs=0)
    with pytest.raises(InputError, match=r"^warmup: expected a fraction in \[0, 1\), got 1.5"):
        train.fit(net, d.images, d.labels, warmup=1.5)
    with pytest.raises(InputError, match=r"^images: expected shape \(N, H, W, 3\)"):
        train.fit(net, d.images[0], d.labels)


def test_accuracy_and_predict():
    d = _data()
    net = small_cnn(num_classes=4, widths=(4,))
    params = jax.jit(net.init)(jax.random.key(0), d.images[:1])
    logits = train.predict(net, params, d.images, batch_size=24)  # 24 + 24 + 16
    np.testing.assert_allclose(logits, net.apply(params, d.images), rtol=1e-5, atol=1e-6)
    acc = train.accuracy(net, params, d.images, d.labels)
    assert acc == pytest.approx(float(np.mean(logits.argmax(-1) == d.labels)))


# ----------------------------------------------------------------------------- cached runs


def test_cache_roundtrip_key_corruption_and_determinism(tmp_path, monkeypatch):
    run = train.small_cnn_run(TINY, cache=tmp_path, progress=False)
    assert not run.cached and run.path == train.cache_path(TINY, tmp_path) and run.path.exists()
    assert run.path.with_name(run.path.name + ".sha256").exists()
    meta = json.loads(run.path.with_suffix(".json").read_text())
    assert meta["config"]["num_train"] == 64 and meta["accuracy"] == run.accuracy
    assert set(run.params["params"]) == {"conv1", "conv2", "conv3", "fc"}  # BatchNorm folded away
    assert run.accuracy == pytest.approx(train.accuracy(run.net, run.params, run.test.images, run.test.labels))
    assert len(run.history) == 1 and run.seconds > 0

    real_fit = train.fit

    def no_training(*a, **k):
        raise AssertionError("trained again")

    monkeypatch.setattr(train, "fit", no_training)
    again = train.small_cnn_run(TINY, cache=tmp_path)
    assert again.cached and again.accuracy == run.accuracy and again.history == run.history
    for a, b in zip(jax.tree.leaves(again.params), jax.tree.leaves(run.params)):
        np.testing.assert_array_equal(a, b)
    # another configuration is another file
    other = train.Config(**{**TINY.__dict__, "seed": 1})
    assert other.key() != TINY.key() and train.cache_path(other, tmp_path) != run.path
    with pytest.raises(AssertionError, match="trained again"):
        train.small_cnn_run(other, cache=tmp_path)
    # the environment variable moves the default cache
    monkeypatch.setenv("JAXVIZ_CACHE", str(tmp_path))
    assert train.cache_path(TINY) == run.path

    # a corrupted file is refused; retrain=True trains again, with the same result (deterministic)
    data = bytearray(run.path.read_bytes())
    data[-1] ^= 0xFF
    run.path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="checksum mismatch"):
        train.small_cnn_run(TINY, cache=tmp_path)
    monkeypatch.setattr(train, "fit", real_fit)
    fresh = train.small_cnn_run(TINY, cache=tmp_path, retrain=True, progress=False)
    assert not fresh.cached and fresh.history == run.history
    for a, b in zip(jax.tree.leaves(fresh.params), jax.tree.leaves(run.params)):
        np.testing.assert_array_equal(a, b)
    weights.load_file(fresh.path)  # sidecar matches again
    with pytest.raises(InputError, match=r"^config: expected a jaxviz.train.Config, got dict"):
        train.small_cnn_run({"size": 32})
