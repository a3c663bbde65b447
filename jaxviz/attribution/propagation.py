"""Layer-wise relevance propagation (LRP) on any JAX model: zennit's rules and composites, without module hooks.

LRP sends the target's score back through the network layer by layer, each
layer handing its input the share of relevance its rule assigns. zennit and
Captum attach those rules to modules of known types; jaxviz finds the layers
in the traced program (:mod:`jaxviz.models.layerwise`): every convolution and
dense layer with its bias (and an inference-mode BatchNorm after it, folded
in: zennit's ``MergeBatchNorm`` canonizer), average pools, max pools, residual
sums (zennit's ResNet canonizer) and activations, in jaxviz's models, a user's
linen or NNX module, or a plain function with functional ReLUs.

The rules (``x``: a layer's input, ``W``/``b`` its weight and bias, ``R`` the
relevance at its output, ``stab(z) = z + eps * (sign(z) + (z == 0))``;
``x+ = max(x, 0)``, ``W+ = max(W, 0)``, ...), as zennit 0.5 computes them:

* :class:`Epsilon`: ``x * W^T (R / stab(W x + b))`` (epsilon 0: LRP-0, which is gradient x input on ReLU nets);
* :class:`Gamma`: the generalised gamma rule (``W + gamma W+`` for positive outputs, ``W + gamma W-`` for
  negative ones, inputs split by sign);
* :class:`ZPlus`: ``x+ * W+^T s + x- * W-^T s`` with ``s = R / stab(W+ x+ + b+ + W- x-)``;
* :class:`AlphaBeta`: ``alpha`` times the positive and ``-beta`` times the negative contributions;
* :class:`ZBox`: the first layer of a network whose input lies in ``[low, high]`` (image units: jaxviz maps the
  bounds through the model's own preprocessing to the layer's input);
* :class:`Flat` and :class:`WSquare`: relevance spread by all-ones or squared weights (first layers);
* :class:`Norm`: ``x * grad(R / stab(z))`` for average pools and sums; :class:`Pass` for activations;
  :class:`Gradient`: keep the gradient (max pools: winner takes all, zennit's choice; ``Norm()`` on
  ``"max_pool"`` spreads relevance in proportion to the inputs instead).

A :class:`Composite` maps layer kinds (``"first"``, ``"conv"``, ``"dense"``,
``"avg_pool"``, ``"max_pool"``, ``"sum"``, ``"activation"``) and layer names
(``fnmatch`` patterns over flax module paths: ``"conv5_*"``, ``"layer4/*"``)
to rules; names win over ``"first"``, which wins over the kinds. The named
composites are zennit's: :func:`epsilon_gamma_box` (the default),
:func:`epsilon_plus`, :func:`epsilon_plus_flat`, :func:`epsilon_alpha2_beta1`,
:func:`epsilon_alpha2_beta1_flat`.

The relevance entering at the output is the target's score (``logit *
one-hot`` for a class; ``output * d score / d output`` for a callable target),
so with epsilon 0 and no biases the input relevance sums to the score. zennit
starts from whatever ``attr_output`` it is given; ``attr_output=lambda out:
out * one_hot`` gives jaxviz's numbers.

References: S. Bach et al., "On Pixel-Wise Explanations for Non-Linear
Classifier Decisions by Layer-Wise Relevance Propagation", PLoS ONE 2015;
G. Montavon et al., "Layer-Wise Relevance Propagation: An Overview", 2019;
C. J. Anders et al., "Software for Dataset-wide XAI: From Local Explanations
to Global Insights with Zennit, CoRelAy, and ViRelAy", 2021.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from . import _common
from ..errors import InputError, ModelError
from ..models import layerwise, protocol

__all__ = [
    "lrp", "Composite", "COMPOSITES", "composite", "epsilon_gamma_box", "epsilon_plus", "epsilon_plus_flat",
    "epsilon_alpha2_beta1", "epsilon_alpha2_beta1_flat", "Epsilon", "Gamma", "ZPlus", "AlphaBeta", "ZBox",
    "Flat", "WSquare", "Norm", "Pass", "Gradient", "RULE_KINDS",
]

#: The keys a composite maps besides layer names.
RULE_KINDS = ("first",) + layerwise.KINDS


def stabilize(z: jax.Array, epsilon: float) -> jax.Array:
    """zennit's stabiliser: ``z + epsilon * (sign(z) + (z == 0))``."""
    return z + (jnp.sign(z) + (z == 0).astype(z.dtype)) * jnp.asarray(epsilon, z.dtype)


