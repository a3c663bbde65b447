"""A jaxpr interpreter that swaps ReLUs and perturbs chosen values: the seams for models jaxviz did not write.

:func:`evaluate` traces a function to a jaxpr and evaluates it again, with two
changes a technique may ask for:

* ``relu``: every ReLU is computed by the given function instead (a custom-VJP
  ReLU for guided backprop, deconvnet or redirected ReLU). A ReLU is a ``max``
  of a value and a known zero (a literal 0, or a 0 that reached the ``max``
  through ``convert_element_type``/``broadcast_in_dim``/``reshape`` or a
  ``jit`` argument): that is what ``jax.nn.relu``, ``flax.linen.relu``,
  ``jnp.maximum(x, 0)`` and ``jnp.clip(x, 0)`` trace to. It is found inside
  ``jit``, ``scan``, ``while``, ``cond``, ``remat`` and custom-derivative bodies;
  a custom-derivative function (``jax.nn.relu`` is one) whose body holds a ReLU
  is evaluated through its body, since its own rule is the ReLU rule being
  replaced; one without keeps its rule.
* ``perturb``: a value added to chosen outputs of the function at the place
  where they are computed, so that every later use sees it (the gradient with
  respect to a zero perturbation is the gradient with respect to that
  intermediate, also inside a residual block). ``jit`` bodies are inlined as far
  as needed to reach the defining equation.

Everything else is re-bound unchanged, as ``jax.core.eval_jaxpr`` does, so the
values are the function's own to the bit.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

__all__ = ["evaluate", "count_relus", "support", "first_use"]

#: Primitives that pass a zero on as a zero (the paths a literal 0 takes to a ``max``).
_ZERO_KEEPING = frozenset({"convert_element_type", "broadcast_in_dim", "reshape", "copy", "copy_p", "squeeze",
                           "expand_dims"})
#: Call primitives whose body takes the equation's operands one to one (inlined when needed).
_CALLS = frozenset({"jit", "pjit", "closed_call", "core_call"})
_CUSTOM = frozenset({"custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr"})


def _is_zero_literal(v: Any) -> bool:
    if not isinstance(v, jcore.Literal):
        return False
    try:
        val = np.asarray(v.val)
    except Exception:  # noqa: BLE001 - an opaque literal is no zero
        return False
    return val.dtype.kind in "fiu" and val.size > 0 and not np.any(val)


def _zero(v: Any, zeros: set) -> bool:
    return _is_zero_literal(v) or (not isinstance(v, jcore.Literal) and v in zeros)


def _relu_operand(eqn: Any, zeros: set) -> int | None:
    """For a ReLU equation (``max(x, 0)``), the position of ``x`` among its operands; else None."""
    if eqn.primitive.name != "max" or len(eqn.invars) != 2:
        return None
    a, b = eqn.invars
    za, zb = _zero(a, zeros), _zero(b, zeros)
    if za == zb:
        return None
    x = b if za else a
    if not jnp.issubdtype(x.aval.dtype, jnp.floating) or tuple(x.aval.shape) != tuple(eqn.outvars[0].aval.shape):
        return None
    return 1 if za else 0


def _sub_jaxprs(params: Mapping[str, Any]):
    """(name, index or None, jaxpr) for every jaxpr in an equation's params (ClosedJaxpr or Jaxpr)."""
    for name, val in params.items():
        if isinstance(val, (jcore.ClosedJaxpr, jcore.Jaxpr)):
            yield name, None, val
        elif isinstance(val, (tuple, list)):
            for i, v in enumerate(val):
                if isinstance(v, (jcore.ClosedJaxpr, jcore.Jaxpr)):
                    yield name, i, v


def _open(j: Any) -> Any:
    return j.jaxpr if isinstance(j, jcore.ClosedJaxpr) else j


def _propagate_zeros(eqn: Any, zeros: set) -> None:
    if eqn.primitive.name in _ZERO_KEEPING and eqn.invars and _zero(eqn.invars[0], zeros):
        zeros.update(v for v in eqn.outvars if not isinstance(v, jcore.DropVar))


def _inner_zeros(eqn: Any, body: Any, zeros: set) -> set:
    """Zeros among a call's operands, as the body's input variables (calls take operands one to one)."""
    if eqn.primitive.name not in _CALLS:
        return set()
    return {iv for iv, v in zip(body.invars, eqn.invars) if _zero(v, zeros)}


def _count(jaxpr: Any, zeros: set | None = None, memo: dict | None = None) -> int:
    """Number of ReLU equations in ``jaxpr`` (an open Jaxpr), nested bodies included."""
    zeros = set(zeros or ())
    memo = {} if memo is None else memo
    n = 0
    for eqn in jaxpr.eqns:
        if _relu_operand(eqn, zeros) is not None:
            n += 1
        for _, _, sub in _sub_jaxprs(eqn.params):
            body = _open(sub)
            inner = _inner_zeros(eqn, body, zeros)
            key = (id(body), frozenset(id(v) for v in inner))
            if key not in memo:
                memo[key] = _count(body, inner, memo)
            n += memo[key]
        _propagate_zeros(eqn, zeros)
    return n


