"""jaxviz.style and `jaxviz stylize`: presets, the objective against jaxviz.losses, Adam and L-BFGS
runs on a tiny random VGG, resume, batches, multi-scale, colours, errors.

Every optimisation here uses one of two configurations on the same tiny net and image sizes, so
the compiled step is shared between tests (compiles dominate the run time).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz import losses, models, style, weights, viz
from jaxviz.errors import CheckpointError, InputError

NET = models.VGG(stages=((8,), (16,)), classifier=False)
LAYERS = dict(content_layers=["relu2_1"], style_layers=[("relu1_1", 0.5), ("relu2_1", 0.5)])
ADAM = dict(preset="course", **LAYERS)  # Adam lr 2.0 on 0-255 pixels, noisy init
LBFGS = dict(preset="pytorch-tutorial", **LAYERS)  # gatys' L-BFGS with the absolute costs these tests were sized on


@pytest.fixture(scope="module")
def params():
    return weights.random(NET, seed=0)


def img(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).uniform(size=shape), jnp.float32)


CONTENT = img((1, 32, 32, 3), 1)
STYLE = img((1, 40, 36, 3), 2)


def totals(params, state, steps, every=1):
    out = [float(style.evaluate(NET, params, state).total[0])]
    for _ in range(steps // every):
        state, _ = style.update(NET, params, state, steps=every)
        out.append(float(style.evaluate(NET, params, state).total[0]))
    return state, np.array(out)


# --------------------------------------------------------------------------- presets and config


def test_presets_reproduce_the_seeds():
    c = style.PRESETS["course"]
    assert (c.content_weight, c.style_weight, c.optimizer, c.learning_rate) == (10.0, 40.0, "adam", 2.0)
    assert c.style_layers == tuple((f"relu{b}_1", 0.2) for b in range(1, 6))
    assert c.content_layers == (("relu4_2", 1.0),)
    assert (c.init, c.noise_ratio, c.noise_range, c.pixel_scale) == ("noise", 0.6, 20.0, 255.0)
    assert (c.content_normalization, c.style_normalization) == ("course", "course")
    t = style.PRESETS["tf-tutorial"]
    assert (t.content_layers, t.content_weight, t.style_weight) == ((("relu5_2", 1.0),), 1e3, 1e-2)
    assert (t.learning_rate, t.b1, t.eps, t.style_normalization, t.steps) == (5.0, 0.99, 0.1, "hw", 1000)
    g = style.PRESETS["gatys"]
    assert (g.optimizer, g.init, g.content_layers, g.style_layers) == ("lbfgs", "content", None, None)


def test_gatys_layers_are_the_models_suggestion():
    """The default preset leaves the layers to the model: Gatys et al.'s on a VGG19 (relu4_2; relu1_1..relu5_1
    at 1/5 each, the course preset's), one style tap per map size and the deep content tap on a ResNet."""
    from jaxviz.models import protocol
    from jaxviz.style.presets import _for_model

    vgg = models.vgg19(classifier=False)
    vgg_params = jax.eval_shape(lambda: weights.random(vgg, seed=0))  # shapes are all the choice needs
    _, cfg = _for_model(vgg, vgg_params, style.config("gatys"))
    course = style.config("course")
    assert (cfg.content_layers, cfg.style_layers) == (course.content_layers, course.style_layers)

    net = models.resnet18()
    params = weights.random(net, seed=0)
    _, cfg = _for_model(net, params, style.config("gatys"))
    shapes = protocol.tap_shapes(net, params, (1, 224, 224, 3))
    names = [n for n, _ in cfg.style_layers]
    sizes = [shapes[n][1:3] for n in names]
    assert sizes == [(112, 112), (56, 56), (28, 28), (14, 14), (7, 7)]  # one per stage, the first tap of each
    assert all(shapes[k][1:3] != sz for n, sz in zip(names, sizes) for k in net.layers[:net.layers.index(n)]
               if k in shapes and len(shapes[k]) == 4)
    assert [w for _, w in cfg.style_layers] == [0.2] * 5 and cfg.content_layers[0][1] == 1.0
    spatial = [k for k in net.layers if k in shapes and len(shapes[k]) == 4]  # conv1 .. layer4/1: 11 taps
    assert cfg.content_layers[0][0] == spatial[int(0.7 * len(spatial))] == "layer3/0"