def _div(r: jax.Array, z: jax.Array, epsilon: float) -> jax.Array:
    """``r / stabilize(z, epsilon)``, 0 where that is 0 (only with epsilon 0: a silent unit passes nothing on)."""
    d = stabilize(z, epsilon)
    return jnp.where(d == 0, jnp.zeros((), r.dtype), r / jnp.where(d == 0, jnp.ones((), d.dtype), d))


def _pos(a):
    return None if a is None else jnp.maximum(a, 0)


def _neg(a):
    return None if a is None else jnp.minimum(a, 0)


def _need_weight(rule: Any, aff: layerwise.Affine) -> None:
    if aff.weight is None:
        raise InputError(f"rules: {type(rule).__name__} needs a layer with weights; "
                         f"{aff.layer.kind if aff.layer else 'this'} layer {aff.layer.name if aff.layer else ''!r} "
                         "has none (use Norm, Epsilon, Pass or Gradient there)")


def _bias(aff: layerwise.Affine, zero_bias: bool) -> Any:
    return None if zero_bias else aff.bias


def _add(a, b):
    if a is None:
        return b
    if b is None:
        return a
    return a + b


@dataclasses.dataclass(frozen=True)
class Epsilon:
    """LRP-epsilon: ``x * W^T (R / stab(z, epsilon))`` (zennit's ``Epsilon``; 0 gives LRP-0)."""

    epsilon: float = 1e-6
    zero_bias: bool = False

    def relevance(self, aff: layerwise.Affine, x: Any, r: jax.Array) -> Any:
        z, pull = aff.vjp(x, aff.weight, _bias(aff, self.zero_bias))
        c = pull(_div(r, z, self.epsilon))
        return jax.tree.map(jnp.multiply, x, c)


@dataclasses.dataclass(frozen=True)
class Norm:
    """Relevance in proportion to each input's contribution (zennit's ``Norm``: average pools, residual sums)."""

    stabilizer: float = 1e-6

    def relevance(self, aff: layerwise.Affine, x: Any, r: jax.Array) -> Any:
        return Epsilon(self.stabilizer).relevance(aff, x, r)


@dataclasses.dataclass(frozen=True)
class Pass:
    """Relevance handed on unchanged (zennit's ``Pass``: activations)."""

    passes = True

    def relevance(self, aff: layerwise.Affine, x: Any, r: jax.Array) -> Any:
        return r


@dataclasses.dataclass(frozen=True)
class Gradient:
    """The layer's own gradient (max pools: the winner of each window takes the relevance)."""


@dataclasses.dataclass(frozen=True)
class ZPlus:
    """LRP-z+ (zennit's ``ZPlus``: alpha 1, beta 0, negative inputs allowed)."""

    stabilizer: float = 1e-6
    zero_bias: bool = False

    def relevance(self, aff: layerwise.Affine, x: jax.Array, r: jax.Array) -> jax.Array:
        _need_weight(self, aff)
        w, b = aff.weight, _bias(aff, self.zero_bias)
        xp = jnp.maximum(x, 0)
        z1, p1 = aff.vjp(xp, _pos(w), _pos(b))
        if aff.nonneg:
            return xp * p1(_div(r, z1, self.stabilizer))
        xn = jnp.minimum(x, 0)
        z2, p2 = aff.vjp(xn, _neg(w), None)
        s = _div(r, z1 + z2, self.stabilizer)
        return xp * p1(s) + xn * p2(s)


