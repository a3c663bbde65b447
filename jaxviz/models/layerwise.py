"""The layer-rule seam: give every linear layer, pool, sum and activation of any JAX function its own backward rule.

This is what layer-wise relevance propagation needs, found by rewriting the
traced program instead of hooking modules, so it works on jaxviz's models, a
user's linen or NNX module and a plain function alike. :func:`propagate`
traces ``fn`` to a jaxpr and evaluates it again; each *layer* it finds is
computed by a ``jax.custom_vjp`` function whose forward pass is the layer's
own (the values are the function's, to the bit) and whose backward pass is
the rule a chooser picks for it. Everything else keeps its gradient, which is
the right relevance rule for reshapes, transposes, padding, slicing and
concatenation (they move relevance without changing it) and winner-take-all
for max pools.

What counts as a layer (``Layer.kind``):

* ``"conv"`` / ``"dense"``: a ``conv_general_dilated`` / ``dot_general`` of a
  value computed from the input with one computed from the parameters, together
  with the elementwise affine operations that follow it with parameter
  operands (the bias add; an inference-mode BatchNorm's subtract, multiply and
  add). A per-output-channel multiplier is folded into the weight, which is the
  BatchNorm canonizer of zennit (``MergeBatchNorm``) found in the program;
* ``"avg_pool"``: a sum over windows or axes (``reduce_window_sum``,
  ``reduce_sum``: average pools and global average pooling, with the division
  that follows), and a convolution or matrix product with a *fixed* (not
  parameter) operand, such as an adaptive average pool written as an einsum;
* ``"max_pool"``: ``reduce_window_max`` and ``reduce_max`` (jaxviz's
  ``max_pool`` is a reshape and ``reduce_max``);
* ``"sum"``: the sum of two values both computed from the input (a residual
  connection): zennit's ``Sum`` canonizer for ResNets, found in the program;
* ``"activation"``: a ReLU (any ``max(x, 0)``, as in ``models._jaxpr``),
  ``tanh`` or ``logistic``.

``Layer.index`` numbers the conv and dense layers in program order (0 is the
first layer, which LRP composites treat specially); ``Layer.name`` is the
module path flax records in the program's name stack (``conv1_1``,
``layer1/0/conv1``; empty for a plain function that names nothing).

A chooser maps each layer to a rule or to ``None`` (keep the gradient). A rule
is an object with ``relevance(layer_fn, x, R) -> R_in``, where ``layer_fn`` is
an :class:`Affine` describing the layer (its folded weight and bias, its
input bounds where known) and ``R`` the relevance arriving at its output.

Elementwise operations with a constant operand that are not part of a layer
(the ImageNet normalisation in front of the first convolution) pass relevance
through unchanged, as zennit sees a model whose input is already normalised.
Layers inside ``lax.scan``, ``while`` or ``cond`` bodies keep their gradient.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from . import _jaxpr
from .layers import PATCH_SCOPE, conv_primitives

__all__ = ["Layer", "Affine", "propagate", "KINDS"]

#: The layer kinds a chooser sees.
KINDS = ("conv", "dense", "avg_pool", "max_pool", "sum", "activation")

_LINEAR = frozenset({"conv_general_dilated", "dot_general"})
_POOLS = frozenset({"reduce_window_sum", "reduce_sum"})
_MAXES = frozenset({"reduce_window_max", "reduce_max"})
_ACTIVATIONS = frozenset({"tanh", "logistic"})
_CHAIN = frozenset({"add", "sub", "mul", "div"})
#: Operations that carry ZBox's input bounds forward (elementwise with constants, or moving values).
_BOUNDED = frozenset({"add", "sub", "mul", "div", "neg", "convert_element_type", "reshape", "transpose",
                      "broadcast_in_dim", "copy", "squeeze", "expand_dims"})
_MOVES = frozenset({"reshape", "transpose", "broadcast_in_dim", "copy", "squeeze", "expand_dims", "slice",
                    "pad", "concatenate", "convert_element_type", "rev", "gather", "dynamic_slice"})


@dataclasses.dataclass(frozen=True)
class Layer:
    """One layer found in the program: its kind, flax module path and index among conv/dense layers (-1: none)."""

    kind: str
    name: str
    index: int


def _name(eqn: Any) -> str:
    parts = str(eqn.source_info.name_stack).split("/")
    keep = [p for p in parts[1:] if p and not any(c in p for c in ".,()->")]
    return "/".join(keep)


@dataclasses.dataclass(frozen=True)
class Affine:
    """A layer as rules see it: ``z = lin(x, weight) * scale + bias`` (``weight``/``scale``/``bias`` may be None).

    ``nonneg``: the input is known to be non-negative (it comes out of a ReLU
    or a max pool of one), so rules may skip the terms of its negative part.
    ``low``/``high``: bounds of the input, for ZBox (None where not known).
    ``own``: the layer's own function of its input, where ``lin`` stands in for it (a max pool, whose ``lin``
    is the matching sum pool; its gradient routes to the first maximum of each window, as PyTorch's does).
    """

    lin: Callable
    weight: Any
    scale: Any
    bias: Any
    nonneg: bool
    low: Any = None
    high: Any = None
    layer: Layer | None = None
    own: Callable | None = None

    def vjp(self, x: Any, weight: Any, bias: Any) -> tuple[Any, Callable]:
        """``(z, pull)`` for ``z = lin(x, weight) * scale + bias``; ``pull(s)`` is the linear part's transpose."""
        def f(x_):
            z = self.lin(x_, weight)
            if self.scale is not None:
                z = z * self.scale
            return z

        z, pull = jax.vjp(f, x)
        if bias is not None:
            z = z + bias
        return z, lambda s: pull(s.astype(z.dtype))[0]

    def forward(self, x: Any, weight: Any, bias: Any) -> Any:
        return self.vjp(x, weight, bias)[0]