def _bind(eqn: Any, invals: list, params: Mapping[str, Any] | None = None) -> list:
    params = eqn.params if params is None else params
    bound = eqn.primitive.get_bind_params(params)
    subfuns, bind_params = bound if isinstance(bound, tuple) else ((), bound)
    with eqn.ctx.manager:
        out = eqn.primitive.bind(*subfuns, *invals, **bind_params)
    return list(out) if eqn.primitive.multiple_results else [out]


def _support_eqn(eqn: Any, invals: list) -> list | None:
    """The positive surrogate of a selecting equation (max, min, max pool, where), or None for any other."""
    name, p = eqn.primitive.name, eqn.params
    if name in ("max", "min") and len(invals) == 2:
        return [jnp.add(*invals).astype(eqn.outvars[0].aval.dtype)]
    if name in ("reduce_max", "reduce_min"):
        return [jnp.sum(invals[0], axis=tuple(p["axes"]))]
    if name in ("reduce_window_max", "reduce_window_min"):
        x = invals[0]
        # a concrete NumPy zero: lax.reduce_window then binds reduce_window_sum (differentiable), also under jit
        return [jax.lax.reduce_window(x, np.zeros((), x.dtype), jax.lax.add, p["window_dimensions"],
                                      p["window_strides"], p["padding"], p["base_dilation"], p["window_dilation"])]
    if name == "select_n" and jnp.issubdtype(eqn.outvars[0].aval.dtype, jnp.floating):
        return [functools.reduce(jnp.add, invals[1:])]
    return None


class _Interpreter:
    def __init__(self, relu: Callable | None, support: bool = False):
        self.relu = relu
        self.support = support
        self.memo: dict = {}

    def has_relu(self, body: Any, zeros: set = frozenset()) -> bool:
        return self.support or (self.relu is not None and _count(body, zeros, self.memo) > 0)

    def rebuilt(self, sub: Any) -> Any:
        """A loop/branch/remat body with its ReLUs swapped, as the same kind of jaxpr."""
        body = _open(sub)
        consts = sub.consts if isinstance(sub, jcore.ClosedJaxpr) else ()
        avals = [v.aval for v in body.invars]
        closed = jax.make_jaxpr(lambda *a: self.eval(body, consts, list(a)))(*avals)
        if isinstance(sub, jcore.ClosedJaxpr):
            return closed
        if closed.consts:  # an open body may not close over arrays: hoisting them is not worth it here
            raise NotImplementedError("a remat body that closes over arrays after the ReLU swap")
        return closed.jaxpr

    def eval(self, jaxpr: Any, consts: Any, args: list, targets: Mapping[Any, Any] | None = None,
             zeros: set | None = None) -> list:
        env: dict = {}
        zeros = set(zeros or ())
        targets = targets or {}

        def read(v):
            return v.val if isinstance(v, jcore.Literal) else env[v]

        def write(v, val, perturbed=False):
            if isinstance(v, jcore.DropVar):
                return
            if v in targets and not perturbed:
                val = val + targets[v].astype(val.dtype)
            env[v] = val

        for v, val in zip(jaxpr.constvars, consts):
            write(v, val)
        for v, val in zip(jaxpr.invars, args):
            write(v, val)
        for eqn in jaxpr.eqns:
            invals = [read(v) for v in eqn.invars]
            name = eqn.primitive.name
            pos = _relu_operand(eqn, zeros) if self.relu is not None else None
            done: frozenset = frozenset()
            surrogate = _support_eqn(eqn, invals) if self.support else None
            if surrogate is not None:
                outvals = surrogate
            elif pos is not None:
                outvals = [self.relu(invals[pos])]
            elif name in _CALLS or name in _CUSTOM:
                outvals, done = self.call(eqn, invals, targets, zeros)
            elif (self.relu is not None or self.support) and any(
                    self.has_relu(_open(s)) for _, _, s in _sub_jaxprs(eqn.params)):
                params = dict(eqn.params)
                for pname, i, sub in _sub_jaxprs(eqn.params):
                    new = self.rebuilt(sub)
                    if i is None:
                        params[pname] = new
                    else:
                        seq = list(params[pname])
                        seq[i] = new
                        params[pname] = type(eqn.params[pname])(seq)
                outvals = _bind(eqn, invals, params)
            else:
                outvals = _bind(eqn, invals)
            for v, val in zip(eqn.outvars, outvals):
                write(v, val, v in done)
            _propagate_zeros(eqn, zeros)
        return [read(v) for v in jaxpr.outvars]

    def call(self, eqn: Any, invals: list, targets: Mapping[Any, Any], zeros: set) -> tuple[list, frozenset]:
        """A jit-like or custom-derivative call: inlined when its body holds a ReLU to swap or a value to perturb.

        Returns the outputs and the set of output variables already perturbed inside the body.
        """
        sub = eqn.params["call_jaxpr"] if eqn.primitive.name in _CUSTOM else eqn.params["jaxpr"]
        body, consts = _open(sub), getattr(sub, "consts", ())
        inner_targets, done = {}, set()
        if eqn.primitive.name in _CALLS:
            for outer, inner in zip(eqn.outvars, body.outvars):
                # a perturbed output computed inside the body: perturb it there, so the body's later uses see it
                if outer in targets and not isinstance(inner, jcore.Literal) and inner not in body.invars:
                    inner_targets[inner] = targets[outer]
                    done.add(outer)
        inner_zeros = _inner_zeros(eqn, body, zeros)
        if not inner_targets and not self.has_relu(body, inner_zeros):
            return _bind(eqn, invals), frozenset()
        outs = self.eval(body, consts, invals[len(invals) - len(body.invars):], inner_targets, inner_zeros)
        return outs, frozenset(done)


