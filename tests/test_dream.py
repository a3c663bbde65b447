"""DeepDream: exact tiles, exact jitter undo, the objective rising at every octave, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz import dream, models, weights
from jaxviz.errors import CheckpointError, InputError

NET = models.VGG(stages=((8,), (16,)), fc_features=32, num_classes=10, pool_output=(2, 2))


def _uniform(seed, *shape):
    """Test data from NumPy (a jax.random draw of a new shape costs a compilation)."""
    return np.random.default_rng(seed).uniform(size=shape).astype(np.float32)


def _normal(seed, *shape):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)



@pytest.fixture(scope="module")
def params():
    return weights.random(NET, seed=0)


def _rel(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


# --------------------------------------------------------------------------- objective


def test_objective_is_weighted_mean_half_squared_norm(params):
    x = _uniform(0, 2, 36, 40, 3)
    acts = NET.apply(params, x, taps=("relu1_1", "pool2"))
    want = 0.5 * np.mean(np.sum(np.asarray(acts["relu1_1"]) ** 2, -1)) * 0.25 + 0.5 * np.mean(
        np.sum(np.asarray(acts["pool2"]) ** 2, -1)
    )
    got = dream.objective(NET, params, x, layers={"relu1_1": 0.25, "pool2": 1.0})
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_gradient_at_the_layer_is_the_activation_and_guided_gradient_is_the_matched_guide_feature():
    # the seed's identity: d(½‖a‖²)/da = a ; guided: d(max_j <a, g_j>)/da = g_argmax
    a = _normal(1, 1, 3, 4, 5)
    g = _normal(2, 7, 5)
    np.testing.assert_allclose(jax.jit(jax.grad(lambda z: dream._position_terms(z, None).sum()))(a), a, rtol=1e-6)
    grad = jax.jit(jax.grad(lambda z: dream._position_terms(z, g).sum()))(a)
    best = np.argmax(np.einsum("nhwc,mc->nhwm", a, g), -1)
    np.testing.assert_allclose(grad, np.asarray(g)[best], rtol=1e-6)


# --------------------------------------------------------------------------- tiles


@pytest.mark.parametrize(
    "layers, guided, tile",
    [({"relu1_1": 0.5, "pool2": 1.0}, False, 8), ("relu2_1", True, 13)],
    ids=["two-layers-42-tiles-scanned", "guided-16-tiles-unrolled"],
)
def test_tiled_gradient_equals_whole_image_gradient(params, layers, guided, tile):
    x = _uniform(3, 2, 45, 50, 3)  # odd sizes: not multiples of the stride
    guide = _uniform(4, 1, 40, 36, 3) if guided else None
    spec = dream._layer_spec(NET, layers, params)
    plan = dream._plan(NET, params, spec, 45, 50, tile)
    assert len(plan.tiles) >= 16 and plan.crop[0] < 45 and plan.crop[1] < 50  # really tiled
    assert (len(plan.tiles) > dream.UNROLL_TILES) == (tile == 8)  # both ways of looping over tiles
    with jax.default_matmul_precision("highest"):
        v0, g0 = dream.gradient(NET, params, x, layers=layers, guide=guide)
        v1, g1 = dream.gradient(NET, params, x, layers=layers, guide=guide, tile_size=tile)
    np.testing.assert_allclose(float(v1), float(v0), rtol=1e-5)
    assert _rel(g1, g0) < 1e-5
    assert float(jnp.abs(g0).max()) > 0


def test_tile_plan_crops_are_stride_aligned_inside_the_image_and_cores_partition_it(params):
    spec = dream._layer_spec(NET, "pool2", params)  # stride 4
    plan = dream._plan(NET, params, spec, 61, 47, 10)
    ch, cw = plan.crop
    cover = np.zeros((61, 47), int)
    for sy, sx, y0, y1, x0, x1 in plan.tiles:
        assert sy % 4 == 0 and sx % 4 == 0
        assert 0 <= sy and sy + ch <= 61 and 0 <= sx and sx + cw <= 47
        assert sy <= y0 and y1 <= sy + ch and sx <= x0 and x1 <= sx + cw
        cover[y0:y1, x0:x1] += 1
    assert (cover == 1).all()
    # a tile larger than the image: one pass
    assert dream._plan(NET, params, spec, 61, 47, 1000).tiles == ((0, 0, 0, 61, 0, 47),)


# --------------------------------------------------------------------------- jitter


def test_roll_is_undone_exactly():
    x = _normal(5, 2, 13, 17, 3)
    roll, unroll = jax.jit(dream.roll, static_argnums=2), jax.jit(dream.unroll)
    shifts = set()
    for key in jax.random.split(jax.random.key(0), 8):
        rolled, shift = roll(x, key, 6)
        dy, dx = (int(v) for v in np.asarray(shift))
        shifts.add((dy, dx))
        assert max(abs(dy), abs(dx)) <= 6
        np.testing.assert_array_equal(np.asarray(rolled)[:, 0, 0], np.asarray(x)[:, -dy % 13, -dx % 17])
        np.testing.assert_array_equal(unroll(rolled, shift), x)
    assert len(shifts) > 4


def test_jittered_step_equals_unjittered_step_for_a_translation_equivariant_gradient():
    x = _uniform(6, 1, 20, 24, 3)
    key = jax.random.key(7)
    assert np.any(np.asarray(dream.roll(x, key, 8)[1]) != 0)
    pointwise = lambda z: jnp.sin(7.0 * z) + z * z  # commutes with any roll
    ramp = lambda z: z * jnp.arange(z.shape[1], dtype=z.dtype)[None, :, None, None]  # depends on the position
    step = jax.jit(dream._step, static_argnums=(0, 4))
    np.testing.assert_array_equal(step(pointwise, x, key, 0.01, 8), step(pointwise, x, key, 0.01, 0))
    assert not np.array_equal(step(ramp, x, key, 0.01, 8), step(ramp, x, key, 0.01, 0))


# --------------------------------------------------------------------------- the loop


def test_dream_raises_the_objective_at_every_octave(params):
    x = _uniform(8, 1, 48, 52, 3) * 0.5 + 0.25
    kw = dict(key=jax.random.key(9), layers="relu2_1", octaves=2, octave_scale=1.4, steps=4, jitter=4,
              return_objectives=True)
    out, objectives = dream.dream(NET, params, x, **kw)
    assert objectives.shape == (2, 2)
    assert np.all(objectives[:, 1] > objectives[:, 0]), objectives
    assert out.shape == x.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    assert float(dream.objective(NET, params, out, layers="relu2_1")) > float(
        dream.objective(NET, params, x, layers="relu2_1")
    )
    # the steps driven by a host loop (the CPU default) or by one lax.scan: the same dream
    other = "scan" if dream.host_loop("auto") else "host"
    again, again_objectives = dream.dream(NET, params, x, loop=other, **kw)
    np.testing.assert_allclose(again, out, atol=1e-5)
    np.testing.assert_allclose(again_objectives, objectives, rtol=1e-5)


def test_dream_step_is_compiled_once_and_matches_a_manual_step(params):
    x = _uniform(10, 1, 40, 40, 3)
    dream.dream_step(NET, params, x, jax.random.key(0), layers="relu2_1", jitter=3)
    size = dream._run_octave._cache_size()
    out = dream.dream_step(NET, params, x, jax.random.key(1), layers="relu2_1", jitter=3)
    assert dream._run_octave._cache_size() == size  # a new key does not re-trace
    # eager re-computation of the same step
    rolled, shift = dream.roll(x, jax.random.fold_in(jax.random.key(1), 0), 3)
    g = dream.unroll(dream.gradient(NET, params, rolled, layers="relu2_1")[1], shift)
    lap = dream.laplacian_normalize(g)  # the default smoothing
    want = jnp.clip(x + 0.01 * lap / (jnp.abs(lap).mean() + 1e-8), 0, 1)
    np.testing.assert_allclose(out, want, atol=1e-5)
    raw = dream.dream_step(NET, params, x, jax.random.key(1), layers="relu2_1", jitter=3, smoothing="none")
    np.testing.assert_allclose(raw, jnp.clip(x + 0.01 * g / (jnp.abs(g).mean() + 1e-8), 0, 1), atol=1e-5)
    with pytest.raises(InputError, match="smoothing: expected one of 'laplacian', 'none', got 'gauss'"):
        dream.dream_step(NET, params, x, jax.random.key(1), layers="relu2_1", smoothing="gauss")


def test_laplacian_normalize():
    g = _uniform(11, 2, 40, 48, 3) - 0.5
    # one level: the gradient over its standard deviation, per image
    one = dream.laplacian_normalize(g, levels=1)
    np.testing.assert_allclose(one, g / g.std(axis=(1, 2, 3), keepdims=True), rtol=1e-5, atol=1e-6)
    # each image on its own, whatever its scale
    scaled = g * jnp.array([5.0, 0.01])[:, None, None, None]
    np.testing.assert_allclose(dream.laplacian_normalize(scaled), dream.laplacian_normalize(g), rtol=1e-4, atol=1e-5)
    # a smooth ramp under strong pixel noise: the ramp's share of the result grows (the bands weigh equally)
    y = jnp.linspace(-1, 1, 40)[None, :, None, None] * jnp.ones((1, 40, 48, 3))
    mixed = y + 20 * g[:1]
    out = dream.laplacian_normalize(mixed)
    share = lambda a: float(jnp.abs(jnp.sum(a * y)) / (jnp.linalg.norm(a) * jnp.linalg.norm(y)))
    assert share(out) > 3 * share(mixed)


# --------------------------------------------------------------------------- errors


def test_octave_shapes_smallest_first():
    assert dream.octave_shapes(100, 140, octaves=3, octave_scale=2.0) == [(25, 35), (50, 70), (100, 140)]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(layers="conv9_9"), r"^layers: unknown layer 'conv9_9'"),
        (dict(layers="fc7"), r"^layers: expected convolutional \(spatial\) taps, got 'fc7'"),
        (dict(layers={}), r"^layers: expected at least one layer, got none"),
        (dict(layers={"relu1_1": float("nan")}), r"^layers: expected a finite weight for 'relu1_1', got nan"),
        (dict(octaves=6), r"^octaves: the smallest of 6 octaves \(scale 1.4\) would be 3x3 px, below the network's minimum 4"),
        (dict(octave_scale=1.0), r"^octave_scale: expected a number > 1, got 1.0"),
        (dict(octave_scale=True), r"^octave_scale: expected a number > 1, got True"),
        (dict(step_size=0), r"^step_size: expected a positive number, got 0"),
        (dict(step_size="0.01"), r"^step_size: expected a positive number, got '0.01'"),
        (dict(jitter=-1), r"^jitter: expected a non-negative int \(pixels\), got -1"),
        (dict(steps=0), r"^steps: expected a positive int, got 0"),
    ],
)
def test_bad_arguments_raise_input_errors(params, kwargs, match):
    x = jnp.zeros((1, 16, 16, 3))
    with pytest.raises(InputError, match=match):
        dream.dream(NET, params, x, key=jax.random.key(0), **{"layers": "relu1_1", **kwargs})


def test_numpy_scalars_are_taken_for_step_size_and_octave_scale(params):
    x = _uniform(3, 1, 32, 32, 3)
    kw = dict(key=jax.random.key(2), layers="relu2_1", octaves=2, steps=2, jitter=2)
    got = dream.dream(NET, params, x, step_size=np.float32(0.5), octave_scale=np.float32(1.5), **kw)
    np.testing.assert_array_equal(got, dream.dream(NET, params, x, step_size=0.5, octave_scale=1.5, **kw))
    assert not np.array_equal(got, dream.dream(NET, params, x, step_size=0.01, octave_scale=1.5, **kw))


def test_bad_images_raise():
    with pytest.raises(InputError, match=r"^images: expected shape \(N, H, W, 3\), got \(16, 16, 3\)"):
        dream.dream(NET, {}, jnp.zeros((16, 16, 3)), key=jax.random.key(0), layers="relu1_1")


def test_a_directory_as_checkpoint_is_refused(params, tmp_path):
    with pytest.raises(InputError, match=r"^checkpoint: expected a file path, got the directory "):
        dream.dream(NET, params, _uniform(3, 1, 32, 32, 3), key=jax.random.key(0), layers="relu2_1", steps=1,
                    octaves=1, checkpoint=tmp_path)


@pytest.mark.parametrize("loop", ["host", "scan"])
def test_checkpoint_resumes_after_finished_octaves(params, tmp_path, monkeypatch, loop):
    x = _uniform(3, 1, 40, 48, 3)
    kw = dict(key=jax.random.key(1), layers={"relu2_1": 1.0}, octaves=3, octave_scale=1.25, steps=2, jitter=3,
              loop=loop, return_objectives=True)
    whole, whole_obj = dream.dream(NET, params, x, **kw)
    ckpt = tmp_path / "d.npz"
    real, calls = dream._run_octave, []

    def interrupted(*a, **k):  # dies in the third octave
        calls.append(a[2].shape)
        if len({s for s in calls}) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(dream, "_run_octave", interrupted)
    with pytest.raises(KeyboardInterrupt):
        dream.dream(NET, params, x, checkpoint=ckpt, **kw)
    saved = np.load(ckpt)
    assert int(saved["octaves_done"]) == 2 and saved["objectives"].shape == (2, 2)
    monkeypatch.setattr(dream, "_run_octave", real)
    got, got_obj = dream.dream(NET, params, x, checkpoint=ckpt, **kw)
    np.testing.assert_array_equal(got, whole)  # the same numbers as one uninterrupted call
    np.testing.assert_array_equal(got_obj, whole_obj)
    # finished: a rerun returns the stored result without computing
    monkeypatch.setattr(dream, "_run_octave", lambda *a, **k: pytest.fail("recomputed"))
    np.testing.assert_array_equal(dream.dream(NET, params, x, checkpoint=ckpt, **kw)[0], whole)
    # other settings: refused, or ignored with resume=False
    monkeypatch.setattr(dream, "_run_octave", real)
    other = dict(kw, step_size=0.02)
    with pytest.raises(CheckpointError, match=r"^checkpoint: .* was written by a dream of other inputs or settings") as e:
        dream.dream(NET, params, x, checkpoint=ckpt, **other)
    assert e.value.reason == "mismatch" and isinstance(e.value, InputError)
    damaged = tmp_path / "damaged.npz"
    damaged.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"^checkpoint: .* is not a readable jaxviz dream checkpoint") as e:
        dream.dream(NET, params, x, checkpoint=damaged, **kw)
    assert e.value.reason == "unreadable"
    np.testing.assert_array_equal(dream.dream(NET, params, x, checkpoint=ckpt, resume=False, **other)[0],
                                  dream.dream(NET, params, x, **other)[0])