@dataclasses.dataclass
class _Pending:
    """A layer's output not yet computed: the linear op and the elementwise chain after it."""

    layer: Layer
    eqn: Any
    x: Any
    weight: Any
    data_pos: int
    nonneg: bool
    bounds: Any
    chain: list = dataclasses.field(default_factory=list)  # (eqn, const value, data position)
    scale: Any = None
    bias: Any = None
    rule: Any = None


def _feature_axes(eqn: Any, weight_pos: int, w_ndim: int, z_ndim: int) -> tuple[int, int] | None:
    """(output feature axis, weight's output axis) of a conv/dot layer, or None when there is not exactly one."""
    p = eqn.params
    if eqn.primitive.name == "conv_general_dilated":
        dn = p["dimension_numbers"]
        return dn.out_spec[1], dn.rhs_spec[0]
    (lc, rc), (lb, rb) = p["dimension_numbers"]
    contract, batch = (rc, rb) if weight_pos == 1 else (lc, lb)
    free = [d for d in range(w_ndim) if d not in contract and d not in batch]
    if len(free) != 1:
        return None
    if weight_pos == 1:
        return z_ndim - 1, free[0]
    return len(batch), free[0]


def _fold(p: _Pending, z_ndim: int) -> tuple[Any, Any, Any]:
    """(weight, scale, bias) with a per-output-channel scale folded into the weight where it can be."""
    w, scale, bias = p.weight, p.scale, p.bias
    if scale is None or w is None:
        return w, scale, bias
    axes = _feature_axes(p.eqn, 1 - p.data_pos, jnp.ndim(w), z_ndim)
    s = jnp.asarray(scale)
    s = s.reshape((1,) * (z_ndim - s.ndim) + s.shape)
    if axes is None or any(n != 1 for i, n in enumerate(s.shape) if i != axes[0]):
        return w, scale, bias
    out_ax = axes[1]
    vec = s.reshape(-1)
    shape = [1] * jnp.ndim(w)
    shape[out_ax] = vec.shape[0]
    return w * vec.reshape(shape).astype(w.dtype), None, bias