@dataclasses.dataclass(frozen=True)
class AlphaBeta:
    """LRP-alpha-beta (zennit's ``AlphaBeta``; ``alpha - beta`` must be 1)."""

    alpha: float = 2.0
    beta: float = 1.0
    stabilizer: float = 1e-6
    zero_bias: bool = False

    def __post_init__(self):
        if self.alpha < 0 or self.beta < 0 or abs(self.alpha - self.beta - 1.0) > 1e-12:
            raise InputError(f"AlphaBeta: expected alpha, beta >= 0 with alpha - beta == 1, "
                             f"got alpha={self.alpha}, beta={self.beta}")

    def relevance(self, aff: layerwise.Affine, x: jax.Array, r: jax.Array) -> jax.Array:
        _need_weight(self, aff)
        w, b = aff.weight, _bias(aff, self.zero_bias)
        wp, wn = _pos(w), _neg(w)
        xp = jnp.maximum(x, 0)
        zp, pp = aff.vjp(xp, wp, _pos(b))
        zn, pn = aff.vjp(xp, wn, _neg(b))
        if aff.nonneg:
            return (self.alpha * xp * pp(_div(r, zp, self.stabilizer))
                    - self.beta * xp * pn(_div(r, zn, self.stabilizer)))
        xn = jnp.minimum(x, 0)
        zp2, pp2 = aff.vjp(xn, wn, None)
        zn2, pn2 = aff.vjp(xn, wp, None)
        sp = _div(r, zp + zp2, self.stabilizer)
        sn = _div(r, zn + zn2, self.stabilizer)
        return (self.alpha * (xp * pp(sp) + xn * pp2(sp))
                - self.beta * (xp * pn(sn) + xn * pn2(sn)))


@dataclasses.dataclass(frozen=True)
class Gamma:
    """The generalised LRP-gamma rule (zennit 0.5's ``Gamma``: positive and negative outputs handled apart)."""

    gamma: float = 0.25
    stabilizer: float = 1e-6
    zero_bias: bool = False

    def relevance(self, aff: layerwise.Affine, x: jax.Array, r: jax.Array) -> jax.Array:
        _need_weight(self, aff)
        g = self.gamma
        w, b = aff.weight, _bias(aff, self.zero_bias)
        z = aff.forward(x, w, aff.bias)  # zennit's fifth, unmodified term keeps the bias
        w_up = w + g * _pos(w)      # for positive inputs of positive outputs, negative inputs of negative outputs
        w_down = w + g * _neg(w)
        b_up = None if b is None else b + g * _pos(b)
        b_down = None if b is None else b + g * _neg(b)
        xp = jnp.maximum(x, 0)
        o0, p0 = aff.vjp(xp, w_up, b_up)
        o2, p2 = aff.vjp(xp, w_down, b_down)
        if aff.nonneg:
            gp = jnp.where(z > 0, _div(r, o0, self.stabilizer), 0)
            gn = jnp.where(z < 0, _div(r, o2, self.stabilizer), 0)
            return xp * (p0(gp) + p2(gn))
        xn = jnp.minimum(x, 0)
        o1, p1 = aff.vjp(xn, w_down, None)
        o3, p3 = aff.vjp(xn, w_up, None)
        gp = jnp.where(z > 0, _div(r, o0 + o1, self.stabilizer), 0)
        gn = jnp.where(z < 0, _div(r, o2 + o3, self.stabilizer), 0)
        return xp * (p0(gp) + p2(gn)) + xn * (p1(gp) + p3(gn))


@dataclasses.dataclass(frozen=True)
class ZBox:
    """LRP-z^B for a first layer whose input lies in ``[low, high]`` (zennit's ``ZBox``).

    ``low``/``high`` are in the model's input units (images in [0, 1]: 0 and 1, the defaults; a scalar or one
    value per channel); jaxviz carries them through the model's preprocessing (the ImageNet normalisation) to
    the layer, as zennit users pass the normalised bounds.
    """

    low: Any = 0.0
    high: Any = 1.0
    stabilizer: float = 1e-6
    zero_bias: bool = False

    def __hash__(self):
        return hash((type(self), _hashable(self.low), _hashable(self.high), self.stabilizer, self.zero_bias))

    def __eq__(self, other):
        return type(other) is type(self) and hash(self) == hash(other)

    def relevance(self, aff: layerwise.Affine, x: jax.Array, r: jax.Array) -> jax.Array:
        _need_weight(self, aff)
        if aff.low is None:
            raise ModelError(f"ZBox: layer {aff.layer.name if aff.layer else ''!r} does not take the input through "
                             "elementwise steps only, so its input bounds are unknown; use ZBox on the first layer")
        w, b = aff.weight, _bias(aff, self.zero_bias)
        lo, hi = aff.low.astype(x.dtype), aff.high.astype(x.dtype)
        z, px = aff.vjp(x, w, b)
        zl, pl = aff.vjp(lo, _pos(w), _pos(b))
        zh, ph = aff.vjp(hi, _neg(w), _neg(b))
        s = _div(r, z - zl - zh, self.stabilizer)
        return x * px(s) - lo * pl(s) - hi * ph(s)


