"""Neural style transfer (Gatys et al.): optimise the pixels with Optax.

The image is the only thing that changes: its activations in a VGG network
are pulled towards the content image's (content loss) and its Gram matrices
towards the style images' (style loss), optionally with a total-variation
prior. Everything that varies per step is one jitted function of an explicit
state, optax style::

    state = style.init(net, params, content, style_image, preset="gatys")
    for _ in range(100):
        state, losses = style.update(net, params, state)
    out = style.result(state)                       # (N, H, W, 3) in [0, 1]

or all at once, with multi-scale, colour preservation, checkpoints, resume
and a progress bar::

    out = style.run(net, params, content, [style_a, style_b], style_weights=[0.7, 0.3],
                    preset="gatys", size=512, scales=2, checkpoint="out.ckpt.npz")

Presets (:data:`PRESETS`), every field overridable by keyword:

* ``"gatys"``: content ``relu4_2``, style ``relu1_1``..``relu5_1`` (weight 1/5
  each, as in the paper) on a VGG; on any other model the taps it suggests
  (:func:`jaxviz.models.protocol.suggested_layers`: one style tap per stage,
  measured), L-BFGS with a zoom line search, content init,
  500 steps. Costs are relative (:mod:`jaxviz.losses`, ``"relative"``: each
  layer's squared error over its target's summed square), content weight 1,
  style weight 3: no layer's or network's activation scale decides the
  balance, so it holds on torchvision's VGGs, Keras/Caffe's and fine-tuned
  copies alike (chosen on trained VGG16 features; see ``PRESETS``).
* ``"pytorch-tutorial"``: what ``"gatys"`` was before: neural-style's and the
  PyTorch tutorial's scaling (Gram / (C H W), mean squared errors, content
  weight 1, style weight 5e6 x 1/5 = the tutorial's 1e6 per layer), tuned on
  torchvision's VGG19 on [0, 1] images; on other weights it takes all
  content away or no style.
* ``"course"``: the deeplearning.ai course (seed 003): the course's costs
  (:mod:`jaxviz.losses` defaults), alpha 10, beta 40, style layers at 0.2
  each, Adam with learning rate 2.0 on 0-255 pixels, init 0.6 * uniform(-20,
  20) + 0.4 * content (mixed around the ImageNet mean colour, as the course
  mixes mean-subtracted images), 200 steps, ``feature_scale`` =
  :data:`CAFFE_SCALE`. The course's ``conv4_2`` and ``convK_1`` nodes are
  convolution *plus ReLU* (``_conv2d_relu`` in its ``nst_utils``), which
  jaxviz calls ``relu4_2`` and ``reluK_1``; its VGG19 average-pools
  (``models.vgg19(classifier=False, pooling="avg")``).
* ``"tf-tutorial"``: the tf.keras eager-execution tutorial (seed 004): content
  ``block5_conv2`` (= ``relu5_2``), style ``blockK_conv1`` (= ``reluK_1``) at
  1/5 each, Gram / (H W) with mean squared errors, content weight 1e3, style
  weight 1e-2, Adam(5.0, b1=0.99, eps=0.1) on 0-255 pixels, content init,
  1000 steps, ``feature_scale`` = :data:`CAFFE_SCALE`.

The two Adam presets were tuned on VGGs fed 0-255 mean-subtracted images,
whose activations are about 58x those of torchvision's VGG on [0, 1]
images: ``feature_scale`` multiplies activations by that factor before the
losses so their weights (and the TF tutorial's large Adam epsilon) mean what
they meant there. Pretrained weights differ anyway (MatConvNet/Keras vs
torchvision), so expect the same behaviour, not the same pictures.

``pixel_scale`` is the unit the optimiser sees: 255 lets the two Adam presets
keep their published learning rates and noise amplitudes; the network always
gets [0, 1] images. Pixels are kept in [0, ``pixel_scale``] by projection
after every step, and the objective is evaluated on the clipped image (so
L-BFGS's line search never leaves the valid range either).

The original papers use average pooling; jaxviz nets pool as they were built
(``models.vgg19(classifier=False, pooling="avg")`` for that).

Batches: ``content`` may hold N images, all stylised against the same style
targets in one compiled call per step (``vmap``). Images are independent
problems: the result for each equals the result of running it alone. For
L-BFGS the default is one image per call (``batch_size=1``), because under
``vmap`` both branches of its line search's ``lax.cond`` would run.
``batch_size`` picks how many images are vectorised together; results do
not depend on it.

References:
    L. A. Gatys, A. S. Ecker, M. Bethge, "A Neural Algorithm of Artistic
    Style", arXiv:1508.06576 (2015) and "Image Style Transfer Using
    Convolutional Neural Networks", CVPR 2016. L. A. Gatys et al.,
    "Preserving Color in Neural Artistic Style Transfer", arXiv:1606.05897
    (2016). J. Johnson, neural-style (2015).
"""


from __future__ import annotations

from . import losses
from .colour import luminance, original_colors
from .multiscale import run
from .objective import Losses, State, evaluate, init, result, style_targets, update
from .presets import CAFFE_SCALE, INITS, OPTIMIZERS, PRESETS, Config, config  # noqa: F401  (INITS, OPTIMIZERS: the choices)

__all__ = [
    "losses",
    "Config",
    "Losses",
    "CAFFE_SCALE",
    "PRESETS",
    "State",
    "config",
    "evaluate",
    "init",
    "luminance",
    "original_colors",
    "result",
    "run",
    "style_targets",
    "update",
]