def _lin_fn(eqn: Any, data_pos: int) -> Callable:
    if eqn.primitive.name in _LINEAR:
        def lin(x, w):
            ins = [x, w] if data_pos == 0 else [w, x]
            return _jaxpr._bind(eqn, ins)[0]
    else:
        def lin(x, _w):
            return _jaxpr._bind(eqn, [x])[0]
    return lin


def _replay(p: _Pending, x: Any, w: Any, consts: Sequence[Any]) -> Any:
    """The layer's own forward values: the linear op and its chain, as the program computes them."""
    z = _lin_fn(p.eqn, p.data_pos)(x, w)
    for (eqn, _, pos), c in zip(p.chain, consts):
        z = _jaxpr._bind(eqn, [z, c] if pos == 0 else [c, z])[0]
    return z


def _with_rule(rule: Any, p: _Pending) -> Any:
    """The pending layer computed by a custom-VJP function whose backward pass is ``rule``."""
    consts = [c for _, c, _ in p.chain]
    z_ndim = len(p.chain[-1][0].outvars[0].aval.shape) if p.chain else len(p.eqn.outvars[0].aval.shape)
    w, scale, bias = _fold(p, z_ndim)
    lo, hi = p.bounds if p.bounds is not None else (None, None)
    lin = _lin_fn(p.eqn, p.data_pos)

    @jax.custom_vjp
    def layer(x, w_orig, consts, w, scale, bias, lo, hi):
        return _replay(p, x, w_orig, consts)

    def fwd(x, w_orig, consts, w, scale, bias, lo, hi):
        return _replay(p, x, w_orig, consts), (x, w_orig, consts, w, scale, bias, lo, hi)

    def bwd(res, r):
        x, w_orig, consts, w, scale, bias, lo, hi = res
        aff = Affine(lin, w, scale, bias, p.nonneg, lo, hi, p.layer)
        rel = rule.relevance(aff, x, r)
        zeros = jax.tree.map(jnp.zeros_like, (w_orig, consts, w, scale, bias, lo, hi))
        return (rel.astype(x.dtype), *zeros)

    layer.defvjp(fwd, bwd)
    return layer(p.x, p.weight, consts, w, scale, bias, lo, hi)


def _sum_with_rule(rule: Any, eqn: Any, a: Any, b: Any, layer: Layer) -> Any:
    lin = (lambda xs, _w: xs[0] + xs[1])

    @jax.custom_vjp
    def add(a, b):
        return _jaxpr._bind(eqn, [a, b])[0]

    def fwd(a, b):
        return _jaxpr._bind(eqn, [a, b])[0], (a, b)

    def bwd(res, r):
        rel = rule.relevance(Affine(lin, None, None, None, False, layer=layer), res, r)
        return rel[0].astype(res[0].dtype), rel[1].astype(res[1].dtype)

    add.defvjp(fwd, bwd)
    return add(a, b)


def _passing(fn: Callable, x: Any, *consts: Any) -> Any:
    """``fn(x, *consts)`` (shape-preserving in ``x``) whose backward pass hands relevance on unchanged."""
    @jax.custom_vjp
    def f(x, consts):
        return fn(x, *consts)

    def bwd(consts, r):
        return r, jax.tree.map(jnp.zeros_like, consts)

    f.defvjp(lambda x, consts: (fn(x, *consts), consts), bwd)
    return f(x, consts)


