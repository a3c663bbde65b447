"""Exact incremental inference for occlusion on plain convolution stacks (VGG).

A model offers itself by its ``plain_stack`` attribute
(:class:`jaxviz.models.protocol.PlainStack`: its 3x3 convolutions, ReLUs and
2x2 pools in order, its input normalisation) and its ``start=`` seam; any
other model gets exact batched occlusion instead.

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
[0, L); stored clean maps carry a one-pixel zero margin, exactly the
convolutions' zero padding). A window's changed region [lo, hi):

* 3x3 convolution (padding 1): [lo, hi) -> [lo-1, hi+1), clipped to the map;
  a patch of size s starting at b reads [b-1, b+s+1) of its input (the clean
  map with the previous patch written in).
* ReLU: elementwise on the patch.
* 2x2 pool, stride 2: [lo, hi) -> [floor(lo/2), ceil(hi/2)), clipped; a patch
  at b reads [2b, 2b+2s).

Windows are batched with ``vmap``, so a batch shares its patch sizes: the
largest changed region among its windows. Patches are then placed to cover
each window's region while staying inside the map. Windows near an edge change
less (their regions are clipped), so the plan can split the window positions
along each dimension into runs with their own sizes ("groups"): less work,
more programs to compile. Values equal the full recomputation within float32
round-off (a convolution on a patch sums the same products as on the whole
map).

Reference: S. Nakandala, A. Kumar, Y. Papakonstantinou, "Incremental and
Approximate Inference for Faster Occlusion-based Deep CNN Explanations",
SIGMOD 2019.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


__all__: list[str] = []


@dataclasses.dataclass(frozen=True)
class Step:
    kind: str  # "conv" | "relu" | "pool"
    name: str  # the layer (tap) this step produces
    source: str | None  # the tap whose clean map it reads ("" for the normalised input), None for relu
    size: tuple[int, int]  # output patch size (h, w)
    read: tuple[int, int]  # size of the input slice it reads (h, w)
    length: tuple[int, int]  # output map size (h, w)


@dataclasses.dataclass(frozen=True, eq=False)
class Group:
    """Windows whose patches share their sizes: every (row, col) pair of window positions listed here."""

    window: tuple[int, int]
    rows: tuple[int, ...]  # indices into the window starts along the height
    cols: tuple[int, ...]  # ... and along the width
    steps: tuple[Step, ...]
    fallback: str  # the tap after which the model's own layers take over
    pos_h: np.ndarray  # (len(rows), 1 + len(steps)) int32: window start, then each step's patch start
    pos_w: np.ndarray  # (len(cols), 1 + len(steps))
    cost: float  # multiply-adds per occluded image / those of the full network's convolutions

    @property
    def windows(self) -> int:
        return len(self.rows) * len(self.cols)


@dataclasses.dataclass(frozen=True, eq=False)
class Plan:
    groups: tuple[Group, ...]
    input_size: tuple[int, int]  # the window
    cost: float  # the mean over all windows of the groups' costs
    full_macs: float  # multiply-adds of the full network's convolutions on one image

    @property
    def fallback(self) -> str:
        """Where the model takes over for most windows (the largest group's fallback)."""
        return max(self.groups, key=lambda g: g.windows).fallback


def _slice(a, starts, sizes):
    """``lax.dynamic_slice`` with every start as int32 (mixed int32/int64 starts fail under jax_enable_x64)."""
    return jax.lax.dynamic_slice(a, tuple(jnp.asarray(v, jnp.int32) for v in starts), sizes)


def applies(net: Any) -> bool:
    """Whether ``net`` offers a plain stack to compute on patches (and the ``start=`` seam to finish from)."""
    return getattr(net, "plain_stack", None) is not None and bool(getattr(net, "supports_start", False))


def _changed(starts: np.ndarray, window: int, length: int, kinds: list[str], cap: float | None):
    """Per step, every window's changed region [lo, hi) along one dimension, clipped to the map.

    ``cap`` (approximate mode): a region never grows beyond ``ceil(cap * L)`` of
    its map's length L; it stays centred on the exact region, whose outer
    values are then taken from the clean map (an approximation).

    Returns a list of (lo, hi, L) per step (lo, hi: int arrays over the windows).
    """
    lo = np.clip(starts.astype(np.int64), 0, length)
    hi = np.clip(starts.astype(np.int64) + window, 0, length)
    L = length
    out = []
    for kind in kinds:
        if kind == "conv":
            lo, hi = np.maximum(lo - 1, 0), np.minimum(hi + 1, L)
        elif kind == "pool":
            L = L // 2
            lo, hi = lo // 2, np.minimum(-(-hi // 2), L)
        if cap is not None and kind != "relu":
            c = max(1, int(np.ceil(cap * L)))
            over = hi - lo > c
            lo = np.where(over, lo + (hi - lo - c) // 2, lo)
            hi = np.where(over, lo + c, hi)
        out.append((lo, hi, L))
    return out


def _partition(sizes: np.ndarray, weight: np.ndarray, k: int) -> list[np.ndarray]:
    """Split windows 0..n-1 (ordered by position) into at most ``k`` runs minimising
    sum over runs of len(run) * (max over the run of ``sizes``) @ ``weight`` (dynamic programming, O(k n^2))."""
    n = len(sizes)
    # run_cost[j][i]: the cost of the run [i, j), for every i < j (suffix maxima of sizes[:j])
    run_cost = []
    for j in range(1, n + 1):
        suffix_max = np.maximum.accumulate(sizes[j - 1::-1], axis=0)[::-1]
        run_cost.append((j - np.arange(j)) * (suffix_max @ weight))
    best = np.full((k + 1, n + 1), np.inf)
    arg = np.zeros((k + 1, n + 1), np.int64)
    best[0, 0] = 0.0
    for g in range(1, k + 1):
        for j in range(1, n + 1):
            c = best[g - 1, :j] + run_cost[j - 1]
            i = int(np.argmin(c))
            best[g, j], arg[g, j] = c[i], i
    g = int(np.argmin(best[1:, n])) + 1
    cuts, j = [], n
    while g > 0:
        i = int(arg[g, j])
        cuts.append(np.arange(i, j))
        j, g = i, g - 1
    return cuts[::-1]


def make_plan(net: Any, image_size: tuple[int, int], window: tuple[int, int], starts_h: np.ndarray,
              starts_w: np.ndarray, approximate: float | None = None, groups: int = 1) -> Plan:
    """Static patch geometry for a plain stack's feature layers and a set of window positions.

    ``approximate``: cap every patch at this fraction of its map's side (None: exact).
    ``groups``: split the window positions along each dimension into at most
    this many runs whose patches are sized separately. Patches are clipped to
    their map, so windows near an edge change less than interior ones; one
    size for all (``groups=1``) pays the interior size everywhere, more groups
    do less work but compile more batched programs (2k - 1: see the bands below).
    Cached: the arguments are static, and occlusion asks several times.
    """
    return _make_plan(net, tuple(image_size), tuple(window), tuple(int(v) for v in starts_h),
                      tuple(int(v) for v in starts_w), approximate, groups)


@functools.lru_cache(maxsize=64)
def _make_plan(net: Any, image_size: tuple[int, int], window: tuple[int, int], starts_h: tuple[int, ...],
               starts_w: tuple[int, ...], approximate: float | None, groups: int) -> Plan:
    stack = net.plain_stack
    names = [n for n, _ in stack.layers]
    kinds = [k for _, k in stack.layers]
    conv_idx = [i for i, k in enumerate(kinds) if k == "conv"]
    macs, cin = [], 3  # per output pixel of each convolution, over its 3x3 taps
    for cout in stack.widths:
        macs.append(9 * cin * cout)
        cin = cout
    macs = np.asarray(macs, np.float64)
    ch = _changed(np.asarray(starts_h), window[0], image_size[0], kinds, approximate)
    cw = _changed(np.asarray(starts_w), window[1], image_size[1], kinds, approximate)
    sz_h = np.stack([ch[i][1] - ch[i][0] for i in conv_idx], 1)  # (windows along h, convs)
    sz_w = np.stack([cw[i][1] - cw[i][0] for i in conv_idx], 1)
    full = float(np.sum(macs * [ch[i][2] * cw[i][2] for i in conv_idx]))
    # the cost is separable: per conv, (sum over row runs of len * size_h) * (same over columns) * macs;
    # alternate between the dimensions, each partitioned optimally given the other
    runs_h = [np.arange(len(starts_h))]
    runs_w = [np.arange(len(starts_w))]

    def weight(runs, sz):
        return macs * sum(len(r) * sz[r].max(0) for r in runs)

    for _ in range(2 if groups > 1 else 0):
        runs_h = _partition(sz_h, weight(runs_w, sz_w), groups)
        runs_w = _partition(sz_w, weight(runs_h, sz_h), groups)
    sh, sw = np.asarray(starts_h, np.int64), np.asarray(starts_w, np.int64)
    # bands rather than every (row run, column run) pair: the row runs other than the largest span all columns,
    # the largest is split by the column runs; 2k - 1 batched programs instead of k^2, nearly the same work
    main = max(range(len(runs_h)), key=lambda r: len(runs_h[r]))
    every = np.arange(len(sw))
    cells = [(rh, every) for r, rh in enumerate(runs_h) if r != main] + [(runs_h[main], rw) for rw in runs_w]
    conv_macs = dict(zip((names[i] for i in conv_idx), macs))
    out = [_group(names, kinds, conv_macs, ch, cw, rh, rw, sh[rh], sw[rw], tuple(window), full) for rh, rw in cells]
    total = sum(g.windows for g in out)
    return Plan(tuple(out), tuple(window), float(sum(g.cost * g.windows for g in out) / total), full)


def _group(names, kinds, conv_macs, ch, cw, rows, cols, win_h, win_w, window, full) -> Group:
    """The patch sizes, positions and fallback of the windows at ``rows`` x ``cols``."""
    steps, pos_h, pos_w = [], [], []
    macs, source, fallback = 0.0, "", names[-1]
    for (kind, name, (lo_h, hi_h, L_h), (lo_w, hi_w, L_w)) in zip(kinds, names, ch, cw):
        lo_h, hi_h, lo_w, hi_w = lo_h[rows], hi_h[rows], lo_w[cols], hi_w[cols]
        s_h, s_w = int((hi_h - lo_h).max()), int((hi_w - lo_w).max())
        if kind == "conv" and source != "" and s_h * s_w >= L_h * L_w:
            fallback = source  # the patch is the whole map: the model finishes from the previous tap
            break
        if kind == "relu":
            s_h, s_w = steps[-1].size
            p_h, p_w = pos_h[-1], pos_w[-1]
        else:
            # the patch covers the changed region and stays inside the map
            p_h, p_w = np.minimum(lo_h, L_h - s_h), np.minimum(lo_w, L_w - s_w)
        read = {"conv": (s_h + 2, s_w + 2), "relu": (s_h, s_w), "pool": (2 * s_h, 2 * s_w)}[kind]
        steps.append(Step(kind, name, None if kind == "relu" else source, (s_h, s_w), read, (L_h, L_w)))
        pos_h.append(p_h)
        pos_w.append(p_w)
        if kind == "conv":
            macs += s_h * s_w * conv_macs[name]
        source = name
    # the convolutions the model runs after the fallback count fully
    for name, kind, (_, _, L_h), (_, _, L_w) in list(zip(names, kinds, ch, cw))[len(steps):]:
        if kind == "conv":
            macs += L_h * L_w * conv_macs[name]
    table_h = np.stack([win_h] + pos_h, 1).astype(np.int32)
    table_w = np.stack([win_w] + pos_w, 1).astype(np.int32)
    return Group(window, tuple(int(r) for r in rows), tuple(int(c) for c in cols), tuple(steps), fallback, table_h,
                 table_w, float(macs / full))


def _normalize(net: Any, x: jax.Array) -> jax.Array:
    stack = net.plain_stack
    x = jnp.asarray(x, jnp.float32)
    if stack.mean is not None:
        if stack.bgr:
            x = x[..., ::-1]
        x = (x - jnp.asarray(stack.mean, jnp.float32)) / jnp.asarray(stack.std, jnp.float32)
    return x.astype(stack.dtype)


def _inside(a: jax.Array, size: int, length: int) -> jax.Array:
    pos = a + jnp.arange(size)
    return (pos >= 0) & (pos < length)


def _overlay(base: jax.Array, patch: jax.Array, dh: jax.Array, dw: jax.Array) -> jax.Array:
    """``base`` (h, w, C) with ``patch`` (s, t, C) written at the dynamic offset (dh, dw), clipped to ``base``.

    Built from a slice of the zero-padded patch and a select rather than
    ``dynamic_update_slice``, which ``vmap`` turns into a (slow, serial on the
    CPU) scatter.
    """
    h, w = base.shape[:2]
    s, t = patch.shape[:2]
    canvas = jnp.pad(patch, ((h, h), (w, w), (0, 0)))
    placed = _slice(canvas, (h - dh, w - dw, 0), (h, w, patch.shape[-1]))
    inside = _inside(-dh, h, s)[:, None] & _inside(-dw, w, t)[None, :]
    return jnp.where(inside[:, :, None], placed, base)


def prepare(net: Any, params: Any, images: jax.Array, baseline: jax.Array, plan: Plan) -> dict:
    """Once per batch of images: the clean maps the groups read, zero-padded by one pixel on every side (the
    convolutions' padding); the normalised baseline also padded past the image where windows overhang it."""
    order = net.layers
    needed = {s.source for g in plan.groups for s in g.steps if s.source} | {g.fallback for g in plan.groups}
    needed.discard("")
    needed = tuple(sorted(needed, key=order.index))
    clean = dict(net.apply(params, images, taps=needed)) if needed else {}
    clean[""] = _normalize(net, images)
    padded = {tap: jnp.pad(v, ((0, 0), (1, 1), (1, 1), (0, 0))) for tap, v in clean.items()}
    h, w = images.shape[1:3]
    over_h = max(0, max(int(g.pos_h[:, 0].max()) for g in plan.groups) + plan.input_size[0] - h)
    over_w = max(0, max(int(g.pos_w[:, 0].max()) for g in plan.groups) + plan.input_size[1] - w)
    padded["baseline"] = jnp.pad(_normalize(net, baseline), ((0, 0), (1, 1 + over_h), (1, 1 + over_w), (0, 0)))
    return padded


def occluded_outputs(net: Any, params: Any, state: dict, group: Group, image_size: tuple[int, int],
                     item_image: jax.Array, item_h: jax.Array, item_w: jax.Array) -> jax.Array:
    """Network outputs (items, ...) of occluded images: image ``item_image``, the window at row
    ``group.rows[item_h]`` and column ``group.cols[item_w]`` of the window grid.
    """
    padded = state
    base_p = padded["baseline"]
    kernels = {s.name: params["params"][s.name] for s in group.steps if s.kind == "conv"}
    stack = net.plain_stack
    relu, dtype = stack.relu, stack.dtype
    hh, ww = image_size
    table_h, table_w = jnp.asarray(group.pos_h, jnp.int32), jnp.asarray(group.pos_w, jnp.int32)  # int32 under x64 too
    tap = group.fallback

    def one(i, jh, jw):
        pos_h, pos_w = table_h[jh], table_w[jw]
        # the window: the (normalised) baseline inside the image, the convolution's zero padding outside
        wh, wwid = group.window
        ah, aw = pos_h[0], pos_w[0]
        v = _slice(base_p, (i, ah + 1, aw + 1, 0), (1, wh, wwid, 3))[0]
        inside = _inside(ah, wh, hh)[:, None] & _inside(aw, wwid, ww)[None, :]
        v = jnp.where(inside[:, :, None], v, jnp.zeros((), v.dtype))
        for k, step in enumerate(group.steps, 1):
            if step.kind == "relu":
                v = relu(v)
                continue
            src = padded[step.source]
            rh, rw = step.read
            bh, bw = pos_h[k], pos_w[k]  # this step's patch start
            if step.kind == "conv":
                # reads [b - 1, b + s + 1) of the source map (stored with a one-pixel zero margin)
                piece = _slice(src, (i, bh, bw, 0), (1, rh, rw, src.shape[-1]))[0]
                piece = _overlay(piece, v, ah - (bh - 1), aw - (bw - 1))
                p = kernels[step.name]
                v = jax.lax.conv_general_dilated(
                    piece[None], jnp.asarray(p["kernel"], dtype), (1, 1), "VALID",
                    dimension_numbers=("NHWC", "HWIO", "NHWC"))[0] + jnp.asarray(p["bias"], dtype)
            else:
                # reads [2b, 2b + 2s)
                piece = _slice(src, (i, 2 * bh + 1, 2 * bw + 1, 0), (1, rh, rw, src.shape[-1]))[0]
                piece = _overlay(piece, v, ah - 2 * bh, aw - 2 * bw)
                r = piece.reshape(rh // 2, 2, rw // 2, 2, piece.shape[-1])
                v = jnp.max(r, axis=(1, 3)) if stack.pooling == "max" else jnp.mean(r, axis=(1, 3))
            ah, aw = bh, bw
        # assemble the occluded map at the fallback tap and let the model finish
        src = padded[tap]
        lh, lw = src.shape[1] - 2, src.shape[2] - 2
        clean = _slice(src, (i, 1, 1, 0), (1, lh, lw, src.shape[-1]))[0]
        return _overlay(clean, v, ah, aw)

    maps = jax.vmap(one)(item_image, item_h, item_w)
    if tap == net.layers[-1]:
        return maps
    return net.apply(params, maps, start=tap)