def test_config_overrides_and_errors():
    cfg = style.config("course", steps=7, style_layers=["relu1_1", "relu2_1"], optimizer="lbfgs", learning_rate=None)
    assert cfg.steps == 7 and cfg.style_layers == (("relu1_1", 0.5), ("relu2_1", 0.5)) and cfg.optimizer == "lbfgs"
    assert style.config("gatys", style_layers="relu1_1,relu2_1").style_layers == (("relu1_1", 0.5), ("relu2_1", 0.5))
    assert style.config("gatys", content_layers={"relu3_1": 2.0}).content_layers == (("relu3_1", 2.0),)
    with pytest.raises(InputError, match=r"^preset: expected one of 'gatys', 'pytorch-tutorial', 'course', 'tf-tutorial'; got 'x'"):
        style.config("x")
    with pytest.raises(InputError, match=r"^alpha: unknown option; expected one of content_layers, "):
        style.config("course", alpha=3)
    with pytest.raises(InputError, match=r"^optimizer: expected one of 'adam', 'lbfgs'; got 'sgd'"):
        style.config(optimizer="sgd")
    with pytest.raises(InputError, match=r"^learning_rate: expected a positive number for optimizer='adam', got None"):
        style.config("course", learning_rate=None)
    with pytest.raises(InputError, match=r"^style_weight: expected a non-negative finite number, got -1.0"):
        style.config(style_weight=-1)


def test_bad_inputs_name_the_argument(params):
    with pytest.raises(InputError, match=r"^content_layers: unknown layer 'relu4_2'; this network has conv1_1"):
        style.init(NET, params, CONTENT, STYLE, preset="course")  # the course's VGG19 taps, named
    with pytest.raises(InputError, match=r"^net: expected a jaxviz model, a flax module or a function f\(params, x\), got object"):
        style.init(object(), params, CONTENT, STYLE, **LBFGS)
    with pytest.raises(InputError, match=r"^content: expected shape \(N, H, W, 3\), got \(32, 32, 3\)"):
        style.init(NET, params, CONTENT[0], STYLE, **LBFGS)
    with pytest.raises(InputError, match=r"^style_weights: expected 2 non-negative weights"):
        style.style_targets(NET, params, [STYLE, STYLE], style_weights=[1.0], **LAYERS)
    with pytest.raises(InputError, match=r"^size: expected a smallest side of at least 4 px"):
        style.run(NET, params, CONTENT, STYLE, size=2, progress=False, **LBFGS)
    thin = np.full((1, 2, 40, 3), 0.5, np.float32)  # refused before any step, not as "images" inside init
    with pytest.raises(InputError, match=r"^styles: image 2 of 2 \(2x40 px\) would be 2x32 px at the coarsest scale, "
                       r"below the network's minimum of 4 px; use a larger size or style_scale$"):
        style.run(NET, params, CONTENT, [STYLE, thin], steps=1, progress=False, **ADAM)
    for seed in (1.5, "a", True):
        with pytest.raises(InputError, match=r"^seed: expected an int, got "):
            style.run(NET, params, CONTENT, STYLE, steps=1, seed=seed, progress=False, **ADAM)
        with pytest.raises(InputError, match=r"^seed: expected an int, got "):
            style.init(NET, params, CONTENT, STYLE, seed=seed, **ADAM)
    np.testing.assert_array_equal(style.init(NET, params, CONTENT, STYLE, seed=np.int64(3), **ADAM).image,
                                  style.init(NET, params, CONTENT, STYLE, seed=3, **ADAM).image)


def test_a_directory_as_checkpoint_is_refused_and_left_alone(params, tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match=r"^checkpoint: expected a file path, got the directory "):
        style.run(NET, params, CONTENT, STYLE, steps=2, checkpoint=tmp_path, progress=False, **ADAM)
    assert (tmp_path / "keep.txt").read_text() == "mine"


# --------------------------------------------------------------------------- the objective


