"""Activation maximisation: synthesise the image a unit of the network wants to see.

Three composable parts, each a small value you can build, combine and pass
around (all hashable or pytrees, so a second call with the same parts reuses
the compiled program):

* **objectives** (:class:`Objective`): ``channel``, ``neuron``,
  ``class_logit``, ``direction``, ``diversity`` (across a batch), plus the
  image penalties ``total_variation`` and ``l2``. They combine with ``+``,
  ``-`` and scaling by numbers; ``sum()`` works. An objective maps the
  dict of activations (and ``"input"``, the image the network saw) to a
  scalar to *maximise*.
* **parameterisations** (:func:`pixel`, :func:`fourier`): how the optimised
  variables become an image. ``fourier`` optimises a 1/f-scaled spectrum
  (Olah et al.'s preconditioning); ``decorrelate=True`` optimises colours in
  a decorrelated basis (ImageNet's colour-covariance square root); a sigmoid
  keeps pixels in [0, 1].
* **transforms** (:func:`standard_transforms`, :class:`Pad`,
  :class:`Jitter`, :class:`RandomScale`, :class:`RandomRotate`,
  :class:`Compose`): random, differentiable transformations applied before
  every step, each drawing from its own explicit PRNG key (transformation
  robustness).

The optimiser is any optax transformation (Adam, learning rate 0.05, by
default). The steps run in one ``lax.scan`` (on the CPU as a host loop over
one compiled step, which XLA:CPU runs faster; see :mod:`jaxviz.execution`);
:func:`render_each` and
:func:`render_channels` ``vmap`` the whole optimisation over a batch of
objectives (e.g. channel indices), so one compiled call renders them all.

Example::

    import jax
    from jaxviz import models, weights, image, viz
    from jaxviz.featvis import render as R
    net, params = models.vgg19(), weights.load("vgg19")
    obj = R.channel("relu4_1", 12) - 0.05 * R.total_variation()
    img = R.render(net, params, obj, key=jax.random.key(0), size=128, steps=256)
    grid = R.render_channels(net, params, "relu4_1", range(16), key=jax.random.key(1))
    image.save(viz.grid(grid), "relu4_1.png")

References: C. Olah, A. Mordvintsev, L. Schubert, "Feature Visualization",
Distill 2017; the lucid library (github.com/tensorflow/lucid); D. Erhan et
al., "Visualizing Higher-Layer Features of a Deep Network", 2009.
"""

from __future__ import annotations

from ...models.relus import redirected_relu
from .loop import RenderState, host_loop, render, render_channels, render_each, render_init, render_update
from .objectives import Objective, channel, class_logit, direction, diversity, l2, neuron, total_variation
from .params import ImageParam, fourier, pixel
from .transforms import Compose, Jitter, Pad, RandomRotate, RandomScale, standard_transforms

__all__ = [
    "Objective",
    "channel",
    "neuron",
    "class_logit",
    "direction",
    "diversity",
    "total_variation",
    "l2",
    "ImageParam",
    "pixel",
    "fourier",
    "Pad",
    "Jitter",
    "RandomScale",
    "RandomRotate",
    "Compose",
    "standard_transforms",
    "redirected_relu",
    "host_loop",
    "RenderState",
    "render_init",
    "render_update",
    "render",
    "render_each",
    "render_channels",
]
