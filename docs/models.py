"""Draws docs/models_user_cnn.png and docs/models_resnet50.png: jaxviz's techniques on models it did not write.

    python docs/models.py            # about 4 minutes on a 2-core CPU, offline

1. A user's own flax.linen CNN, written as a user writes one (functional
   ``nn.relu``, flax's max pool, a global-average-pool head) and trained here
   for a minute with a plain optax loop on jaxviz's procedural shapes. Then,
   through ``models.tapped`` and nothing else: Grad-CAM at the layer jaxviz
   measures as the deepest spatial one, guided backprop (its ReLUs found by the
   jaxpr rewrite), the feature maps of its second convolution and DeepDream on it.
2. torchvision's ResNet-50 in jaxviz, with random weights (ImageNet weights
   cannot be downloaded here: ``weights.load("resnet50")`` fetches them where
   the network is open) on scikit-learn's sample photo, Grad-CAM at ``layer4`` and ``layer3.5`` (inside a stage),
   guided backprop and feature maps. Random weights draw noise: the point is
   that every technique runs on it, not the picture.
"""

from __future__ import annotations

import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from jaxviz import attribution as A  # noqa: E402
from jaxviz import datasets, dream, image, models, viz, weights  # noqa: E402
from jaxviz.featvis import maps  # noqa: E402
from jaxviz.models import protocol  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


class UserCNN(nn.Module):
    """A user's CNN: nothing jaxviz-specific in it."""

    @nn.compact
    def __call__(self, x):
        x = (x - 0.5) / 0.25
        x = nn.relu(nn.Conv(32, (3, 3))(x))
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = nn.relu(nn.Conv(64, (3, 3))(x))
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = nn.relu(nn.Conv(96, (3, 3))(x))
        return nn.Dense(len(datasets.CLASSES))(x.mean((1, 2)))


def train_user_cnn(steps: int = 1500, batch: int = 64):
    data = datasets.shapes(4096, size=32, seed=0)
    net = UserCNN()
    params = jax.jit(net.init)(jax.random.key(0), data.images[:1])
    opt = optax.adam(optax.cosine_decay_schedule(3e-3, steps))
    state = opt.init(params)

    @jax.jit
    def step(params, state, x, y):
        def loss(p):
            return optax.softmax_cross_entropy_with_integer_labels(net.apply(p, x), y).mean()

        value, g = jax.value_and_grad(loss)(params)
        updates, state = opt.update(g, state, params)
        return optax.apply_updates(params, updates), state, value

    rng = np.random.default_rng(0)
    images, labels = jnp.asarray(data.images), jnp.asarray(data.labels)
    for i in range(steps):
        idx = rng.integers(0, len(labels), batch)
        params, state, value = step(params, state, images[idx], labels[idx])
    test = datasets.shapes(512, size=32, seed=1)
    acc = float((jnp.argmax(net.apply(params, jnp.asarray(test.images)), -1) == jnp.asarray(test.labels)).mean())
    print(f"user CNN: loss {float(value):.3f}, held-out accuracy {acc:.1%}")
    return net, params, acc


def _tile(img, size):
    img = np.asarray(img, np.float32)
    return np.asarray(jax.image.resize(jnp.asarray(img), (size, size, 3), "nearest"))


def _row(net, params, x, target, cam_layers, dream_layer, caption, size=128, channels=4):
    """input | Grad-CAM per layer | guided backprop | feature maps | DeepDream, for one image."""
    tiles = [viz.label(_tile(x[0], size), caption)]
    for layer in cam_layers:
        gc = A.grad_cam(net, params, x, target, layer=layer, upsample=True)
        tiles.append(viz.label(_tile(viz.overlay(np.asarray(x[0]), np.asarray(gc[0])), size), f"Grad-CAM {layer}"))
    gb = A.guided_backprop(net, params, x, target)
    tiles.append(viz.label(_tile(viz.normalize(np.asarray(gb[0]), signed=True) * 0.5 + 0.5, size), "guided backprop"))
    fm = np.asarray(maps.feature_maps(net, params, x, dream_layer))[0]
    strongest = np.argsort(-fm.mean((0, 1)))[:channels]
    dreamed = dream.dream(net, params, x, key=jax.random.key(0), layers=dream_layer, steps=10, octaves=2,
                          step_size=0.01, progress=False)
    for c in strongest:
        m = fm[..., c]
        tiles.append(viz.label(_tile(viz.colormap(viz.normalize(m), "viridis"), size), f"{dream_layer} ch {c}"))
    tiles.append(viz.label(_tile(np.asarray(dreamed[0]), size), f"DeepDream {dream_layer}"))
    return tiles


def main():
    net, params, acc = train_user_cnn()
    tapped = models.tapped(net, input_shape=(1, 32, 32, 3))
    print("taps:", tapped.layers)
    test = datasets.shapes(4, size=32, seed=7)
    rows = []
    for i in range(4):
        x = jnp.asarray(test.images[i:i + 1])
        pred = int(jnp.argmax(net.apply(params, x), -1)[0])
        layer = protocol.default_layer(tapped, params, x.shape)  # measured: the deepest spatial tap
        rows += _row(tapped, params, x, pred, [layer], "Conv_1", f"{datasets.CLASSES[pred]}")
    pic = viz.grid(rows, ncols=8, pad=3)
    image.save(pic, os.path.join(HERE, "models_user_cnn.png"))
    print(f"wrote docs/models_user_cnn.png (held-out accuracy {acc:.1%})")

    r50 = models.resnet50()
    rp = weights.random("resnet50", seed=0)
    from sklearn.datasets import load_sample_image  # a photo that ships with scikit-learn

    photo = image.to_float(load_sample_image("china.jpg")[None])
    photo = jax.image.resize(jnp.asarray(photo[:, :, 80:507]), (1, 224, 224, 3), "linear")
    row = _row(r50, rp, photo, 0, ["layer4", "layer3.5"], "layer2", "ResNet-50, random weights", size=160,
               channels=3)
    image.save(viz.grid(row, ncols=8, pad=3), os.path.join(HERE, "models_resnet50.png"))
    print("wrote docs/models_resnet50.png")


if __name__ == "__main__":
    main()