def test_objective_is_the_course_cost_on_the_net_taps(params):
    state = style.init(NET, params, CONTENT, STYLE, **ADAM)
    l = style.evaluate(NET, params, state)
    x = style.result(state)
    k = style.CAFFE_SCALE  # the course preset's feature scale
    taps = jax.jit(lambda v: NET.apply(params, v, taps=("relu1_1", "relu2_1")))
    g = {n: k * a for n, a in taps(x).items()}
    s = {n: k * a for n, a in taps(STYLE).items()}
    c = k * taps(CONTENT)["relu2_1"]
    J_content = losses.content_cost(c, g["relu2_1"])
    J_style = losses.style_cost(s, g, [("relu1_1", 0.5), ("relu2_1", 0.5)])
    J = losses.total_cost(J_content, J_style, alpha=10, beta=40)
    np.testing.assert_allclose(l.total[0], J, rtol=2e-5)
    np.testing.assert_allclose(l.content[0], 10 * J_content, rtol=2e-5)
    np.testing.assert_allclose(l.style[0], 40 * J_style, rtol=2e-5)
    assert float(l.tv[0]) == 0.0


def test_remat_gives_the_same_value_and_gradient(params):
    state = style.init(NET, params, CONTENT, STYLE, **LBFGS, tv_weight=0.1)
    ct = {k: v[0] for k, v in state.content_targets.items()}
    x = state.image[0] * 0.9 + 0.05
    out = {}
    for remat in (False, True):
        cfg = state.config.replace(remat=remat)
        f = lambda v: style.objective._objective(NET, cfg, params, ct, state.style_targets, v)[0]
        out[remat] = jax.jit(jax.value_and_grad(f))(x)
    np.testing.assert_allclose(out[True][0], out[False][0], rtol=1e-6)
    np.testing.assert_allclose(out[True][1], out[False][1], rtol=1e-5, atol=1e-10)


def test_style_targets_blend_and_scale_invariance(params):
    other = img((1, 24, 28, 3), 3)
    a = style.style_targets(NET, params, STYLE, **LAYERS)
    b = style.style_targets(NET, params, other, **LAYERS)
    mix = style.style_targets(NET, params, [STYLE, other], style_weights=[3, 1], **LAYERS)
    for k in a:
        np.testing.assert_allclose(mix[k], 0.75 * a[k] + 0.25 * b[k], rtol=1e-5, atol=1e-8)
    only = style.style_targets(NET, params, [STYLE, other], style_weights=[1, 0], **LAYERS)
    np.testing.assert_allclose(only["relu1_1"], a["relu1_1"], rtol=1e-6)
    # a batch (S, H, W, 3) is S style images
    two = style.style_targets(NET, params, jnp.concatenate([STYLE, STYLE]), **LAYERS)
    np.testing.assert_allclose(two["relu2_1"], a["relu2_1"], rtol=1e-5)


# --------------------------------------------------------------------------- optimisation


def test_adam_lowers_the_loss_and_keeps_pixels_in_range(params):
    state = style.init(NET, params, CONTENT, STYLE, **ADAM, seed=0)
    assert state.config.pixel_scale == 255.0
    state, t = totals(params, state, 30, every=3)
    assert t[-1] < 0.2 * t[0]
    assert np.mean(np.diff(t) < 0) >= 0.8  # monotone enough
    assert float(state.image.min()) >= 0.0 and float(state.image.max()) <= 255.0
    out = style.result(state)
    assert out.shape == (1, 32, 32, 3) and float(out.min()) >= 0 and float(out.max()) <= 1
    assert int(state.step) == 30


def test_lbfgs_lowers_the_loss_monotonically(params):
    state = style.init(NET, params, CONTENT, STYLE, **LBFGS)
    traces = style.objective._TRACES["update"]
    state, t = totals(params, state, 12, every=3)
    assert style.objective._TRACES["update"] - traces <= 1  # the updated state has the initial state's types
    assert t[-1] < 0.1 * t[0]
    assert np.all(np.diff(t) <= 1e-6 * t[0])  # the zoom line search only accepts decreases
    assert float(state.image.min()) >= 0.0 and float(state.image.max()) <= 1.0
    # what update reports for L-BFGS is the total before the step (the line search's value)
    _, l = style.update(NET, params, state, steps=1)
    assert l.content is None
    np.testing.assert_allclose(l.total[0], t[-1], rtol=1e-5)