def evaluate(fn: Callable, args: tuple, *, relu: Callable | None = None,
             perturb: Mapping[int, Any] | None = None) -> tuple[Any, int]:
    """``fn(*args)`` with its ReLUs computed by ``relu`` and ``perturb[k]`` added to flat output ``k`` where it is made.

    Args:
      fn: a JAX-traceable function of ``args`` (pytrees of arrays).
      args: its arguments.
      relu: the function every ReLU is replaced by (None: ReLUs unchanged).
      perturb: flat output index (in ``jax.tree.leaves(fn(*args))`` order) ->
        an array of that output's shape, added where the output is computed.

    Returns:
      ``(outputs, relus)``: ``fn``'s outputs (same pytree) and the number of
      ReLU equations found (each ``max(x, 0)`` in the traced program once; a
      ReLU inside a loop body counts once).
    """
    closed, shapes = jax.make_jaxpr(fn, return_shape=True)(*args)
    jaxpr = closed.jaxpr
    n = _count(jaxpr)
    targets: dict = {}
    flat_args = jax.tree_util.tree_leaves(args)
    for k, delta in dict(perturb or {}).items():
        v = jaxpr.outvars[k]
        if isinstance(v, jcore.Literal):
            continue  # a constant output: nothing depends on it through the program
        if v in jaxpr.invars:  # the output is an input passed through: perturb the input itself
            i = jaxpr.invars.index(v)
            flat_args[i] = flat_args[i] + jnp.asarray(delta, flat_args[i].dtype)
        else:
            targets[v] = jnp.asarray(delta)
    if relu is None and not targets:
        return fn(*args), n
    out = _Interpreter(relu).eval(jaxpr, closed.consts, flat_args, targets)
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(shapes), out), n


def support(fn: Callable, args: tuple) -> Any:
    """``fn(*args)`` as a positive surrogate for dependency measurements: every ReLU the identity and every
    selection (max, min, max pool, ``where``) a sum of its operands, so that with positive parameters and inputs
    the gradient of an output is positive exactly on the inputs it depends on (see ``protocol.geometry``)."""
    closed, shapes = jax.make_jaxpr(fn, return_shape=True)(*args)
    out = _Interpreter(None, support=True).eval(closed.jaxpr, closed.consts, jax.tree_util.tree_leaves(args))
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(shapes), out)


def count_relus(fn: Callable, *args: Any) -> int:
    """Number of ReLUs :func:`evaluate` finds (and would swap) in ``fn(*args)``; traces ``fn`` only."""
    return _count(jax.make_jaxpr(fn)(*args).jaxpr)


def _first_use(jaxpr: Any, sources: Mapping[Any, set], order: dict, counter: list) -> None:
    """Records, for every source index, the running equation count at its first use in ``jaxpr``.

    ``sources`` maps variables to the source indices they carry. A call's body takes its operands one to one
    and is walked in place (its equations count in program order); any other equation (a loop, a branch) uses
    all its operands at once.
    """
    env = dict(sources)
    for eqn in jaxpr.eqns:
        here = counter[0]
        counter[0] += 1
        used = [env[v] for v in eqn.invars if not isinstance(v, jcore.Literal) and v in env]
        subs = list(_sub_jaxprs(eqn.params))
        if used and len(subs) == 1 and eqn.primitive.name in _CALLS | {"remat", "checkpoint", "custom_jvp_call",
                                                                        "custom_vjp_call", "scan"}:
            body = _open(subs[0][2])
            if len(body.invars) == len(eqn.invars):
                inner = {iv: env[v] for iv, v in zip(body.invars, eqn.invars)
                         if not isinstance(v, jcore.Literal) and v in env}
                _first_use(body, inner, order, counter)
                continue
        for s in used:
            for k in s:
                order.setdefault(k, here)


def first_use(fn: Callable, *args: Any) -> list[float]:
    """For each leaf of ``args`` (flattened), the position in ``fn``'s traced program of the first operation
    that reads it (``inf`` if none does): the order in which a model uses its parameters, measured."""
    leaves, treedef = jax.tree_util.tree_flatten(args)
    closed = jax.make_jaxpr(lambda *flat: fn(*jax.tree_util.tree_unflatten(treedef, list(flat))))(*leaves)
    jaxpr = closed.jaxpr
    order: dict = {}
    _first_use(jaxpr, {v: {i} for i, v in enumerate(jaxpr.invars)}, order, [0])
    return [float(order.get(i, np.inf)) for i in range(len(leaves))]