@dataclasses.dataclass(frozen=True)
class Flat:
    """LRP-flat: relevance spread uniformly over each output's receptive field (zennit's ``Flat``)."""

    stabilizer: float = 1e-6

    def relevance(self, aff: layerwise.Affine, x: jax.Array, r: jax.Array) -> jax.Array:
        w = None if aff.weight is None else jnp.ones_like(aff.weight)
        z, pull = aff.vjp(jnp.ones_like(x), w, None)
        return pull(_div(r, z, self.stabilizer))


@dataclasses.dataclass(frozen=True)
class WSquare:
    """LRP-w^2: relevance spread by squared weights (zennit's ``WSquare``, which squares the bias too)."""

    stabilizer: float = 1e-6
    zero_bias: bool = False

    def relevance(self, aff: layerwise.Affine, x: jax.Array, r: jax.Array) -> jax.Array:
        _need_weight(self, aff)
        b = _bias(aff, self.zero_bias)
        z, pull = aff.vjp(jnp.ones_like(x), aff.weight ** 2, None if b is None else b ** 2)
        return pull(_div(r, z, self.stabilizer))


def _hashable(v: Any) -> Any:
    a = np.asarray(v)
    return (a.shape, a.dtype.str, a.tobytes())


_RULE_TYPES = (Epsilon, Norm, Pass, Gradient, ZPlus, AlphaBeta, Gamma, ZBox, Flat, WSquare)


@dataclasses.dataclass(frozen=True)
class Composite:
    """Rules by layer kind (:data:`RULE_KINDS`) and by layer-name pattern; see the module docstring.

    Build one from a mapping: ``Composite.of({"first": ZBox(), "conv": Gamma(0.25), "dense": Epsilon()})``, or
    extend a named one: ``epsilon_plus().with_rules({"fc8": Epsilon(0.0)})``.
    """

    rules: tuple[tuple[str, Any], ...]

    @classmethod
    def of(cls, rules: Mapping[str, Any]) -> "Composite":
        if not isinstance(rules, Mapping):
            raise InputError(f"rules: expected a mapping of layer kinds or names to rules, got {type(rules).__name__}")
        out = []
        for key, rule in rules.items():
            if not isinstance(key, str) or not key:
                raise InputError(f"rules: keys must be layer kinds {RULE_KINDS} or layer-name patterns, got {key!r}")
            if rule is not None and not isinstance(rule, _RULE_TYPES) and not callable(getattr(rule, "relevance", None)):
                raise InputError(f"rules[{key!r}]: expected a rule (Epsilon(), Gamma(), ZPlus(), AlphaBeta(), ZBox(), "
                                 f"Flat(), WSquare(), Norm(), Pass(), Gradient()) or None, got {rule!r}")
            out.append((key, Gradient() if rule is None else rule))
        return cls(tuple(out))

    def with_rules(self, rules: Mapping[str, Any]) -> "Composite":
        """This composite with ``rules`` added (replacing the same keys)."""
        extra = Composite.of(rules).rules
        keys = {k for k, _ in extra}
        return Composite(tuple((k, r) for k, r in self.rules if k not in keys) + extra)

    def names(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self.rules if k not in RULE_KINDS)

    def choose(self, layer: layerwise.Layer) -> Any:
        rule = None
        for key, r in self.rules:
            if key not in RULE_KINDS and layerwise.matches(key, layer):
                rule = r
                break
        else:
            table = dict(self.rules)
            if layer.index == 0 and "first" in table:
                rule = table["first"]
            else:
                rule = table.get(layer.kind)
        return None if isinstance(rule, Gradient) else rule

    def bounds(self) -> tuple[Any, Any] | None:
        for _, r in self.rules:
            if isinstance(r, ZBox):
                return r.low, r.high
        return None

    def wants_max_pool(self) -> bool:
        return any(k == "max_pool" and not isinstance(r, Gradient) for k, r in self.rules)