def test_update_compiles_once_jit_equals_eager_and_is_one_adam_step(params):
    import optax

    state = style.init(NET, params, CONTENT, STYLE, **ADAM)
    a, la = style.update(NET, params, state, steps=1)
    before = style.objective._TRACES["update"]
    style.update(NET, params, a, steps=2)
    assert style.objective._TRACES["update"] == before  # another step count, another state: no retrace
    with jax.disable_jit():
        eager = style.evaluate(NET, params, state)
    for got, want in zip(style.evaluate(NET, params, state), eager):
        np.testing.assert_allclose(got, want, rtol=1e-5)
    # the step by hand: gradient of the objective at the clipped image, optax.adam, projection
    cfg = state.config
    ct = {k: v[0] for k, v in state.content_targets.items()}
    f = jax.jit(jax.value_and_grad(lambda x: style.objective._objective(NET, cfg, params, ct, state.style_targets, x)[0]))
    value, g = f(state.image[0])
    opt = optax.adam(2.0)
    updates, _ = opt.update(g, opt.init(state.image[0]), state.image[0])
    x1 = jnp.clip(state.image[0] + updates, 0, 255)
    np.testing.assert_allclose(la.total[0], value, rtol=1e-6)
    np.testing.assert_allclose(a.image[0], x1, atol=1e-3)


def test_deterministic_per_seed(params):
    a = style.init(NET, params, CONTENT, STYLE, **ADAM, seed=5)
    b = style.init(NET, params, CONTENT, STYLE, **ADAM, seed=5)
    c = style.init(NET, params, CONTENT, STYLE, **ADAM, seed=6)
    np.testing.assert_array_equal(a.image, b.image)
    assert not np.allclose(a.image, c.image)
    a, _ = style.update(NET, params, a, steps=3)
    b, _ = style.update(NET, params, b, steps=3)
    np.testing.assert_array_equal(a.image, b.image)
    # the course's init: 0.6 * uniform(-20, 20) + 0.4 * content, mixed around the mean colour
    x = np.asarray(style.init(NET, params, CONTENT, STYLE, **ADAM, seed=5).image) / 255
    mean = np.asarray(models.IMAGENET_MEAN)
    noise = (x - mean - 0.4 * (np.asarray(CONTENT) - mean)) / 0.6
    inside = (x > 0) & (x < 1)
    assert np.abs(noise[inside]).max() <= 20 / 255 + 1e-5 and np.abs(noise[inside]).max() > 15 / 255


@pytest.mark.parametrize("kw", [ADAM, LBFGS], ids=["adam-vmap", "lbfgs-map"])
def test_batch_equals_one_by_one(params, kw):
    contents = jnp.concatenate([CONTENT, img((1, 32, 32, 3), 4)])
    batch = style.init(NET, params, contents, STYLE, **kw)
    batch, lb = style.update(NET, params, batch, steps=3)
    for i in range(2):
        one = style.init(NET, params, contents[i : i + 1], STYLE, **kw)
        one, lo = style.update(NET, params, one, steps=3)
        np.testing.assert_allclose(batch.image[i], one.image[0], rtol=1e-4, atol=2e-4 * one.config.pixel_scale)
        np.testing.assert_allclose(lb.total[i], lo.total[0], rtol=1e-4)


# --------------------------------------------------------------------------- run: resume, scales, size, colour


def test_resume_after_interrupt_ends_where_an_uninterrupted_run_ends(params, tmp_path):
    full = style.run(NET, params, CONTENT, STYLE, steps=6, progress=False, **LBFGS)
    ckpt = tmp_path / "run.ckpt.npz"
    seen = []

    def interrupt(info):
        seen.append(info["step"])
        if info["step"] == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        style.run(NET, params, CONTENT, STYLE, steps=6, checkpoint=ckpt, checkpoint_every=2, callback=interrupt,
                  progress=False, **LBFGS)
    assert seen == [2, 4] and ckpt.exists()
    resumed_from = []
    out = style.run(NET, params, CONTENT, STYLE, steps=6, checkpoint=ckpt, checkpoint_every=2,
                    callback=lambda i: resumed_from.append(i["step"]), progress=False, **LBFGS)
    assert resumed_from == [6]  # continued at step 4, not from scratch
    np.testing.assert_allclose(out, full, atol=1e-6)
    # a finished checkpoint returns at once; another run's checkpoint is refused
    again = style.run(NET, params, CONTENT, STYLE, steps=6, checkpoint=ckpt, callback=seen.append, progress=False, **LBFGS)
    np.testing.assert_array_equal(again, out)
    with pytest.raises(CheckpointError, match=r"^checkpoint: .* was written by a run with other inputs, weights or settings") as e:
        style.run(NET, params, CONTENT, STYLE, steps=6, checkpoint=ckpt, seed=1, progress=False, **LBFGS)
    assert e.value.reason == "mismatch"


