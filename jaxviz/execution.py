"""How jaxviz runs work on the device it has: the execution policy in one place.

Every technique that loops (optimisation steps, chunks of samples or
perturbations, DeepDream tiles) asks this module how to loop, so that the
choices below are made once:

* **Host loop or scan.** XLA:CPU compiles the backward convolutions of a loop
  body (``lax.scan`` / ``fori_loop`` / ``lax.map``) without the fusions it uses
  at the top level of a program, so each backward pass inside a loop runs
  several times slower there (measured in ``benchmarks/featvis.py`` and
  ``benchmarks/attribution.py``). On the CPU, eager calls therefore loop on the
  host over one compiled step or chunk; on GPU/TPU, and whenever the caller is
  itself being traced (a technique inside the user's ``jax.jit``), the loop is
  one ``lax.scan`` / ``lax.map``. Both give the same numbers.
* **Chunking** (the one ``batch_size`` knob): ``n`` items are evaluated
  ``batch_size`` at a time (:func:`chunked_map`, :func:`chunked_sum` inside a
  trace; :func:`host_map`, :func:`host_sum` eagerly). A few chunks are
  unrolled rather than looped (:data:`UNROLL`).
* **Reverse mode** (:func:`reverse_mode`): code that only differentiates a
  model in reverse mode gets convolutions whose input gradient is a forward
  convolution with the flipped kernel, which XLA:CPU runs at full speed in loop
  bodies.

Nothing here changes a result; it changes how fast a result arrives.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from . import _checks

__all__ = [
    "on_cpu",
    "is_traced",
    "host_loop",
    "host_loop_for",
    "schedule",
    "reverse_mode",
    "UNROLL",
    "chunked_map",
    "chunked_sum",
    "host_map",
    "host_sum",
    "vmap_or_call",
]

#: Loops of up to this many chunks (or tiles) are unrolled inside a trace instead of using ``lax.scan``.
UNROLL = 8


def on_cpu() -> bool:
    """True when JAX's default backend is XLA:CPU (the one whose loop bodies are slow)."""
    return jax.default_backend() == "cpu"


def is_traced(*trees: Any) -> bool:
    """True when any leaf is a tracer (the caller is being traced by jit/vmap/grad from outside)."""
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(trees))


def host_loop(loop: str = "auto") -> bool:
    """Whether optimisation steps run as a host loop over one compiled step (else one ``lax.scan``).

    ``loop`` is ``"auto"``, ``"scan"`` or ``"host"``. ``"auto"`` picks the host
    loop on the CPU, where XLA:CPU compiles the backward convolutions of a loop
    body several times slower than outside loops, and a host loop costs ~0.1 ms
    of dispatch per step; elsewhere (GPU, TPU) one ``lax.scan``. Both give the
    same numbers: step ``i`` is the same function of the same key.
    """
    _checks.one_of(loop, "loop", ("auto", "scan", "host"))
    return loop == "host" or (loop == "auto" and on_cpu())


def host_loop_for(loop: str, *trees: Any) -> bool:
    """:func:`host_loop`, except that ``"auto"`` under a trace (``trees`` hold tracers) picks the scan.

    Traced, a host loop would be unrolled into one program of ``steps`` steps.
    """
    return host_loop(loop) and not (loop == "auto" and is_traced(*trees))