def _base(stabilizer: float) -> dict:
    return {"activation": Pass(), "sum": Norm(stabilizer), "avg_pool": Norm(stabilizer), "max_pool": Gradient()}


def epsilon_gamma_box(low: Any = 0.0, high: Any = 1.0, epsilon: float = 1e-6, gamma: float = 0.25,
                      stabilizer: float = 1e-6) -> Composite:
    """zennit's ``EpsilonGammaBox``: ZBox first, Gamma on convolutions, Epsilon on dense layers."""
    return Composite.of({**_base(stabilizer), "conv": Gamma(gamma, stabilizer), "dense": Epsilon(epsilon),
                         "first": ZBox(low, high, stabilizer)})


def epsilon_plus(epsilon: float = 1e-6, stabilizer: float = 1e-6) -> Composite:
    """zennit's ``EpsilonPlus``: ZPlus on convolutions, Epsilon on dense layers."""
    return Composite.of({**_base(stabilizer), "conv": ZPlus(stabilizer), "dense": Epsilon(epsilon)})


def epsilon_plus_flat(epsilon: float = 1e-6, stabilizer: float = 1e-6) -> Composite:
    """zennit's ``EpsilonPlusFlat``: :func:`epsilon_plus` with Flat on the first layer."""
    return epsilon_plus(epsilon, stabilizer).with_rules({"first": Flat(stabilizer)})


def epsilon_alpha2_beta1(epsilon: float = 1e-6, stabilizer: float = 1e-6) -> Composite:
    """zennit's ``EpsilonAlpha2Beta1``: AlphaBeta(2, 1) on convolutions, Epsilon on dense layers."""
    return Composite.of({**_base(stabilizer), "conv": AlphaBeta(2.0, 1.0, stabilizer), "dense": Epsilon(epsilon)})


def epsilon_alpha2_beta1_flat(epsilon: float = 1e-6, stabilizer: float = 1e-6) -> Composite:
    """zennit's ``EpsilonAlpha2Beta1Flat``: :func:`epsilon_alpha2_beta1` with Flat on the first layer."""
    return epsilon_alpha2_beta1(epsilon, stabilizer).with_rules({"first": Flat(stabilizer)})


#: The named composites (``lrp(..., composite=name)``, ``jaxviz attribute --method lrp --composite name``).
COMPOSITES: dict[str, Callable[..., Composite]] = {
    "epsilon_gamma_box": epsilon_gamma_box,
    "epsilon_plus": epsilon_plus,
    "epsilon_plus_flat": epsilon_plus_flat,
    "epsilon_alpha2_beta1": epsilon_alpha2_beta1,
    "epsilon_alpha2_beta1_flat": epsilon_alpha2_beta1_flat,
}


def composite(spec: Any) -> Composite:
    """A :class:`Composite` from a name in :data:`COMPOSITES`, a Composite, or a mapping of kinds/names to rules."""
    if isinstance(spec, Composite):
        return spec
    if isinstance(spec, str):
        if spec not in COMPOSITES:
            raise InputError(f"composite: expected one of {', '.join(COMPOSITES)}, got {spec!r}")
        return COMPOSITES[spec]()
    if isinstance(spec, Mapping):
        return Composite.of(spec)
    raise InputError(f"composite: expected a name ({', '.join(COMPOSITES)}), a Composite or a mapping of layer "
                     f"kinds/names to rules, got {type(spec).__name__}")


_as_composite = composite  # for the functions whose ``composite`` argument shadows it