class _State:
    def __init__(self, choose: Callable[[Layer], Any], max_pool_rule: bool, pass_scaling: bool):
        self.choose = choose
        self.max_pool_rule = max_pool_rule
        self.pass_scaling = pass_scaling
        self.index = 0
        self.found: list[tuple[Layer, Any]] = []
        self.uses: dict = {}
        self.inline_memo: dict = {}

    def rule(self, layer: Layer) -> Any:
        rule = self.choose(layer)
        self.found.append((layer, rule))
        return rule

    def use_counts(self, jaxpr: Any) -> dict:
        key = id(jaxpr)
        if key not in self.uses:
            counts: dict = {}
            for eqn in jaxpr.eqns:
                for v in eqn.invars:
                    if not isinstance(v, jcore.Literal):
                        counts[v] = counts.get(v, 0) + 1
            for v in jaxpr.outvars:
                if not isinstance(v, jcore.Literal):
                    counts[v] = counts.get(v, 0) + 1
            self.uses[key] = (jaxpr, counts)
        return self.uses[key][1]

    def wants_inline(self, body: Any) -> bool:
        """A custom-derivative body holding something with a rule (its own derivative rule is then replaced)."""
        key = id(body)
        if key in self.inline_memo:
            return self.inline_memo[key]
        self.inline_memo[key] = False
        want = False
        zeros: set = set()
        for eqn in body.eqns:
            name = eqn.primitive.name
            if (name in _LINEAR or name in _POOLS or name in _ACTIVATIONS
                    or (name in _MAXES and self.max_pool_rule) or _jaxpr._relu_operand(eqn, zeros) is not None):
                want = True
            for _, _, sub in _jaxpr._sub_jaxprs(eqn.params):
                want = want or self.wants_inline(_jaxpr._open(sub))
            _jaxpr._propagate_zeros(eqn, zeros)
            if want:
                break
        self.inline_memo[key] = want
        return want


def _bounds_of(eqn: Any, invals: list, data: list, bounds: dict) -> Any:
    if eqn.primitive.name not in _BOUNDED or sum(data) != 1 or len(eqn.outvars) != 1:
        return None
    pos = data.index(True)
    b = bounds.get(eqn.invars[pos])
    if b is None:
        return None
    outs = []
    for v in b:
        ins = list(invals)
        ins[pos] = v
        outs.append(_jaxpr._bind(eqn, ins)[0])
    return jnp.minimum(*outs), jnp.maximum(*outs)


