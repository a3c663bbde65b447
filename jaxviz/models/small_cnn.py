"""A small CNN classifier (conv/ReLU/max-pool blocks, global average pool, linear head).

This is the classifier of the course notes (seed 000): a few 3x3
convolution + ReLU blocks with 2x2 max pools between them, dropout, trained
with SGD with momentum. The head is a global average pool followed by one
Dense layer, so Class Activation Mapping (Zhou et al. 2016) applies: the
class map is the Dense layer's weights applied to the last ReLU's channels
at every position. It is small enough to train in seconds on the procedural
shapes of :mod:`jaxviz.datasets` (see :mod:`jaxviz.train`), which gives the
attribution methods a model that *means* something without downloading
pretrained weights.

It follows the same protocol as :class:`jaxviz.models.VGG`: ordered tap
names in ``.layers``, ``.resolve(name)``, and ``__call__(x, taps=None, *,
start=None, relu=None, train=False)`` with the computation stopping at the
deepest tap asked for. With the default three blocks the taps are::

    conv1 relu1 pool1 conv2 relu2 pool2 conv3 relu3 gap fc     ("logits" = "fc")

There is no pool after the last block: ``relu3`` (a quarter of the input's
size) is the feature map CAM and Grad-CAM read; ``cam_layers`` names it
together with the Dense head.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxviz.models.small_cnn import small_cnn
    >>> net = small_cnn(num_classes=4)
    >>> params = net.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    >>> net.apply(params, jnp.zeros((2, 32, 32, 3))).shape
    (2, 4)
    >>> net.apply(params, jnp.zeros((2, 32, 32, 3)), taps="relu3")["relu3"].shape
    (2, 8, 8, 64)

Reference: M. Lin, Q. Chen, S. Yan, "Network In Network", ICLR 2014 (global
average pooling); B. Zhou et al., "Learning Deep Features for Discriminative
Localization", CVPR 2016 (CAM); N. Srivastava et al., "Dropout", JMLR 2014.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from .. import _checks
from . import _taps
from ..errors import InputError
from .layers import conv, max_pool

__all__ = ["SmallCNN", "small_cnn", "small_cnn_layers", "fold_batch_norm", "ALIASES", "MEAN", "STD"]

ALIASES = {"logits": "fc"}
BN_EPSILON = 1e-5
#: Normalisation applied inside the model: inputs in [0, 1] map to about [-2, 2].
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


def _flat_normal(fan_in_gain: float):
    """N(0, gain / fan_in) initialiser drawn as one flat vector, then reshaped.

    Same distribution as an untruncated ``variance_scaling(gain, "fan_in",
    "normal")``; drawing 1-D makes XLA:CPU compile the threefry sampler
    several times faster.
    """

    def init(key, shape, dtype=jnp.float32):
        std = math.sqrt(fan_in_gain / math.prod(shape[:-1]))
        return (std * jax.random.normal(key, (math.prod(shape),), dtype)).reshape(shape)

    return init


he_normal = _flat_normal(2.0)  # Kaiming He et al. 2015, for convolutions followed by ReLU
lecun_normal = _flat_normal(1.0)  # the linear head


def small_cnn_layers(num_blocks: int) -> tuple[str, ...]:
    """The ordered tap names of a :class:`SmallCNN` with ``num_blocks`` conv blocks."""
    names: list[str] = []
    for b in range(1, num_blocks + 1):
        names += [f"conv{b}", f"relu{b}"]
        if b < num_blocks:
            names.append(f"pool{b}")
    return tuple(names) + ("gap", "fc")


class SmallCNN(_taps.Tapped, nn.Module):
    """Conv/ReLU/max-pool blocks, global average pooling and a Dense head, with named taps.

    Attributes:
      num_classes: width of ``fc``.
      widths: channels of the 3x3 convolution in each block; a 2x2 max pool
        follows every block but the last.
      dropout: dropout rate on the pooled features before ``fc``, used only
        when called with ``train=True`` (needs a ``"dropout"`` rng).
      normalize: apply ``(x - mean) / std`` inside the model, so inputs are RGB
        in [0, 1].
      mean, std: the normalisation constants.
      relu: the activation used at every ReLU tap.
      (Initialisation: He normal for the convolutions, LeCun normal for the
      head, zero biases.)
      batch_norm: put a BatchNorm (``bn1``, ``bn2`` ...) after every
        convolution, part of the ``conv`` taps. Used for training (it removes
        the long loss plateau this model otherwise sits on for a random
        number of steps); :func:`fold_batch_norm` then folds the statistics
        into the convolutions, giving a plain conv/ReLU/pool network.
    """

    num_classes: int = 4
    widths: Sequence[int] = (16, 32, 64)
    dropout: float = 0.25
    normalize: bool = True
    mean: Sequence[float] = MEAN
    std: Sequence[float] = STD
    relu: Callable[[jax.Array], jax.Array] = nn.relu
    batch_norm: bool = False

    aliases = ALIASES

    @property
    def layers(self) -> tuple[str, ...]:
        """All tap names, input to output."""
        return small_cnn_layers(len(self.widths))

    @property
    def cam_layers(self) -> tuple[str, str]:
        """(feature tap before the global average pool, the Dense head's param name) for CAM."""
        return (f"relu{len(self.widths)}", "fc")

    @property
    def min_size(self) -> int:
        """Smallest input height/width the network accepts (one pixel left after the last pool)."""
        return 2 ** (len(self.widths) - 1)


    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        taps: str | Sequence[str] | None = None,
        *,
        start: str | None = None,
        perturb: Mapping[str, jax.Array] | None = None,
        relu: Callable[[jax.Array], jax.Array] | None = None,
        train: bool = False,
    ) -> jax.Array | dict[str, jax.Array]:
        """Runs the network.

        Args:
          x: (N, H, W, 3) float RGB in [0, 1] (H, W >= ``min_size``); or, with
            ``start``, the activation of the tap named there.
          taps: None to return the logits (N, num_classes); a name or a
            sequence of names to return a dict ``name -> activation``.
            Computation stops at the deepest tap asked for.
          start: enter the network after this tap; ``x`` is its activation.
          perturb: tap name -> array added to that tap's activation.
          relu: overrides the module's ``relu`` for this call (guided
            backprop and deconvnet swap in a custom-VJP ReLU here).
          train: enable dropout (needs a ``"dropout"`` rng).

        Returns:
          The logits, or a dict of the requested taps (keys as given).

        Raises:
          InputError: an input of the wrong shape or dtype, or an unknown tap name.
        """
        relu = self.relu if relu is None else relu
        prepare = functools.partial(
            _taps.prepare_images, min_size=self.min_size, normalize=self.normalize, mean=self.mean, std=self.std
        )
        return _taps.run(self, x, taps, start, lambda name, x: self._layer(name, x, relu, train), prepare, perturb)

    def _layer(self, name: str, x: jax.Array, relu, train: bool) -> jax.Array:
        if name.startswith("conv"):
            block = int(name[4:])
            x = nn.Conv(
                self.widths[block - 1], (3, 3), padding=((1, 1), (1, 1)),
                kernel_init=he_normal, name=name, conv_general_dilated=conv,
            )(x)
            if self.batch_norm:
                x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=BN_EPSILON, name=f"bn{block}")(x)
            return x
        if name.startswith("relu"):
            return relu(x)
        if name.startswith("pool"):
            return max_pool(x, (2, 2))  # == nn.max_pool values and gradients, faster on CPU
        if name == "gap":
            return x.mean(axis=(1, 2))
        # fc: dropout on the pooled features, then the linear head
        if train and self.dropout > 0:
            x = _taps.dropout(self, self.dropout, x)
        return nn.Dense(self.num_classes, kernel_init=lecun_normal, name="fc")(x)


