"""Analytic toy models for the attribution tests, with their hand-derived quantities.

* ``linear`` / ``quadratic``: plain callables ``f(params, x) -> logits``.
* ``GapNet``: a model that implements the model contract by hand, as a third
  party would (``layers``, ``resolve``, ``run`` with the ``perturb`` and ``relu``
  seams, ``cam_layers``; plus a ``start=`` fast path)::

      conv1 (1x1 conv = Dense on channels) -> relu1 -> pool1 (2x2 avg) -> gap -> fc

  so every quantity below is a closed form in numpy:
  z = x K + b, r = relu(z), logits = mean_hw(r) W + c, and
  d score_t / d r = W[:, t] / (H W) at every pixel.

The tests in this file check the toys themselves against those formulas.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.errors import InputError


def linear(params, x):
    """f(x) = flatten(x) @ w + b: gradient w, IG (x - b) . w, occlusion in closed form."""
    return x.reshape(x.shape[0], -1) @ params["w"] + params["b"]


def linear_params(h, w, k=3, seed=0):
    rng = np.random.RandomState(seed)
    return {"w": jnp.asarray(rng.randn(h * w * 3, k), jnp.float32), "b": jnp.asarray(rng.randn(k), jnp.float32)}


def quadratic(params, x):
    """logits = [c * sum(x^2), sum(x) ]: IG from 0 of class 0 is c x^2 for exact rules."""
    flat = x.reshape(x.shape[0], -1)
    return jnp.stack([params["c"] * jnp.sum(flat**2, 1), jnp.sum(flat, 1)], axis=1)


class GapNet(nn.Module):
    """1x1 conv -> ReLU -> 2x2 average pool -> global average pool -> dense, with jaxviz's seams."""

    channels: int = 4
    num_classes: int = 3
    relu: Callable = nn.relu

    layers = ("conv1", "relu1", "pool1", "gap", "fc")
    cam_layers = ("pool1", "fc")
    min_size = 2

    def resolve(self, name, arg="taps"):
        if not isinstance(name, str):
            raise InputError(f"{arg}: expected layer names (str), got {name!r}")
        canonical = {"logits": "fc"}.get(name, name)
        if canonical not in self.layers:
            raise InputError(f"{arg}: unknown layer {name!r}; this network has {', '.join(self.layers)}")
        return canonical

    @nn.compact
    def __call__(self, x, taps=None, *, start=None, perturb=None, relu=None, train=False):
        relu = self.relu if relu is None else relu
        perturb = perturb or {}
        single = taps is None
        requested = ("fc",) if single else ((taps,) if isinstance(taps, str) else tuple(taps))
        wanted = {t: self.resolve(t) for t in requested}
        stop = max(self.layers.index(v) for v in wanted.values())
        begin = 0 if start is None else self.layers.index(self.resolve(start, "start")) + 1
        out = {}
        for name in self.layers[begin : stop + 1]:
            if name == "conv1":
                x = nn.Dense(self.channels, name="conv1")(x)
            elif name == "relu1":
                x = relu(x)
            elif name == "pool1":
                x = nn.avg_pool(x, (2, 2), strides=(2, 2))
            elif name == "gap":
                x = jnp.mean(x, axis=(1, 2))
            else:
                x = nn.Dense(self.num_classes, name="fc")(x)
            if name in perturb:
                x = x + perturb[name]
            for k, v in wanted.items():
                if v == name:
                    out[k] = x
        return x if single else out

    def run(self, variables, images, taps=(), *, perturb=None, relu=None, output=True):
        """The model contract's entry point."""
        got = self.apply(variables, images, taps=tuple(taps) + ("fc",), perturb=perturb, relu=relu)
        return (got["fc"] if output else None), {k: got[k] for k in taps}


def gapnet_params(seed=0, channels=4, num_classes=3):
    net = GapNet(channels=channels, num_classes=num_classes)
    rng = np.random.RandomState(seed)
    params = {
        "params": {
            "conv1": {"kernel": jnp.asarray(rng.randn(3, channels), jnp.float32),
                      "bias": jnp.asarray(0.3 * rng.randn(channels), jnp.float32)},
            "fc": {"kernel": jnp.asarray(rng.randn(channels, num_classes), jnp.float32),
                   "bias": jnp.asarray(rng.randn(num_classes), jnp.float32)},
        }
    }
    return net, params


def gapnet_closed_form(params, x, t):
    """Hand-derived quantities of GapNet for class t (numpy, float64)."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)["params"]
    x = np.asarray(x, np.float64)
    n, h, w, _ = x.shape
    K, b, W, c = p["conv1"]["kernel"], p["conv1"]["bias"], p["fc"]["kernel"], p["fc"]["bias"]
    z = x @ K + b
    r = np.maximum(z, 0)
    pooled = r.reshape(n, h // 2, 2, w // 2, 2, -1).mean((2, 4))
    logits = r.mean((1, 2)) @ W + c
    wt = W[:, t]  # (C,)
    g_r = np.broadcast_to(wt / (h * w), z.shape)  # d score / d r
    pos = (z > 0).astype(np.float64)
    out = {
        "z": z,
        "logits": logits,
        "saliency": (g_r * pos) @ K.T,
        "guided": (g_r * pos * (g_r > 0)) @ K.T,
        "deconv": np.maximum(g_r, 0) @ K.T,
        "cam": pooled @ wt,  # (N, h/2, w/2)
        "grad_cam": pooled @ wt / ((h // 2) * (w // 2)),
    }
    return out


def test_gapnet_forward_matches_closed_form():
    net, params = gapnet_params()
    x = jnp.asarray(np.random.RandomState(1).rand(2, 6, 8, 3), jnp.float32)
    np.testing.assert_allclose(net.apply(params, x), gapnet_closed_form(params, x, 0)["logits"], rtol=1e-5, atol=1e-6)
    taps = net.apply(params, x, taps=("pool1", "logits"))
    np.testing.assert_allclose(net.apply(params, taps["pool1"], start="pool1"), taps["logits"], rtol=1e-6)


def test_gapnet_gradient_matches_closed_form():
    net, params = gapnet_params()
    x = jnp.asarray(np.random.RandomState(2).rand(2, 6, 8, 3), jnp.float32)
    g = jax.grad(lambda v: net.apply(params, v)[:, 1].sum())(x)
    np.testing.assert_allclose(g, gapnet_closed_form(params, x, 1)["saliency"], rtol=1e-5, atol=1e-7)