def _eval(state: _State, jaxpr: Any, consts: Sequence[Any], args: Sequence[Any], is_data: Sequence[bool],
          is_param: Sequence[bool], nonneg: Sequence[bool], bounds_in: Sequence[Any]) -> tuple[list, list, list]:
    env: dict = {}
    data: set = set()
    param: set = set()
    positive: set = set()
    bounds: dict = {}
    zeros: set = set()
    uses = state.use_counts(jaxpr)

    def value(v):
        if isinstance(v, jcore.Literal):
            return v.val
        val = env[v]
        if isinstance(val, _Pending):
            val = _materialize(state, val)
            env[v] = val
        return val

    for v, c in zip(jaxpr.constvars, consts):
        env[v] = c
    for v, a, d, p, n, b in zip(jaxpr.invars, args, is_data, is_param, nonneg, bounds_in):
        env[v] = a
        if d:
            data.add(v)
        if p:
            param.add(v)
        if n:
            positive.add(v)
        if b is not None:
            bounds[v] = b

    def known(v):
        return not isinstance(v, jcore.Literal) and v in data

    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        d = [known(v) for v in eqn.invars]
        outv = eqn.outvars
        if not any(d):  # parameters and constants: computed as they are
            outs = _jaxpr._bind(eqn, [value(v) for v in eqn.invars])
            for v, o in zip(outv, outs):
                env[v] = o
                if any(not isinstance(u, jcore.Literal) and u in param for u in eqn.invars):
                    param.add(v)
            _jaxpr._propagate_zeros(eqn, zeros)
            continue
        for v in outv:
            data.add(v)
        pend = [isinstance(env.get(v), _Pending) if not isinstance(v, jcore.Literal) else False
                for v in eqn.invars]
        # 1. an elementwise affine step right after a layer: part of the layer
        if any(pend) and name in _CHAIN and sum(d) == 1:
            pos = d.index(True)
            src = eqn.invars[pos]
            other = eqn.invars[1 - pos]
            p: _Pending = env[src]
            same_shape = tuple(outv[0].aval.shape) == tuple(src.aval.shape)
            okay = (uses.get(src, 0) == 1 and same_shape and not (name == "div" and pos == 1)
                    and (p.weight is None or isinstance(other, jcore.Literal) or other in param))
            if okay:
                c = value(other)
                p = dataclasses.replace(p, chain=[*p.chain, (eqn, c, pos)])
                p.scale, p.bias = _compose(name, pos, p.scale, p.bias, c)
                env[outv[0]] = p
                continue
        invals = [value(v) for v in eqn.invars]
        layer_out = None
        # 2. a linear layer, a pool
        if name in _LINEAR and sum(d) == 1:
            pos = d.index(True)
            other = eqn.invars[1 - pos]
            kind = ("conv" if name == "conv_general_dilated" else "dense") if (
                not isinstance(other, jcore.Literal) and other in param) else "avg_pool"
            idx = -1
            if kind != "avg_pool":
                idx, state.index = state.index, state.index + 1
            layer = Layer(kind, _name(eqn), idx)
            src = eqn.invars[pos]
            layer_out = _Pending(layer, eqn, invals[pos], invals[1 - pos], pos, src in positive, bounds.get(src))
        elif name in _POOLS and len(eqn.invars) == 1:
            src = eqn.invars[0]
            layer_out = _Pending(Layer("avg_pool", _name(eqn), -1), eqn, invals[0], None, 0, src in positive,
                                 None)
        if layer_out is not None:
            layer_out.rule = state.rule(layer_out.layer)
            env[outv[0]] = layer_out
            if layer_out.nonneg and name in _POOLS:
                positive.add(outv[0])
            continue
        # 3. activations, max pools, sums, calls
        relu_pos = _jaxpr._relu_operand(eqn, zeros)
        if relu_pos is not None or (name in _ACTIVATIONS and len(eqn.invars) == 1):
            rule = state.rule(Layer("activation", _name(eqn), -1))
            if relu_pos is not None:
                def fn(x):  # max(x, 0); the gradient at 0 is 0, as PyTorch's ReLU's
                    return jnp.where(x > 0, x, jnp.zeros((), x.dtype))
            else:
                def fn(x, _e=eqn):
                    return _jaxpr._bind(_e, [x])[0]
            x = invals[relu_pos if relu_pos is not None else 0]
            if rule is None:
                outs = [fn(x)]
            elif getattr(rule, "passes", False):
                outs = [_passing(fn, x)]
            else:
                outs = [_activation_with_rule(rule, fn, x)]
            if relu_pos is not None:
                positive.add(outv[0])
        elif name in _MAXES and len(eqn.invars) == 1:
            rule = state.rule(Layer("max_pool", _name(eqn), -1))
            x = invals[0]
            outs = _jaxpr._bind(eqn, invals) if rule is None else [_max_with_rule(rule, eqn, x)]
            if eqn.invars[0] in positive:
                positive.add(outv[0])
        elif name == "add" and all(d) and len(eqn.invars) == 2 and \
                tuple(eqn.invars[0].aval.shape) == tuple(eqn.invars[1].aval.shape):
            layer = Layer("sum", _name(eqn), -1)
            rule = state.rule(layer)
            outs = _jaxpr._bind(eqn, invals) if rule is None else [_sum_with_rule(rule, eqn, *invals, layer)]
            if all(v in positive for v in eqn.invars):
                positive.add(outv[0])
        elif (name in _jaxpr._CALLS or (name in _jaxpr._CUSTOM and state.wants_inline(
                _jaxpr._open(eqn.params["call_jaxpr"])))):
            sub = eqn.params["call_jaxpr"] if name in _jaxpr._CUSTOM else eqn.params["jaxpr"]
            body, bconsts = _jaxpr._open(sub), getattr(sub, "consts", ())
            k = len(invals) - len(body.invars)
            vs = eqn.invars[k:]
            outs, odata, opos = _eval(
                state, body, bconsts, invals[k:], [known(v) for v in vs],
                [not isinstance(v, jcore.Literal) and v in param for v in vs],
                [not isinstance(v, jcore.Literal) and v in positive for v in vs],
                [None if isinstance(v, jcore.Literal) else bounds.get(v) for v in vs])
            for v, dd, pp in zip(outv, odata, opos):
                if not dd:
                    data.discard(v)
                if pp:
                    positive.add(v)
        elif state.pass_scaling and name in ("mul", "div", "neg") and sum(d) == 1 and len(outv) == 1 and \
                tuple(outv[0].aval.shape) == tuple(eqn.invars[d.index(True)].aval.shape):
            pos = d.index(True)

            def fn(x, *others, _e=eqn, _pos=pos):
                ins = list(others)
                ins.insert(_pos, x)
                return _jaxpr._bind(_e, ins)[0]

            outs = [_passing(fn, invals[pos], *(v for i, v in enumerate(invals) if i != pos))]
            b = _bounds_of(eqn, invals, d, bounds)
            if b is not None:
                bounds[outv[0]] = b
        else:
            outs = _jaxpr._bind(eqn, invals)
            b = _bounds_of(eqn, invals, d, bounds)
            if b is not None:
                bounds[outv[0]] = b
            if name in _MOVES and eqn.invars and eqn.invars[0] in positive:
                positive.add(outv[0])
        for v, o in zip(outv, outs):
            env[v] = o
        _jaxpr._propagate_zeros(eqn, zeros)
    outs = [value(v) for v in jaxpr.outvars]
    return (outs, [known(v) for v in jaxpr.outvars],
            [not isinstance(v, jcore.Literal) and v in positive for v in jaxpr.outvars])


