"""Exact incremental inference for occlusion on jaxviz VGG networks.

Occluding a window changes only a small region of each early feature map: the
window grown by one pixel per 3x3 convolution and halved by each pool. This
module computes, once per image, the clean activations of every layer, then
for each occluded copy recomputes each layer only on a fixed-size patch that
covers the changed region plus the halo its next layer reads; everything
outside the patch is the clean activation. Once a patch would cover the whole
map, the occluded map is assembled and the rest of the network runs from that
tap through the model's own ``start=`` seam (the classifier always runs that
way).

Geometry, per spatial dimension, in the map's own coordinates (the map is
[0, L); stored clean maps carry zero margins so that patches near the border
never need clamping, and patch values outside [0, L) are forced to zero, which
is exactly the convolutions' zero padding):

* 3x3 convolution (padding 1): patch [a, a+s) -> [a-1, a+s+1); it reads
  [a-2, a+s+2) of its input (the clean map with the patch written in).
* ReLU: elementwise on the patch.
* 2x2 pool, stride 2: patch [a, a+s) -> [floor(a/2), floor(a/2) + s'), with
  s' the largest ceil((a+s)/2) - floor(a/2) over the windows' positions; it
  reads [2 floor(a/2), 2 floor(a/2) + 2 s').

Every window has the same patch sizes, so the windows batch with ``vmap``.
Values equal the full recomputation within float32 round-off (a convolution on
a patch sums the same products as on the whole map).

Reference: S. Nakandala, A. Kumar, Y. Papakonstantinou, "Incremental and
Approximate Inference for Faster Occlusion-based Deep CNN Explanations",
SIGMOD 2019.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..models.vgg import VGG

__all__: list[str] = []


@dataclasses.dataclass(frozen=True)
class Step:
    kind: str  # "conv" | "relu" | "pool"
    name: str  # the layer (tap) this step produces
    source: str | None  # the tap whose clean map it reads ("" for the normalised input), None for relu
    size: tuple[int, int]  # output patch size (h, w)
    read: tuple[int, int]  # size of the input slice it reads (h, w)
    length: tuple[int, int]  # output map size (h, w)
    shift: tuple[int, int] = (0, 0)  # approximate mode: how far the capped patch moved in (h, w)


@dataclasses.dataclass(frozen=True)
class Plan:
    steps: tuple[Step, ...]
    input_size: tuple[int, int]  # the window
    fallback: str  # the tap after which the model's own layers take over ("" never happens)
    margins: tuple[tuple[str, tuple[int, int, int, int]], ...]  # tap -> (low_h, high_h, low_w, high_w)
    cost: float  # multiply-adds of the incremental convolutions / those of the full ones

    def margin(self, tap: str) -> tuple[int, int, int, int]:
        return dict(self.margins)[tap]


def applies(net: Any) -> bool:
    return isinstance(net, VGG)


def _dim_plan(starts: np.ndarray, window: int, length: int, kinds: list[str], cap: float | None = None):
    """Per-dimension geometry of every step: patch size, read size, map length, shift, read and patch ranges.

    ``cap`` (approximate mode): a patch never grows beyond ``ceil(cap * L)``
    of its map's length L; it stays centred on the exact changed region, whose
    outer values are then taken from the clean map (an approximation).
    """
    a = starts.astype(np.int64)
    s = window
    L = length
    out = []
    for kind in kinds:
        shift = 0
        if kind == "conv":
            a, s = a - 1, s + 2
            if cap is not None and s > max(1, int(np.ceil(cap * L))):
                c = max(1, int(np.ceil(cap * L)))
                shift = (s - c) // 2
                a, s = a + shift, c
            read_lo, read_hi, read = a - 1, a + s + 1, s + 2
        elif kind == "relu":
            read_lo, read_hi, read = a, a + s, s
        else:  # pool
            a2 = np.floor_divide(a, 2)
            s2 = int(np.max(-np.floor_divide(-(a + s), 2) - a2))
            L = L // 2
            if cap is not None and s2 > max(1, int(np.ceil(cap * L))):
                c = max(1, int(np.ceil(cap * L)))
                shift = (s2 - c) // 2
                a2, s2 = a2 + shift, c
            read_lo, read_hi = 2 * a2, 2 * a2 + 2 * s2
            a, s, read = a2, s2, 2 * s2
        out.append(dict(size=s, read=read, length=L, shift=shift, read_lo=read_lo.min(), read_hi=read_hi.max(),
                        lo=a.min(), hi=(a + s).max()))
    return out


def make_plan(net: VGG, image_size: tuple[int, int], window: tuple[int, int], starts_h: np.ndarray,
              starts_w: np.ndarray, approximate: float | None = None) -> Plan:
    """Static patch geometry for a VGG's feature layers and a set of window positions.

    ``approximate``: cap every patch at this fraction of its map's side (None: exact).
    """
    names = [n for n in net.layers if n.startswith(("conv", "pool")) or (n.startswith("relu") and "_" in n)]
    kinds = [n[:4] for n in names]
    gh = _dim_plan(starts_h, window[0], image_size[0], kinds, approximate)
    gw = _dim_plan(starts_w, window[1], image_size[1], kinds, approximate)
    steps, flops_inc, flops_full = [], 0.0, 0.0
    source, length = "", image_size
    # margins of each stored clean map: every read and every patch (for the fallback write) must fit
    lows: dict[str, list[int]] = {"": [0, 0, 0, 0]}

    def grow(tap, lo_h, hi_h, lo_w, hi_w, L):
        m = lows.setdefault(tap, [0, 0, 0, 0])
        m[0] = max(m[0], -lo_h)
        m[1] = max(m[1], hi_h - L[0])
        m[2] = max(m[2], -lo_w)
        m[3] = max(m[3], hi_w - L[1])

    # the input patch itself lives in the normalised input's frame
    grow("", int(starts_h.min()), int(starts_h.max()) + window[0], int(starts_w.min()), int(starts_w.max()) + window[1],
         image_size)
    fallback = names[-1]
    prev_patch = (window[0], window[1])
    cin = 3
    widths = net._widths()
    for idx, (name, kind) in enumerate(zip(names, kinds)):
        h, w = gh[idx], gw[idx]
        # once the patch step costs at least the full layer (a conv computes the patch's outputs), the model
        # finishes from the previous tap
        work = h["size"] * w["size"] if kind == "conv" else prev_patch[0] * prev_patch[1]
        if source != "" and work >= length[0] * length[1]:
            fallback = source
            break
        if kind != "relu":
            grow(source, int(h["read_lo"]), int(h["read_hi"]), int(w["read_lo"]), int(w["read_hi"]), length)
        out_len = (h["length"], w["length"])
        grow(name, int(h["lo"]), int(h["hi"]), int(w["lo"]), int(w["hi"]), out_len)
        steps.append(Step(kind, name, None if kind == "relu" else source, (h["size"], w["size"]),
                          (h["read"], w["read"]), out_len, (h["shift"], w["shift"])))
        if kind == "conv":
            cout = widths[name]
            flops_inc += h["size"] * w["size"] * cin * cout
            flops_full += out_len[0] * out_len[1] * cin * cout
            cin = cout
        source, length, prev_patch = name, out_len, (h["size"], w["size"])
    else:
        fallback = names[-1]
    # the convolutions the model runs after the fallback count fully in both
    rest_full = 0.0
    c, L = cin, length
    for name in names[len(steps):]:
        if name.startswith("conv"):
            cout = widths[name]
            rest_full += L[0] * L[1] * c * cout
            c = cout
        elif name.startswith("pool"):
            L = (L[0] // 2, L[1] // 2)
    cost = (flops_inc + rest_full) / max(flops_full + rest_full, 1.0)
    margins = tuple((k, tuple(int(v) for v in m)) for k, m in lows.items())
    return Plan(tuple(steps), tuple(window), fallback, margins, float(cost))


def _normalize(net: VGG, x: jax.Array) -> jax.Array:
    x = jnp.asarray(x, jnp.float32)
    if net.normalize:
        x = (x - jnp.asarray(net.mean, jnp.float32)) / jnp.asarray(net.std, jnp.float32)
    return x.astype(net.dtype)


def _inside(a: jax.Array, size: int, length: int) -> jax.Array:
    pos = a + jnp.arange(size)
    return (pos >= 0) & (pos < length)


def _place(piece: jax.Array, patch: jax.Array, oh: int, ow: int) -> jax.Array:
    """``piece`` with ``patch`` written at the static offset (oh, ow), cropped to ``piece``."""
    h, w = piece.shape[:2]
    s, t = patch.shape[:2]
    lh, hh = max(0, -oh), min(s, h - oh)
    lw, hw = max(0, -ow), min(t, w - ow)
    return piece.at[oh + lh:oh + hh, ow + lw:ow + hw].set(patch[lh:hh, lw:hw])


def _overlay(base: jax.Array, patch: jax.Array, dh: jax.Array, dw: jax.Array) -> jax.Array:
    """``base`` (h, w, C) with ``patch`` (s, t, C) written at the dynamic offset (dh, dw), clipped to ``base``.

    Built from a slice of the zero-padded patch and a select rather than
    ``dynamic_update_slice``, which ``vmap`` turns into a (slow, serial on the
    CPU) scatter.
    """
    h, w = base.shape[:2]
    s, t = patch.shape[:2]
    canvas = jnp.pad(patch, ((h, h), (w, w), (0, 0)))
    placed = jax.lax.dynamic_slice(canvas, (h - dh, w - dw, 0), (h, w, patch.shape[-1]))
    inside = _inside(-dh, h, s)[:, None] & _inside(-dw, w, t)[None, :]
    return jnp.where(inside[:, :, None], placed, base)


def prepare(net: VGG, params: Any, images: jax.Array, baseline: jax.Array, plan: Plan) -> dict:
    """Once per batch of images: the clean maps every step reads, zero-padded by the plan's margins."""
    order = net.layers
    needed = {s.source for s in plan.steps if s.source} | {plan.fallback}
    needed = tuple(sorted(needed, key=order.index))
    clean = dict(net.apply(params, images, taps=needed))
    clean[""] = _normalize(net, images)
    padded = {}
    for tap, m in plan.margins:
        if tap in clean:
            padded[tap] = jnp.pad(clean[tap], ((0, 0), (m[0], m[1]), (m[2], m[3]), (0, 0)))
    m0 = plan.margin("")
    padded["baseline"] = jnp.pad(_normalize(net, baseline), ((0, 0), (m0[0], m0[1]), (m0[2], m0[3]), (0, 0)))
    return padded


