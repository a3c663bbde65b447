"""jaxviz.parallel: padding, sharding, trimming; several host devices in a subprocess."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz import parallel
from jaxviz.errors import InputError


def test_pad_batch_repeats_the_last_entry():
    tree = {"x": np.arange(5 * 2).reshape(5, 2), "t": jnp.arange(5)}
    padded, n = parallel.pad_batch(tree, 4)
    assert n == 5
    np.testing.assert_array_equal(padded["x"], np.concatenate([tree["x"], np.repeat(tree["x"][-1:], 3, 0)]))
    np.testing.assert_array_equal(padded["t"], [0, 1, 2, 3, 4, 4, 4, 4])
    assert isinstance(padded["x"], np.ndarray) and isinstance(padded["t"], jax.Array)
    same, n = parallel.pad_batch(tree, 5)
    assert same is tree and n == 5
    with pytest.raises(InputError, match=r"^batched: expected arrays sharing one leading batch axis, got shapes"):
        parallel.pad_batch({"a": np.zeros(3), "b": np.zeros(4)}, 2)
    with pytest.raises(InputError, match=r"^batched: expected a non-empty batch, got 0 entries"):
        parallel.pad_batch(np.zeros((0, 2)), 2)
    with pytest.raises(InputError, match=r"^multiple: expected a positive int, got 0"):
        parallel.pad_batch(np.zeros(3), 0)


def test_one_device_equals_jit():
    w = jnp.arange(6.0).reshape(3, 2)

    def fn(p, x, t):
        return {"y": x @ p, "s": (x @ p).sum(-1) + t}

    x = np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32)
    t = np.arange(7, dtype=np.float32)
    run = parallel.data_parallel(fn)
    got = run(w, x, t)
    want = jax.jit(fn)(w, x, t)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6)
    assert got["y"].shape == (7, 2)
    assert run.num_devices == len(jax.devices())
    with pytest.raises(InputError, match=r"^fn: expected a callable fn\(shared, \*batched\), got int"):
        parallel.data_parallel(3)
    with pytest.raises(InputError, match=r"^devices: expected at least one device, got none"):
        parallel.data_parallel(fn, devices=[])


_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from jaxviz import attribution, parallel
    from jaxviz.models.small_cnn import small_cnn

    assert len(jax.devices()) == 4, jax.devices()
    net = small_cnn(num_classes=4, widths=(4, 8, 8))
    x = np.random.default_rng(0).uniform(size=(6, 16, 16, 3)).astype(np.float32)
    t = np.array([0, 1, 2, 3, 0, 1], np.int32)
    params = jax.jit(net.init)(jax.random.key(0), x[:1])

    keys = jax.random.split(jax.random.key(3), 6)  # SmoothGrad: one key per image, sharded with the images

    def fn(p, x, t, k):
        sal = attribution.saliency(net, p, x, t)
        occ = attribution.occlusion(net, p, x, t, window=4, stride=4, batch_size=8)
        sg = attribution.smoothgrad(net, p, x, t, samples=3, key=k)
        dev = jnp.full((x.shape[0],), jax.lax.axis_index("batch"))
        return {"saliency": sal, "occlusion": occ, "smoothgrad": sg, "logits": net.apply(p, x), "device": dev}

    four = parallel.data_parallel(fn)(params, x, t, keys)           # 6 images padded to 8, 2 per device
    one = parallel.data_parallel(fn, devices=jax.devices()[:1])(params, x, t, keys)
    out = {k: np.asarray(v).tolist() for k, v in four.items()}
    out["one"] = {k: np.asarray(v).tolist() for k, v in one.items()}
    out["num_devices"] = parallel.data_parallel(fn).num_devices
    json.dump(out, sys.stdout)
    """
)


def test_four_host_devices_match_one_device(tmp_path):
    """XLA_FLAGS must be set before jax is imported, hence a subprocess."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["num_devices"] == 4
    # the 6 images really were split, 2 per device (padded to 8: device 3 got the two padding copies)
    assert out["device"] == [0, 0, 1, 1, 2, 2]
    assert out["one"]["device"] == [0] * 6
    for k in ("saliency", "occlusion", "smoothgrad", "logits"):
        four, one = np.asarray(out[k]), np.asarray(out["one"][k])
        assert four.shape == one.shape and four.shape[0] == 6
        # identical up to float32 round-off (each device runs a smaller batch, so XLA may block differently)
        np.testing.assert_allclose(four, one, rtol=1e-5, atol=1e-6 * np.abs(one).max(), err_msg=k)
    # and the same as this process computes on its own single device
    from jaxviz import attribution
    from jaxviz.models.small_cnn import small_cnn

    net = small_cnn(num_classes=4, widths=(4, 8, 8))
    x = np.random.default_rng(0).uniform(size=(6, 16, 16, 3)).astype(np.float32)
    params = jax.jit(net.init)(jax.random.key(0), x[:1])
    sal = attribution.saliency(net, params, x, np.array([0, 1, 2, 3, 0, 1]))
    np.testing.assert_allclose(out["saliency"], sal, rtol=1e-5, atol=1e-6 * float(jnp.abs(sal).max()))