def _compose(name: str, pos: int, scale: Any, bias: Any, c: Any) -> tuple[Any, Any]:
    """(scale, bias) of ``z * scale + bias`` after one more elementwise step with constant ``c``."""
    if name == "add":
        return scale, c if bias is None else bias + c
    if name == "sub":
        if pos == 0:
            return scale, -c if bias is None else bias - c
        return (-1.0 if scale is None else -scale), (c if bias is None else c - bias)
    if name == "mul":
        return (c if scale is None else scale * c), (None if bias is None else bias * c)
    # div, z / c
    return ((1.0 / c) if scale is None else scale / c), (None if bias is None else bias / c)


def _materialize(state: _State, p: _Pending) -> Any:
    rule = getattr(p, "rule", None)
    consts = [c for _, c, _ in p.chain]
    if rule is None:
        return _replay(p, p.x, p.weight, consts)
    return _with_rule(rule, p)


def _activation_with_rule(rule: Any, fn: Callable, x: Any) -> Any:
    @jax.custom_vjp
    def act(x):
        return fn(x)

    def bwd(x, r):
        return (rule.relevance(Affine(lambda x_, _w: fn(x_), None, None, None, False), x, r).astype(x.dtype),)

    act.defvjp(lambda x: (fn(x), x), bwd)
    return act(x)


def _max_with_rule(rule: Any, eqn: Any, x: Any) -> Any:
    """A max pool whose backward pass is ``rule`` applied to the matching sum pool (proportional redistribution)."""
    p = eqn.params
    if eqn.primitive.name == "reduce_max":
        def pool(x_, _w):
            return jnp.sum(x_, axis=tuple(p["axes"]))

        def own(x_):  # reduce_max's own gradient splits ties; PyTorch's pools route to the first maximum
            axes = tuple(p["axes"])
            rest = [a for a in range(x_.ndim) if a not in axes]
            moved = jnp.transpose(x_, rest + list(axes))
            flat = moved.reshape(moved.shape[:len(rest)] + (-1,))
            hot = jax.nn.one_hot(jnp.argmax(jax.lax.stop_gradient(flat), axis=-1), flat.shape[-1], dtype=x_.dtype)
            return jnp.sum(flat * hot, axis=-1)
    else:
        def own(x_):
            return _jaxpr._bind(eqn, [x_])[0]

        def pool(x_, _w):
            return jax.lax.reduce_window(x_, np.zeros((), x_.dtype), jax.lax.add, p["window_dimensions"],
                                         p["window_strides"], p["padding"], p["base_dilation"], p["window_dilation"])

    @jax.custom_vjp
    def mx(x):
        return _jaxpr._bind(eqn, [x])[0]

    def bwd(x, r):
        return (rule.relevance(Affine(pool, None, None, None, False, own=own), x, r).astype(x.dtype),)

    mx.defvjp(lambda x: (_jaxpr._bind(eqn, [x])[0], x), bwd)
    return mx(x)