def occluded_outputs(net: VGG, params: Any, state: dict, plan: Plan, image_size: tuple[int, int],
                     item_image: jax.Array, item_h: jax.Array, item_w: jax.Array) -> jax.Array:
    """Network outputs (items, ...) of the occluded images: image ``item_image``, window at (item_h, item_w)."""
    order = net.layers
    padded = state
    base_p = padded["baseline"]
    m0 = plan.margin("")
    kernels = {s.name: params["params"][s.name] for s in plan.steps if s.kind == "conv"}
    relu = net.relu
    hh, ww = image_size
    mf = plan.margin(plan.fallback)
    fallback_size = (padded[plan.fallback].shape[1] - mf[0] - mf[1], padded[plan.fallback].shape[2] - mf[2] - mf[3])

    def one(i, ah, aw):
        # the input patch: the (normalised) baseline inside the image, the convolution's zero padding outside
        wh, wwid = plan.input_size
        v = jax.lax.dynamic_slice(base_p, (i, ah + m0[0], aw + m0[2], 0), (1, wh, wwid, 3))[0]
        inside = _inside(ah, wh, hh)[:, None] & _inside(aw, wwid, ww)[None, :]
        v = jnp.where(inside[:, :, None], v, jnp.zeros((), v.dtype))
        for step in plan.steps:
            if step.kind == "relu":
                v = relu(v)
                continue
            src = padded[step.source]
            m = plan.margin(step.source)
            rh, rw = step.read
            if step.kind == "conv":
                ah, aw = ah - 1 + step.shift[0], aw - 1 + step.shift[1]  # the output patch's start
                piece = jax.lax.dynamic_slice(src, (i, ah - 1 + m[0], aw - 1 + m[2], 0), (1, rh, rw, src.shape[-1]))[0]
                piece = _place(piece, v, 2 - step.shift[0], 2 - step.shift[1])
                p = kernels[step.name]
                # VALID: exactly the patch. (Under jaxlib 0.10.2's default YNNPACK fusions unpadded convolutions
                # ran ~2.5x slower than padded ones, so this used to pad one row/column and crop; with the setting
                # jaxviz applies (jaxviz/_xla_flags.py) VALID is the faster form.)
                v = jax.lax.conv_general_dilated(
                    piece[None], jnp.asarray(p["kernel"], net.dtype), (1, 1), "VALID",
                    dimension_numbers=("NHWC", "HWIO", "NHWC"))[0] + jnp.asarray(p["bias"], net.dtype)
            else:
                bh, bw = jnp.floor_divide(ah, 2) + step.shift[0], jnp.floor_divide(aw, 2) + step.shift[1]
                piece = jax.lax.dynamic_slice(src, (i, 2 * bh + m[0], 2 * bw + m[2], 0), (1, rh, rw, src.shape[-1]))[0]
                piece = _overlay(piece, v, ah - 2 * bh, aw - 2 * bw)
                r = piece.reshape(rh // 2, 2, rw // 2, 2, piece.shape[-1])
                v = jnp.max(r, axis=(1, 3)) if net.pooling == "max" else jnp.mean(r, axis=(1, 3))
                ah, aw = bh, bw
            inside = _inside(ah, step.size[0], step.length[0])[:, None] & _inside(aw, step.size[1], step.length[1])[None, :]
            v = jnp.where(inside[:, :, None], v, jnp.zeros((), v.dtype))
        # assemble the occluded map at the fallback tap and let the model finish
        tap = plan.fallback
        m = plan.margin(tap)
        lh, lw = fallback_size
        clean = jax.lax.dynamic_slice(padded[tap], (i, m[0], m[2], 0), (1, lh, lw, v.shape[-1]))[0]
        return _overlay(clean, v, ah, aw)

    maps = jax.vmap(one)(item_image, item_h, item_w)
    if plan.fallback == order[-1]:
        return maps
    return net.apply(params, maps, start=plan.fallback)