def test_multiscale_starts_each_scale_from_the_upsampled_result(params):
    out = style.run(NET, params, CONTENT, STYLE, steps=2, scales=2, progress=False, **ADAM)
    assert out.shape == (1, 32, 32, 3)
    small = style.run(NET, params, CONTENT, STYLE, steps=2, size=16, progress=False, **ADAM)
    start = jax.image.resize(small, (1, 32, 32, 3), "linear")
    state = style.init(NET, params, CONTENT, style.colour._resize(STYLE, (32, 29)), **ADAM, init_image=start)
    state, _ = style.update(NET, params, state, steps=2)
    np.testing.assert_allclose(out, style.result(state), atol=1e-5)


def test_size_sets_the_longest_side_and_style_scale_resizes_styles(params, monkeypatch):
    seen = []
    real_init = style.init
    monkeypatch.setattr(style.multiscale, "init", lambda *a, **k: (seen.append(a[3][0].shape), real_init(*a, **k))[1])
    out = style.run(NET, params, img((1, 32, 24, 3), 5), STYLE, steps=0, size=16, style_scale=2.0, progress=False, **ADAM)
    assert out.shape == (1, 16, 12, 3)
    assert seen == [(1, 32, 29, 3)]  # 40x36 style, longest side 2 * 16


def test_luminance_only_greys_the_content_and_matches_the_styles_luminance_statistics():
    # Gatys et al. 2016 (luminance-only transfer): the content becomes its luma Y on all three channels; each style's
    # luma is shifted and scaled to the content's mean and std (then clipped to [0, 1]) and repeated the same way
    content = jnp.asarray([[[[1, 0, 0], [0, 1, 0]], [[0, 0, 1], [1, 1, 1]]]], jnp.float32)  # Y .299 .587 .114 1
    grey_style = jnp.asarray([[[[0.0] * 3, [0.1] * 3], [[0.2] * 3, [0.3] * 3]]], jnp.float32)  # Y 0 .1 .2 .3
    colour_style = jnp.asarray([[[[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]]]], jnp.float32)  # (1, 1, 4, 3)
    c, (s1, s2) = style.colour._luminance_only(content, [grey_style, colour_style])
    y = np.array([0.299, 0.587, 0.114, 1.0])
    np.testing.assert_allclose(c, np.repeat(y.reshape(1, 2, 2, 1), 3, axis=-1), atol=1e-6)
    mu, sd = 0.5, np.std(y)  # 0.33423
    z = (np.array([0.0, 0.1, 0.2, 0.3]) - 0.15) / np.std([0.0, 0.1, 0.2, 0.3])  # no clipping: 0.5 +- 0.449
    np.testing.assert_allclose(s1, np.repeat((mu + sd * z).reshape(1, 2, 2, 1), 3, axis=-1), atol=1e-5)
    assert s2.shape == (1, 1, 4, 3)
    np.testing.assert_allclose(s2, s2[..., :1].repeat(3, axis=-1), atol=0)  # grey
    y2 = np.array([0.299, 0.587, 0.114, 0.0])
    np.testing.assert_allclose(s2[0, 0, :, 0], [0.573814, 1.0, 0.295129, 0.123399], atol=1e-5)  # green clipped
    np.testing.assert_allclose(s2[0, 0, :, 0], np.clip(mu + sd * (y2 - y2.mean()) / y2.std(), 0, 1), atol=1e-5)
    np.testing.assert_allclose([np.mean(s1[..., 0]), np.std(s1[..., 0])], [mu, sd], atol=1e-5)