def _relevance(net, params, images, target_idx, target_fn, comp):
    f = _common.plain_forward(net)
    found: list = []

    def run(x):
        out, layers = layerwise.propagate(f, (params, x), 1, comp.choose, bounds=comp.bounds(),
                                          max_pool_rule=comp.wants_max_pool())
        found[:] = layers
        return out

    logits, pull = jax.vjp(run, images)
    g = jax.grad(lambda o: jnp.sum(_common.scores(o, target_fn, target_idx)))(logits)
    (rel,) = pull(g * logits)
    return rel, found


@functools.partial(jax.jit, static_argnames=("net", "target_fn", "comp"))
def _core(net, params, images, target_idx, *, target_fn, comp):
    _common.count_trace("lrp")
    rel, found = _relevance(net, params, images, target_idx, target_fn, comp)
    _check_layers(net, comp, found)  # at trace time: the one trace per shape also checks the composite
    return rel


def _check_layers(net: Any, comp: Composite, found: Sequence) -> None:
    if not any(layer.kind in ("conv", "dense") for layer, _ in found):
        raise ModelError(f"net: found no convolution or dense layer in {protocol.name_of(net)}; LRP needs "
                         "lax.conv_general_dilated or dot_general layers with parameter weights")
    names = [layer.name for layer, _ in found]
    for pattern in comp.names():
        if not any(layerwise.matches(pattern, layer) for layer, _ in found):
            shown = ", ".join(dict.fromkeys(n for n in names if n)) or "(the program names no layers)"
            raise InputError(f"composite: layer-name pattern {pattern!r} matches no layer; layers: {shown}")


def layers(net: Any, params: Any, images: Any, composite: Any = "epsilon_gamma_box") -> list[tuple[str, str, Any]]:
    """The layers LRP finds in ``net`` and the rule each gets: ``[(kind, name, rule)]`` in program order.

    Traces the network once (no computation). Use it to check what a composite does to your model.
    """
    comp = _as_composite(composite)
    net, images = _common.rule_model(net, images, "lrp")
    found: list = []

    def trace(p, x):
        rel, found[:] = _relevance(net, p, x, jnp.zeros((x.shape[0],), jnp.int32), None, comp)
        return rel

    jax.eval_shape(trace, params, images)
    return [(("first" if layer.index == 0 else layer.kind), layer.name, rule if rule is not None else Gradient())
            for layer, rule in found]


def lrp(net: Any, params: Any, images: jax.Array, target: Any, *, composite: Any = "epsilon_gamma_box") -> jax.Array:
    """Layer-wise relevance propagation with zennit's rules, on any model (see the module docstring).

    Args:
      net: a jaxviz model, flax module, adapted model or ``f(params, images) -> logits``.
      params: the model's parameters.
      images: (N, H, W, 3) float RGB in [0, 1].
      target: class index, one index per image (N,), or a callable logits (N, K) -> (N,).
      composite: a name in :data:`COMPOSITES` (``"epsilon_gamma_box"``, ``"epsilon_plus"``,
        ``"epsilon_plus_flat"``, ``"epsilon_alpha2_beta1"``, ``"epsilon_alpha2_beta1_flat"``), a
        :class:`Composite` (e.g. ``epsilon_gamma_box(gamma=0.5)``), or a mapping from layer kinds
        (:data:`RULE_KINDS`) and layer-name patterns to rules.

    Returns:
      (N, H, W, 3) relevance; summed over pixels it is the target's score less what biases absorb
      (conservation: exact with epsilon 0 and no biases). Equal to zennit 0.5's ``Gradient`` attributor with
      the same composite and ``attr_output = output * one_hot``.

    Raises:
      InputError: bad ``net``, ``images``, ``target`` or ``composite``, or a layer-name pattern that matches
        no layer.
      ModelError: no convolution or dense layer found in ``net``.

    Example::

        rel = lrp(net, params, images, target=207, composite="epsilon_plus_flat")
        heat = viz.reduce_channels(rel, "sum")
    """
    comp = _as_composite(composite)
    net, images = _common.rule_model(net, images, "lrp")
    fn, idx = _common.prepare_target(target, images.shape[0], net, params, images)
    return _core(net, params, images, idx, target_fn=fn, comp=comp)
