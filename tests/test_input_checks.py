"""Mistakes users make with the Python API get a typed error naming the argument (found by an API walk-through)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz import attribution as A
from jaxviz import dream, models, style, weights
from jaxviz.errors import InputError

NET = models.VGG(stages=((8,), (16,)), fc_features=32, num_classes=10, pool_output=(2, 2))


@pytest.fixture(scope="module")
def params():
    return weights.random(NET, seed=0)


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)


def test_pictures_outside_0_1_are_refused_where_the_model_normalises(params, x):
    with pytest.raises(InputError, match=r"^images: expected values in \[0, 1\], got values in \[.*, 25[0-9.]+\] "
                                         r"\(a 0-255 picture\? divide by 255\)$"):
        A.saliency(NET, params, x * 255, 1)
    mean, std = np.asarray(NET.mean, np.float32), np.asarray(NET.std, np.float32)
    normalised = (x - mean) / std
    with pytest.raises(InputError, match=r"already normalised\? the model applies the ImageNet mean/std itself"):
        A.integrated_gradients(NET, params, normalised, 1, steps=2)
    with pytest.raises(InputError, match="^images: expected values in"):
        NET.apply(params, x * 255)  # eager model calls too
    with pytest.raises(InputError, match="^images: expected values in"):
        dream.dream(NET, params, x * 255, layers="relu2_1", key=jax.random.key(0), steps=1, octaves=1)
    with pytest.raises(InputError, match="^content: expected values in"):
        style.init(NET, params, x[:1] * 255, x[:1], preset="course", content_layers=("relu2_1",),
                   style_layers=("relu1_1",))
    # small overshoots (resampling, noise) pass; so does anything for a model that does not normalise
    ok = np.clip(x, 0, 1) * 1.2 - 0.1
    assert A.saliency(NET, params, ok, 1).shape == x.shape
    raw = NET.clone(normalize=False)
    # (the same network: the gradient w.r.t. the normalised input is std times the one w.r.t. the picture)
    want = np.asarray(A.saliency(NET, params, x, 1)) * std
    np.testing.assert_allclose(A.saliency(raw, params, normalised, 1), want, rtol=1e-4, atol=1e-5 * want.max())
    # under jit the values are unknown: no check, no error (the model's own call is traced)
    assert jax.jit(lambda p, v: NET.apply(p, v))(params, x * 255).shape == (2, 10)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_infinite_pixels_are_refused_where_the_model_normalises(params, x, bad):
    y = x.copy()
    y[1, 5, 7, 2] = bad
    msg = r"^{}: expected finite values in \[0, 1\], got NaN or infinite pixels$"
    with pytest.raises(InputError, match=msg.format("images")):
        A.saliency(NET, params, y, 1)
    with pytest.raises(InputError, match=msg.format("images")):
        dream.dream(NET, params, y, layers="relu2_1", key=jax.random.key(0), steps=1, octaves=1)
    with pytest.raises(InputError, match=msg.format("content")):
        style.init(NET, params, y[1:], x[:1], preset="course", content_layers=("relu2_1",), style_layers=("relu1_1",))


def test_params_that_do_not_fit_the_model_say_what_to_do(params, x):
    from jaxviz.errors import ArchitectureError
    from jaxviz.models.small_cnn import small_cnn

    with pytest.raises(ArchitectureError, match=r"^params: expected flax variables \{'params': \{\.\.\.\}\} .* got a "
                                                r"mapping with keys conv1_1, conv2_1, fc6, fc7, \.\.\.; pass "):
        A.saliency(NET, params["params"], x, 1)
    features = weights.features_only(params)
    with pytest.raises(ArchitectureError, match="^params: no parameters for fc6 of this VGG; features-only weights"):
        NET.apply(features, x)
    assert NET.apply(features, x, taps=("relu2_1",))["relu2_1"].shape == (2, 16, 16, 16)  # not needed: fine
    other = weights.random(models.VGG(stages=((4,), (16,)), fc_features=32, num_classes=10, pool_output=(2, 2)))
    with pytest.raises(ArchitectureError, match=r"^params: conv1_1 has shape \(3, 3, 3, 4\) where this VGG expects "
                                                r"\(3, 3, 3, 8\): weights of another"):
        jax.jit(NET.apply)(other, x)  # under jit too: shapes are known when tracing
    with pytest.raises(ArchitectureError, match="^params: the 'params' collection holds nothing for conv1_1 of"):
        NET.apply({"params": {}}, x)
    bn = small_cnn(4, batch_norm=True)
    v = bn.init(jax.random.key(0), x)
    with pytest.raises(ArchitectureError, match="^params: no 'batch_stats' collection for bn1 of this SmallCNN; "
                                                "got collections params$"):
        bn.apply({"params": v["params"]}, x)


def test_an_int_seed_is_a_key_and_other_keys_are_refused(params, x):
    from jaxviz.featvis import render as R

    np.testing.assert_array_equal(A.smoothgrad(NET, params, x, 1, samples=2, key=7),
                                  A.smoothgrad(NET, params, x, 1, samples=2, key=jax.random.key(7)))
    np.testing.assert_array_equal(A.smoothgrad(NET, params, x, 1, samples=2, key=jax.random.PRNGKey(7)),
                                  A.smoothgrad(NET, params, x, 1, samples=2, key=jax.random.key(7)))
    kw = dict(layers="relu2_1", steps=2, octaves=1)
    np.testing.assert_array_equal(dream.dream(NET, params, x, key=3, **kw),
                                  dream.dream(NET, params, x, key=jax.random.key(3), **kw))
    kw = dict(size=32, steps=2)
    np.testing.assert_array_equal(R.render(NET, params, R.channel("relu2_1", 1), key=5, **kw),
                                  R.render(NET, params, R.channel("relu2_1", 1), key=jax.random.key(5), **kw))
    for bad, shown in (("0", "str"), (-1, "-1"), (1.5, "float"), (np.zeros(3, np.float32), "ndarray of dtype float32")):
        with pytest.raises(InputError, match=f"^key: expected a PRNG key .*or .*int seed, got {shown}"):
            A.smoothgrad(NET, params, x, 1, samples=2, key=bad)
    with pytest.raises(InputError, match="^key: "):
        A.metrics.infidelity(NET, params, x, 1, np.zeros_like(x), key="k")


def test_render_objectives_out_of_range_are_refused_not_rendered_grey(params):
    from jaxviz.featvis import render as R

    kw = dict(key=0, size=32, steps=1)
    with pytest.raises(InputError, match=r"^objective: channel\(relu2_1, 99\): relu2_1 has 16 channels, got channel 99"):
        R.render(NET, params, R.channel("relu2_1", 99), **kw)
    with pytest.raises(InputError, match=r"^objective: class_logit\(10\): logits has 10 channels, got channel 10"):
        R.render(NET, params, R.class_logit(10), **kw)
    with pytest.raises(InputError, match=r"^objective: .*relu1_1 has 8 channels, got channel 8"):
        R.render(NET, params, R.channel("relu2_1", 3) + 0.5 * R.neuron("relu1_1", 8), **kw)  # inside a sum
    with pytest.raises(InputError, match=r"^objective: channel\(relu2_1, 16\): relu2_1 has 16 channels"):
        R.render_each(NET, params, lambda c: R.channel("relu2_1", c), jnp.asarray([3, 16]), **kw)
    with pytest.raises(InputError, match=r"^y, x: relu2_1 is (\d+)x\1 for this image size, got \(100, 100\)"):
        R.render(NET, params, R.neuron("relu2_1", 3, y=100, x=100), **kw)
    with pytest.raises(InputError, match="^batch: the objective scores image 5 of the batch, but 1 image is rendered"):
        R.render(NET, params, R.channel("relu2_1", 3, batch=5), **kw)
    with pytest.raises(InputError, match=r"^vector: expected shape \(16,\) for relu2_1, got \(5,\)"):
        R.render(NET, params, R.direction("relu2_1", jnp.ones(5)), **kw)
    # the last valid ones render, and their objective rises
    img, hist = R.render(NET, params, R.channel("relu2_1", 15), return_history=True, key=0, size=32, steps=8)
    assert np.isfinite(np.asarray(hist)).all() and hist[-1] > hist[0]


def test_an_image_array_streams_like_a_folder(params, x):
    from jaxviz import embed
    from jaxviz.featvis import patches as P

    pairs = [([0, 1], x)]
    got, want = embed.features(NET, params, x, layer="relu2_1", batch_size=1), embed.features(NET, params, pairs,
                                                                                              layer="relu2_1")
    assert got.names == [0, 1] and want.names == [0, 1]
    np.testing.assert_allclose(got.vectors, want.vectors, rtol=1e-6, atol=1e-7)
    a = P.top_patches(NET, params, x, layer="relu2_1", channels=[1, 3], k=2)
    b = P.top_patches(NET, params, pairs, layer="relu2_1", channels=[1, 3], k=2)
    np.testing.assert_array_equal(a.values, b.values)
    assert a.names == b.names
    with pytest.raises(InputError, match=r"^batches: expected a folder, an \(N, H, W, 3\) array or \(names, images\) "
                                         r"pairs; got an array of shape \(32, 32, 3\)"):
        embed.features(NET, params, x[0], layer="relu2_1")
    with pytest.raises(InputError, match=r"^batches: expected \(names, images\) pairs, got an item of type ndarray"):
        P.top_patches(NET, params, [x], layer="relu2_1", channels=[1])
    from jaxviz.image import ImageNotFoundError

    with pytest.raises(ImageNotFoundError, match="no such directory"):
        embed.features(NET, params, "/no/such/folder", layer="relu2_1")


def test_training_labels_must_be_classes_of_the_network():
    from jaxviz import datasets, train
    from jaxviz.models.small_cnn import small_cnn

    d = datasets.shapes(8, size=16, seed=0)
    net = small_cnn(num_classes=4, widths=(4, 4))
    with pytest.raises(InputError, match=r"^labels: expected class indices in \[0, 4\) for this network, got values "
                                         r"in \[1[0-3], 1[0-3]\]"):
        train.fit(net, d.images, d.labels + 10, epochs=1, batch_size=4)
    params = net.init(jax.random.key(0), d.images[:1])
    with pytest.raises(InputError, match=r"^labels: expected class indices in \[0, 4\)"):
        train.accuracy(net, params, d.images, d.labels - 5)


def test_metric_arguments_are_checked(params, x):
    from jaxviz.attribution import metrics

    attr = np.asarray(A.saliency(NET, params, x, 1, abs=False))
    with pytest.raises(InputError, match=r"^stdev: expected a positive number, got -1\.0$"):
        metrics.infidelity(NET, params, x, 1, attr, stdev=-1.0)
    assert np.isfinite(metrics.infidelity(NET, params, x, 1, attr, stdev=jnp.float32(0.05), samples=2)).all()
    with pytest.raises(InputError, match=r"^radius: expected a positive number, got -1\.0$"):
        metrics.max_sensitivity(NET, params, x, 1, method="saliency", radius=-1.0, samples=2)
    with pytest.raises(InputError, match=r"^options: integrated_gradients has no option 'stepz'; expected some of "
                                         r"baselines, steps, .*batch_size"):
        metrics.max_sensitivity(NET, params, x, 1, method="integrated_gradients", options={"stepz": 3}, samples=2)
    with pytest.raises(InputError, match=r"^options: integrated_gradients has no option 'step'"):
        A.smoothgrad(NET, params, x, 1, method="integrated_gradients", options={"step": 4}, samples=2)
    # one layer by name, not its letters
    one = metrics.model_randomization(NET, params, x, 1, method="saliency", layers="fc8")
    two = metrics.model_randomization(NET, params, x, 1, method="saliency", layers=["fc8"])
    assert one.layers == two.layers == ("fc8",)
    np.testing.assert_array_equal(one.spearman, two.spearman)


def test_weights_helpers_take_either_params_form_and_refuse_the_wrong_file_name(params, tmp_path):
    from jaxviz.errors import ArchitectureError

    a = weights.save(params, tmp_path / "a.safetensors")
    b = weights.save(params["params"], tmp_path / "b.safetensors")  # the inner mapping, as documented
    la, lb = weights.load_file(a), weights.load_file(b)
    assert jax.tree.all(jax.tree.map(np.array_equal, la, lb)) and set(la["params"]) == set(params["params"])
    assert weights.features_only(params["params"]) == weights.features_only(params)
    with pytest.raises(InputError, match=r"^path: expected a file name ending in \.safetensors .*got '.*y\.pth'"):
        weights.save(params, tmp_path / "y.pth")
    assert not (tmp_path / "y.pth").exists()
    with pytest.raises(ArchitectureError, match="^params: no conv1_2 for vgg19; pass arch= the network"):
        weights.to_torchvision(params)
    assert set(weights.to_torchvision(params, NET)) >= {"features.0.weight", "classifier.6.bias"}
    for bad in ("0", -1, 1.0, jax.random.key(0)):
        with pytest.raises(InputError, match="^seed: expected a non-negative int, got "):
            weights.random(NET, seed=bad)


def test_viz_refuses_shapes_it_would_misread(params, x):
    from jaxviz import viz

    attr = np.asarray(A.saliency(NET, params, x, 1))
    with pytest.raises(InputError, match=r"^attr: expected \(\.\.\., H, W, C\) with a channel axis, got shape \(32, 32\)"):
        viz.reduce_channels(attr[0, ..., 0])
    with pytest.raises(InputError, match=r"^attr: expected \(H, W, C\) or \(H, W\), got \(3, 32, 32\), which looks "
                                         r"channels-first"):
        viz.overlay(x[0], attr[0].transpose(2, 0, 1))
    # a batch of one is taken for the image and the map alike
    np.testing.assert_array_equal(viz.overlay(x[:1], attr[:1]), viz.overlay(x[0], attr[0]))
    with pytest.raises(InputError, match=r"^images: expected a sequence of tiles .* got one picture of shape "
                                         r"\(32, 32, 3\) \(wrap it in a list\)"):
        viz.grid(x[0])
    with pytest.raises(InputError, match="^ncols: expected a positive int, got 0"):
        viz.grid(list(x), ncols=0)
    assert viz.grid(list(x), ncols=1, pad=0).shape == (64, 32, 3)


def test_saliency_abs_is_a_bool(params, x):
    with pytest.raises(InputError, match="^abs: expected True or False, got 'no'$"):
        A.saliency(NET, params, x, 1, abs="no")
    raw = np.asarray(A.saliency(NET, params, x, 1, abs=np.bool_(False)))
    assert (raw < 0).any()
    np.testing.assert_array_equal(np.abs(raw), A.saliency(NET, params, x, 1))


def test_transforms_and_curves_check_their_arguments_up_front(params, x):
    from jaxviz.attribution import metrics
    from jaxviz.featvis import render as R

    for make, message in ((lambda: R.Jitter(-3), r"^Jitter: d: expected a non-negative int of pixels, got -3"),
                          (lambda: R.Pad(2.5), r"^Pad: width: expected a non-negative int of pixels, got 2\.5"),
                          (lambda: R.RandomScale(()), r"^RandomScale: scales: expected a non-empty sequence of "
                                                      r"positive numbers"),
                          (lambda: R.RandomScale((1.0, -1.0)), r"^RandomScale: scales: "),
                          (lambda: R.RandomRotate("ab"), r"^RandomRotate: angles: ")):
        with pytest.raises(InputError, match=message):
            make()
    assert R.RandomScale(1.1).scales == (1.1,) and R.RandomRotate([5, -5]).angles == (5.0, -5.0)
    assert R.RandomScale([1, 1.1]) == R.RandomScale((1.0, 1.1))  # equal (and hash equal): one compiled program
    attr = np.asarray(A.saliency(NET, params, x, 1))
    with pytest.raises(InputError, match="^attributions: expected finite values, got NaN or inf"):
        metrics.insertion(NET, params, x, 1, attr * np.nan)
    assert 0 <= float(metrics.deletion(NET, params, x, 1, attr, steps=4).auc.mean()) <= 1


def test_embedding_pictures_and_tsne_check_indices_and_numbers():
    from jaxviz import embed

    thumbs = np.random.default_rng(0).random((5, 16, 16, 3), dtype=np.float32)
    with pytest.raises(InputError, match=r"^indices: expected integer indices into the 5 thumbnails, got values 1..7$"):
        embed.neighbour_grid(thumbs, [[1, 7]])  # was an IndexError
    with pytest.raises(InputError, match=r"^indices: .* got values 1.0..2.0$"):
        embed.neighbour_grid(thumbs, [[1.0, 2.0]])
    with pytest.raises(InputError, match=r"^queries: expected 1 integer indices .* got \[9\]$"):
        embed.neighbour_grid(thumbs, [[1, 2]], queries=[9])
    with pytest.raises(InputError, match=r"^queries: .* got \[0, 1\]$"):
        embed.neighbour_grid(thumbs, [[1, 2]], queries=[0, 1])
    grid = embed.neighbour_grid(thumbs, [[1, 2]], queries=[4], pad=0)
    np.testing.assert_array_equal(grid[4:12, 4:12], thumbs[4, 4:12, 4:12])  # the query tile's inside, unframed
    np.testing.assert_array_equal(grid[:, 16:32], thumbs[1])
    vectors = np.random.default_rng(1).random((10, 5))
    for kwargs, message in [({"perplexity": -1}, r"^perplexity: expected a positive number, got -1$"),
                            ({"perplexity": "5"}, r"^perplexity: expected a positive number, got '5'$"),
                            ({"n_components": 0}, r"^n_components: expected a positive int, got 0$"),
                            ({"pca_dims": 0}, r"^pca_dims: expected a positive int, got 0$")]:
        with pytest.raises(InputError, match=message):
            embed.tsne(vectors, **kwargs)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_pictures_give_float32_maps(params, x, dtype):
    """The maps are float32 (as documented) and equal those of the same pixel values given as float32."""
    xh = jnp.asarray(x, dtype)
    same = np.asarray(xh.astype(jnp.float32))
    for method in (A.saliency, A.input_x_gradient, A.guided_backprop, A.deconvnet, A.grad_cam):
        got = method(NET, params, xh, 1)
        assert got.dtype == jnp.float32, method.__name__
        np.testing.assert_array_equal(got, method(NET, params, same, 1), err_msg=method.__name__)


def test_bfloat16_model_gives_float32_grad_cam(params, x):
    want = np.asarray(A.grad_cam(NET, params, x, 1))
    got = A.grad_cam(NET.clone(dtype=jnp.bfloat16), params, x, 1)
    assert got.dtype == jnp.float32
    assert np.linalg.norm(np.asarray(got) - want) / np.linalg.norm(want) < 0.05