def test_preserve_colors_is_a_luminance_only_run_on_the_content_colours(params):
    out = style.run(NET, params, CONTENT, STYLE, steps=2, preserve_colors=True, progress=False, **ADAM)
    yiq = np.asarray(style.colour._YIQ)
    got, want = np.asarray(out) @ yiq[1:].T, np.asarray(CONTENT) @ yiq[1:].T
    inside = np.all((np.asarray(out) > 0.01) & (np.asarray(out) < 0.99), axis=-1)
    assert inside.mean() > 0.5
    np.testing.assert_allclose(got[inside], want[inside], atol=1e-4)
    # its luminance is that of the same run on the grey inputs (built here by the documented recipe, not by
    # style.colour._luminance_only): grey content = Y, grey style = Y matched to the content's mean/std
    yc, ys = np.asarray(style.luminance(CONTENT)), np.asarray(style.luminance(STYLE))
    ys = np.clip((ys - ys.mean()) * yc.std() / ys.std() + yc.mean(), 0, 1)
    grey = style.run(NET, params, np.repeat(yc, 3, axis=-1), np.repeat(ys, 3, axis=-1), steps=2, progress=False, **ADAM)
    lum = np.asarray(style.luminance(out))[..., 0]
    np.testing.assert_allclose(lum[inside], np.asarray(style.luminance(grey))[..., 0][inside], atol=1e-4)
    np.testing.assert_allclose(out, style.original_colors(CONTENT, grey), atol=1e-5)  # the whole composition
    assert np.abs(lum - np.asarray(style.luminance(CONTENT))[..., 0]).mean() > 0.05  # stylised, not the content's
    # original_colors on its own: luminance from the stylised image, chroma from the content
    s = img((1, 8, 8, 3), 6) * 0.5 + 0.25
    c = img((1, 8, 8, 3), 7) * 0.5 + 0.25
    oc = style.original_colors(c, s)
    np.testing.assert_allclose(style.luminance(oc), style.luminance(s), atol=1e-4)
    np.testing.assert_allclose(np.asarray(oc) @ yiq[1:].T, np.asarray(c) @ yiq[1:].T, atol=1e-4)


# --------------------------------------------------------------------------- CLI