def fold_batch_norm(net: SmallCNN, variables: Mapping[str, Any]) -> tuple[SmallCNN, dict]:
    """Folds a BatchNorm-trained network's statistics into its convolutions.

    With ``s = scale / sqrt(var + eps)`` per output channel, ``conv(x) * s +
    (bias - mean) * s + beta`` is a convolution with kernel ``kernel * s`` and
    bias ``(bias - mean) * s + beta``: the folded network computes the same
    function as the original in inference mode (``train=False``), up to
    float32 round-off, with no BatchNorm left in it.

    Args:
      net: a :class:`SmallCNN` with ``batch_norm=True``.
      variables: its variables, ``{"params": ..., "batch_stats": ...}``.

    Returns:
      ``(plain_net, params)``: ``net`` with ``batch_norm=False`` and its
      ``{"params": ...}``.

    Raises:
      InputError: ``net`` has no BatchNorm or ``variables`` lack ``batch_stats``.
    """
    if not getattr(net, "batch_norm", False):
        raise InputError("net: expected a SmallCNN with batch_norm=True, got one without BatchNorm")
    if "batch_stats" not in variables:
        raise InputError(f"variables: expected 'params' and 'batch_stats', got {', '.join(variables)}")
    params, stats = variables["params"], variables["batch_stats"]
    folded = {}
    for name, leaves in params.items():
        if name.startswith("bn"):
            continue
        if name.startswith("conv"):
            block = name[4:]
            bn, st = params[f"bn{block}"], stats[f"bn{block}"]
            s = bn["scale"] / jnp.sqrt(st["var"] + BN_EPSILON)
            folded[name] = {"kernel": leaves["kernel"] * s, "bias": (leaves["bias"] - st["mean"]) * s + bn["bias"]}
        else:
            folded[name] = dict(leaves)
    return net.clone(batch_norm=False), {"params": folded}


def small_cnn(num_classes: int = 4, widths: Sequence[int] = (16, 32, 64), dropout: float = 0.25,
              **kwargs: Any) -> SmallCNN:
    """The seed-000 classifier: 3x3 conv/ReLU blocks with 2x2 max pools, GAP + Dense head.

    Args:
      num_classes: number of output classes.
      widths: channels per conv block (a max pool after all but the last).
      dropout: dropout rate before the head (``train=True`` only).
      **kwargs: other :class:`SmallCNN` fields (``normalize``, ``mean``, ``std``,
        ``relu``, ``batch_norm``).

    Returns:
      A :class:`SmallCNN` module; initialise with ``net.init(key, images)`` or
      train one with :func:`jaxviz.train.fit`.

    Raises:
      InputError: ``num_classes`` not a positive int, ``widths`` empty or not
        positive ints, ``dropout`` outside [0, 1).
    """
    num_classes = _checks.positive_int(num_classes, "num_classes")
    widths = tuple(widths) if isinstance(widths, (tuple, list)) else widths
    if not isinstance(widths, tuple) or not widths:
        raise InputError(f"widths: expected a non-empty sequence of positive ints, got {widths!r}")
    for w in widths:
        _checks.positive_int(w, "widths")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise InputError(f"dropout: expected a rate in [0, 1), got {dropout!r}")
    return SmallCNN(num_classes=num_classes, widths=tuple(int(w) for w in widths), dropout=float(dropout), **kwargs)