def schedule(steps: int, progress: bool, host: bool) -> list[int]:
    """Steps per compiled call: one each on a host loop; else everything (or ~10 chunks with a progress bar)."""
    if host:
        return [1] * steps
    if not progress or steps < 20:
        return [steps]
    target = steps / 10
    d = min((d for d in range(1, steps + 1) if steps % d == 0), key=lambda d: (abs(d - target), -d))
    return [d] * (steps // d)


def reverse_mode(net: Any) -> Any:
    """``net`` set up for code that differentiates it in reverse mode only.

    A model with ``conv_grad="jax"`` (jaxviz's VGG by default, which keeps
    ``jax.jvp`` working) comes back as ``net.clone(conv_grad="auto")``:
    full-speed input gradients inside loop bodies, small maps' as matrix
    products on the CPU. Anything else (another ``conv_grad`` chosen by the
    user, any other model, a plain callable) comes back unchanged. Attribution,
    style transfer, activation maximisation and DeepDream call this.
    """
    if getattr(net, "conv_grad", None) == "jax" and callable(getattr(net, "clone", None)):
        return net.clone(conv_grad="auto")
    return net


def vmap_or_call(fn: Callable, n: int) -> Callable:
    """``fn`` (one item) over a leading axis of ``n`` items: ``vmap``, or a plain call for ``n == 1``."""
    if n == 1:
        return lambda *a: jax.tree.map(lambda v: v[None], fn(*jax.tree.map(lambda v: v[0], a)))
    return jax.vmap(fn)




def chunked_map(body: Callable[[jax.Array], Any], n: int, batch_size: int, *, unroll: bool = False,
                even: bool = False) -> Any:
    """Evaluates ``body(idx)`` for idx = 0..n-1 in chunks of ``batch_size`` and stacks the results.

    ``body`` takes an int32 vector of item indices (length <= batch_size) and
    returns a pytree whose leaves have that length as leading axis. Full chunks
    run in a ``lax.map`` (compiled once), the remainder in one extra call;
    with ``unroll`` up to :data:`UNROLL` chunks are unrolled instead. With
    ``even`` there is no remainder call (one program instead of two): the
    chunk size is the one in [batch_size / 2, batch_size] that wastes the
    fewest padded items (the last chunk is padded by repeating item n - 1).
    """
    if n == 0:  # an empty batch: the body's own empty result
        return body(jnp.zeros((0,), jnp.int32))
    b = min(batch_size, n)
    if even:
        b = min(range(max(1, -(-b // 2)), b + 1), key=lambda c: (-(-n // c) * c, -c))
        chunks = -(-n // b)
        if chunks * b != n:
            def padded(idx):
                return body(jnp.minimum(idx, n - 1))

            ys = chunked_map(padded, chunks * b, b, unroll=unroll)
            return jax.tree.map(lambda y: y[:n], ys)
    full, rem = divmod(n, b)
    parts = []
    if full == 1 or (unroll and full <= UNROLL):  # unroll: for backward passes (slow in a while loop)
        parts += [body(c * b + jnp.arange(b, dtype=jnp.int32)) for c in range(full)]
    elif full > 1:
        ys = jax.lax.map(lambda c: body(c * b + jnp.arange(b, dtype=jnp.int32)), jnp.arange(full, dtype=jnp.int32))
        parts.append(jax.tree.map(lambda y: y.reshape((full * b,) + y.shape[2:]), ys))
    if rem:
        parts.append(body(full * b + jnp.arange(rem, dtype=jnp.int32)))
    if len(parts) == 1:
        return parts[0]
    return jax.tree.map(lambda *ys: jnp.concatenate(ys, axis=0), *parts)


def host_sum(chunk: Callable[[jax.Array], Any], n: int, batch_size: int) -> Any:
    """Sums ``chunk(idx)`` over chunks of item indices, looping on the host.

    Used when a method is called eagerly: ``chunk`` is a jitted function
    (compiled once per chunk shape), so the loop costs one dispatch per chunk,
    and XLA:CPU runs each backward pass at full speed (inside a ``lax.scan`` it
    runs ~3x slower). Under an outer ``jit``/``vmap`` the methods use
    :func:`chunked_sum` instead.
    """
    if n == 0:
        return chunk(jnp.zeros((0,), jnp.int32))
    b = min(batch_size, n)
    acc = None
    for start in range(0, n, b):
        out = chunk(jnp.arange(start, min(start + b, n), dtype=jnp.int32))
        acc = out if acc is None else jax.tree.map(jnp.add, acc, out)
    return acc


def host_map(chunk: Callable[[jax.Array], Any], n: int, batch_size: int) -> Any:
    """Like :func:`host_sum` but concatenates the per-item results of the chunks."""
    if n == 0:
        return chunk(jnp.zeros((0,), jnp.int32))
    b = min(batch_size, n)
    parts = [chunk(jnp.arange(start, min(start + b, n), dtype=jnp.int32)) for start in range(0, n, b)]
    if len(parts) == 1:
        return parts[0]
    return jax.tree.map(lambda *ys: jnp.concatenate(ys, axis=0), *parts)


def chunked_sum(body: Callable[[jax.Array], Any], n: int, batch_size: int, segments: jax.Array, num_segments: int) -> Any:
    """Sums ``body(idx)`` over items into ``num_segments`` rows: out[s] = sum of items with segments[item] == s.

    Memory stays O(batch_size + num_segments) per leaf: a ``lax.scan`` over the
    full chunks carries the running sums (up to :data:`UNROLL` chunks are unrolled).
    """
    if n == 0:
        proto = jax.eval_shape(body, jnp.zeros((0,), jnp.int32))
        return jax.tree.map(lambda s: jnp.zeros((num_segments,) + s.shape[1:], s.dtype), proto)
    b = min(batch_size, n)
    full, rem = divmod(n, b)

    def add(acc, idx):
        vals = body(idx)
        seg = segments[idx]
        return jax.tree.map(lambda a, v: a + jax.ops.segment_sum(v, seg, num_segments), acc, vals)

    proto = jax.eval_shape(body, jnp.zeros((b,), jnp.int32))
    acc = jax.tree.map(lambda s: jnp.zeros((num_segments,) + s.shape[1:], s.dtype), proto)
    if full <= UNROLL:  # XLA:CPU runs backward passes inside a while loop ~3x slower: unroll short loops
        for c in range(full):
            acc = add(acc, c * b + jnp.arange(b, dtype=jnp.int32))
    else:
        acc, _ = jax.lax.scan(
            lambda a, c: (add(a, c * b + jnp.arange(b, dtype=jnp.int32)), None), acc, jnp.arange(full, dtype=jnp.int32)
        )
    if rem:
        acc = add(acc, full * b + jnp.arange(rem, dtype=jnp.int32))
    return acc