def test_cli_stylize_offline_writes_resumes_and_errors(tmp_path, capsys, monkeypatch):
    from jaxviz import cli, image

    image.save(np.asarray(img((1, 40, 32, 3), 8))[0], tmp_path / "c.png")
    image.save(np.asarray(img((1, 32, 32, 3), 9))[0], tmp_path / "s.png")
    out = tmp_path / "out.png"
    args = [str(tmp_path / "c.png"), str(tmp_path / "s.png"), "--out", str(out), "--weights", "random",
            "--preset", "course", "--steps", "2", "--size", "40", "--content-layers", "relu1_2",
            "--style-layers", "relu1_1,relu1_2", "--checkpoint-every", "1", "--no-progress"]
    assert cli.main(["stylize", *args]) == 0
    got = image.load(out)
    # the picture is the library's run with the same settings (the CLI's vgg19, --weights random --seed 0,
    # --init-seed 0), saved as 8 bits
    net = models.get("vgg19", classifier=False, pooling="max")
    content = image.load(tmp_path / "c.png")
    want = np.asarray(style.run(net, weights.random(net, seed=0), content, [image.load(tmp_path / "s.png")],
                                preset="course", steps=2, size=40, content_layers="relu1_2",
                                style_layers="relu1_1,relu1_2", seed=0, checkpoint_every=1, progress=False))
    assert got.shape == want.shape == (1, 40, 32, 3)
    # random weights: said in the picture's corner
    np.testing.assert_allclose(got[0], viz.corner_mark(want[0]), atol=0.6 / 255)
    assert np.abs(got - content).mean() > 0.01  # and not the content
    assert not out.with_name("out.png.ckpt.npz").exists()  # removed once the result is written
    assert cli.main(["stylize", *args]) == 0
    assert "already exists" in capsys.readouterr().err
    # the picture records its settings: other ones are refused with the differences, and --remat (how, not
    # what) or the path written another way are the same settings
    other = [a if a != "2" else "3" for a in args]
    assert cli.main(["stylize", *other]) == 2
    assert capsys.readouterr().err.strip() == (f"jaxviz stylize: error: --out: {out} exists and other settings: "
                                               "--steps 2 (now 3); use another --out, or --overwrite to replace it")
    assert cli.main(["stylize", os.path.relpath(tmp_path / "c.png"), *args[1:], "--remat"]) == 0
    assert "nothing to do" in capsys.readouterr().err
    np.testing.assert_allclose(image.load(out), got)
    # interrupted after its first checkpoint (step 1 of 2), then the same command again: it resumes, says so,
    # and ends where the uninterrupted run ended
    real_save, previews = image.save, []

    def save(pic, path, *a, **k):
        if str(path).endswith(".ckpt.png"):
            previews.append(path)
            if len(previews) == 1:
                real_save(pic, path, *a, **k)
                raise KeyboardInterrupt
        return real_save(pic, path, *a, **k)

    monkeypatch.setattr(image, "save", save)
    parts = [*args[:2], "--out", str(tmp_path / "parts.png"), *args[4:]]
    assert cli.main(["stylize", *parts]) == 130
    assert (tmp_path / "parts.png.ckpt.npz").exists() and (tmp_path / "parts.png.ckpt.png").exists()
    capsys.readouterr()
    monkeypatch.setattr(image, "save", real_save)
    assert cli.main(["stylize", *parts]) == 0
    text = capsys.readouterr()
    assert text.out.strip() == f"wrote {tmp_path / 'parts.png'} (32x40)"
    assert f"resumed from {tmp_path / 'parts.png.ckpt.npz'}" in text.err
    np.testing.assert_allclose(image.load(tmp_path / "parts.png")[0], viz.corner_mark(want[0]), atol=0.6 / 255)
    assert not (tmp_path / "parts.png.ckpt.npz").exists() and not (tmp_path / "parts.png.ckpt.png").exists()
    monkeypatch.setenv("JAXVIZ_CACHE", str(tmp_path / "empty"))
    code = cli.main(["stylize", *args[:2], "--out", str(tmp_path / "o2.png"), "--no-download", "--steps", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "no pretrained weights for vgg19" in err[0]
    assert err[0].endswith("or use --weights random offline")  # the command line's words, not weights.random()
    assert cli.main(["stylize", *args[:2], "--out", str(tmp_path / "o3.png"), "--weights", "random",
                     "--style-weights", "1,2"]) == 2
    # the library's error names its parameter; the command line names the flag
    assert capsys.readouterr().err.strip().startswith("jaxviz stylize: error: --style-weights: expected 1 ")
    assert cli.main(["stylize", *args[:2], "--out", str(tmp_path / "o4.png"), "--weights", "random",
                     "--steps", "0"]) == 2
    assert capsys.readouterr().err.strip() == "jaxviz stylize: error: --steps: expected a positive number of steps, got 0"
    # a checkpoint of another run: the advice is the flag that ignores it
    np.savez(tmp_path / "o5.jpg.ckpt.npz", fingerprint=np.array("another run"))  # not o5.png's checkpoint
    assert cli.main(["stylize", *args[:2], "--out", str(tmp_path / "o5.png"), *args[4:]]) == 0
    capsys.readouterr()
    np.savez(tmp_path / "o5.png.ckpt.npz", fingerprint=np.array("another run"))
    o5 = [*args[:2], "--out", str(tmp_path / "o5.png"), *args[4:]]
    assert cli.main(["stylize", *o5]) == 2
    err = capsys.readouterr().err.strip()
    assert "was written by a run with other inputs" in err and err.endswith("delete it or run with --fresh")
    assert cli.main(["stylize", *o5, "--fresh"]) == 0
    np.testing.assert_allclose(image.load(tmp_path / "o5.png")[0], viz.corner_mark(want[0]), atol=0.6 / 255)  # the same run, afresh


def test_api_surface():
    assert set(style.__all__) == {
        "CAFFE_SCALE", "Config", "Losses", "PRESETS", "State", "config", "evaluate", "init", "luminance",
        "original_colors", "result", "run", "style_targets", "update", "losses",
    }
    from jaxviz import losses

    assert style.losses is losses  # the losses live in the style package; jaxviz.losses is the same module