def propagate(fn: Callable, args: tuple, data: int, choose: Callable[[Layer], Any], *,
              bounds: tuple[Any, Any] | None = None, max_pool_rule: bool = False,
              pass_scaling: bool = True) -> tuple[Any, list]:
    """``fn(*args)`` with every layer computed by a custom-VJP function whose backward pass is its chosen rule.

    Args:
      fn: a JAX-traceable function.
      args: its arguments; ``args[data]`` is the input relevance flows back to (one array).
      data: the position of the input among ``args``.
      choose: ``Layer -> rule or None`` (None: the layer keeps its gradient).
      bounds: ``(low, high)`` arrays (broadcastable to the input) carried through the elementwise steps in
        front of the first layer, for rules that need the bounds of a layer's input (ZBox).
      max_pool_rule: look inside custom-derivative functions for max pools (their own rule is replaced).
      pass_scaling: elementwise multiplications and divisions by constants outside layers hand relevance on
        unchanged (LRP); False keeps their gradient (DeepLIFT's multipliers).

    Returns:
      ``(outputs, layers)``: ``fn``'s outputs (values unchanged) and ``[(Layer, rule)]`` in program order.
    """
    leaves, treedef = jax.tree_util.tree_flatten(args)
    sizes = [len(jax.tree_util.tree_leaves(a)) for a in args]
    start = sum(sizes[:data])
    if sizes[data] != 1:
        raise TypeError("propagate: the input must be a single array")

    def flat(*xs):
        return fn(*jax.tree_util.tree_unflatten(treedef, list(xs)))

    with conv_primitives():  # jaxviz's models: every convolution a conv primitive, not a patch product
        closed, shapes = jax.make_jaxpr(flat, return_shape=True)(*leaves)
        if _has_patch_products(closed.jaxpr):  # from a function jitted before, outside the context: trace it anew
            with jax.disable_jit():
                closed, shapes = jax.make_jaxpr(flat, return_shape=True)(*leaves)
    state = _State(choose, max_pool_rule, pass_scaling)
    n = len(leaves)
    x = leaves[start]
    b = None
    if bounds is not None:
        lo, hi = (jnp.broadcast_to(jnp.asarray(v, x.dtype), x.shape) for v in bounds)
        b = (lo, hi)
    outs, _, _ = _eval(state, closed.jaxpr, closed.consts, leaves, [i == start for i in range(n)],
                       [i != start for i in range(n)], [False] * n, [b if i == start else None for i in range(n)])
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(shapes), outs), state.found


def _has_patch_products(jaxpr: Any) -> bool:
    """Whether the program (sub-programs included) computes a convolution as jaxviz's patch product."""
    return any(PATCH_SCOPE in str(eqn.source_info.name_stack)
               or any(_has_patch_products(sub) for sub in jcore.jaxprs_in_params(eqn.params))
               for eqn in jaxpr.eqns)


def matches(pattern: str, layer: Layer) -> bool:
    """A layer-name pattern (``fnmatch``: ``conv5_*``, ``layer4/*``) matches this layer's name."""
    return bool(layer.name) and fnmatch.fnmatchcase(layer.name, pattern)


def layer_names(found: Sequence[tuple[Layer, Any]]) -> list[str]:
    return [layer.name for layer, _ in found if layer.name]

