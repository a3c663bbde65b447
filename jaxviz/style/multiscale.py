"""Style transfer's convenience ``run``: several scales, blended styles, checkpoints and resume, progress.

Part of :mod:`jaxviz.style`; import from there.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .. import _checks, _io
from ..errors import CheckpointError, InputError
from ..models import protocol
from .colour import _luminance_only, _resize, original_colors
from .objective import Losses, State, _as_styles, _blend_weights, _seed, evaluate, init, result, update
from .presets import Config, _float, _for_model, config

def _fit(h: int, w: int, longest: int) -> tuple[int, int]:
    s = longest / max(h, w)
    return max(1, int(round(h * s))), max(1, int(round(w * s)))


def _fingerprint(net, params, cfg, content, styles, extra) -> str:
    stable = cfg.replace(remat=False, batch_size=None, steps=0)
    return _io.fingerprint((_io.model_key(net), stable, extra), [content, *styles, *jax.tree.leaves(params)])


def _save_checkpoint(path: Path, state: State, scale: int, fingerprint: str) -> None:
    leaves = jax.tree.leaves((state.image, state.opt_state))
    arrays = {f"leaf_{i}": np.asarray(v) for i, v in enumerate(leaves)}
    arrays.update(step=np.asarray(state.step), scale=np.asarray(scale), fingerprint=np.asarray(fingerprint))
    _io.write_npz(path, **arrays)


def _restore(state: State, saved: dict[str, Any], path: Path) -> State:
    leaves, treedef = jax.tree.flatten((state.image, state.opt_state))
    got = [saved.get(f"leaf_{i}") for i in range(len(leaves))]
    if any(g is None or g.shape != np.shape(l) for g, l in zip(got, leaves)):
        raise InputError(f"checkpoint: {path} does not match this run's shapes; delete it or pass resume=False")
    image, opt_state = jax.tree.unflatten(treedef, [jnp.asarray(g, l.dtype) for g, l in zip(got, leaves)])
    return state.replace(image=image, opt_state=opt_state, step=jnp.asarray(saved["step"], jnp.int32))


def _postfix(l: Losses) -> dict[str, str]:
    out = {}
    for name, v in zip(("loss", "content", "style", "tv"), l):
        if v is not None:
            out[name] = f"{float(jnp.mean(v)):.4g}"
    return out


def run(
    net: Any,
    params: Any,
    content: Any,
    styles: Any,
    *,
    preset: str | Config = "gatys",
    steps: int | None = None,
    size: int | None = None,
    scales: int = 1,
    style_weights: Sequence[float] | None = None,
    style_scale: float = 1.0,
    preserve_colors: bool = False,
    seed: int = 0,
    init_image: Any = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = True,
    progress: bool = True,
    callback: Callable[[dict], Any] | None = None,
    **overrides: Any,
) -> jax.Array:
    """Stylises content images: all scales, all steps, with checkpoints and a progress bar.

    Args:
      net: a jaxviz VGG, e.g. ``models.vgg19(classifier=False)``.
      params: its parameters (``weights.load("vgg19", classifier=False)``).
      content: (N, H, W, 3) in [0, 1]; every image gets the same style.
      styles: one or several style images (see :func:`style_targets`).
      preset: a name in :data:`PRESETS` or a :class:`Config`.
      steps: steps per scale (default: the preset's).
      size: longest side of the output in pixels (default: the content's).
      scales: coarse-to-fine scales; scale k of S runs at ``size / 2**(S-1-k)``
        and starts from the previous scale's result, upsampled.
      style_weights: blend weights of several style images.
      style_scale: style images are resized so their longest side is
        ``style_scale`` times the current output's longest side.
      preserve_colors: luminance-only transfer: content and styles become
        grey (style luminance matched to the content's mean/std), and the
        result's luminance is put back on the content's colours.
      seed: PRNG seed of noisy initialisations (the run is deterministic).
      init_image: start images for the first scale, in [0, 1].
      checkpoint: path of a ``.npz`` checkpoint (image and optimiser state),
        written atomically every ``checkpoint_every`` steps and at the end of
        each scale. With ``resume``, an existing checkpoint of the same run
        (same inputs, weights and settings) is continued; a finished one
        returns at once. The file is left in place.
      checkpoint_every: steps between checkpoints (and ``callback`` calls).
      resume: continue from ``checkpoint`` when it exists.
      progress: show a tqdm progress bar with the current losses.
      callback: called with ``{"scale", "step", "images", "losses"}`` (NumPy
        [0, 1] images) at every checkpoint; raising from it interrupts the run
        (the checkpoint is already written).
      **overrides: :class:`Config` fields.

    Returns:
      (N, H', W', 3) float32 images in [0, 1].

    Raises:
      InputError: bad images or options, or a checkpoint from another run.

    Example::

        from jaxviz import models, weights, image, style
        net = models.vgg19(classifier=False)
        params = weights.load("vgg19", classifier=False)
        out = style.run(net, params, image.load("me.jpg"), image.load("starry.jpg"),
                        preset="gatys", size=512, scales=2)
    """
    if steps is not None:
        overrides["steps"] = steps
    net, cfg = _for_model(net, params, config(preset, **overrides))
    _checks.images(content, "content")
    content = jnp.asarray(content, jnp.float32)
    style_list = _as_styles(styles)
    _blend_weights(style_weights, len(style_list))
    n_scales = _checks.positive_int(scales, "scales")
    style_scale = _float(style_scale, "style_scale", positive=True)
    seed = _seed(seed)
    every = None if checkpoint_every is None else _checks.positive_int(checkpoint_every, "checkpoint_every")
    _, H, W, _ = content.shape
    longest = max(H, W) if size is None else _checks.positive_int(size, "size")
    sizes = [max(1, int(round(longest / 2 ** (n_scales - 1 - k)))) for k in range(n_scales)]
    hws = [_fit(H, W, s) for s in sizes]
    if min(hws[0]) < protocol.min_size(net):
        what = "size" if n_scales == 1 else f"size / 2**(scales-1) = {sizes[0]}"
        raise InputError(
            f"{'size' if size is not None else 'content'}: expected a smallest side of at least {protocol.min_size(net)} px "
            f"at the coarsest scale ({what} gives {hws[0][0]}x{hws[0][1]})"
        )
    s_long = max(1, int(round(style_scale * max(hws[0]))))
    for i, s in enumerate(style_list):
        hw = _fit(s.shape[1], s.shape[2], s_long)
        if min(hw) < protocol.min_size(net):  # the same resize as the loop below, checked before any step runs
            raise InputError(
                f"styles: image {i + 1} of {len(style_list)} ({s.shape[1]}x{s.shape[2]} px) would be {hw[0]}x{hw[1]} "
                f"px at the coarsest scale, below the network's minimum of {protocol.min_size(net)} px; use a larger size or "
                "style_scale"
            )
    if preserve_colors:
        work_content, work_styles = _luminance_only(content, style_list)
    else:
        work_content, work_styles = content, style_list

    path = Path(checkpoint) if checkpoint is not None else None
    fingerprint = None
    saved = None
    if path is not None:
        extra = (sizes, style_scale, preserve_colors, seed, None if style_weights is None else list(style_weights))
        fingerprint = _fingerprint(net, params, cfg, content, style_list + ([init_image] if init_image is not None else []), extra)
        if resume and path.exists():
            saved = _io.read_checkpoint(path, "style")
            if str(saved.get("fingerprint")) != fingerprint:
                raise CheckpointError(
                    f"checkpoint: {path} was written by a run with other inputs, weights or settings; "
                    "delete it or pass resume=False", "mismatch"
                )

    from tqdm.auto import tqdm

    total_steps = cfg.steps * n_scales
    start_scale = int(saved["scale"]) if saved is not None else 0
    bar = tqdm(total=total_steps, disable=not progress, desc="stylize", unit="step", dynamic_ncols=True)
    prev = None if init_image is None else jnp.asarray(init_image, jnp.float32)
    state = None
    try:
        for k, hw in enumerate(hws):
            if k < start_scale:
                bar.update(cfg.steps)
                continue
            c_k = _resize(work_content, hw)
            s_long = max(1, int(round(style_scale * max(hw))))
            styles_k = [_resize(s, _fit(s.shape[1], s.shape[2], s_long)) for s in work_styles]
            start = None if prev is None else _resize(prev, hw)
            state = init(net, params, c_k, styles_k, preset=cfg, style_weights=style_weights, seed=seed, init_image=start)
            if saved is not None and k == start_scale:
                state = _restore(state, saved, path)
                bar.update(int(state.step))
                saved = None
            state = _run_scale(net, params, state, k, bar, every, path, fingerprint, callback)
            prev = result(state)
    finally:
        bar.close()
    out = result(state)
    if preserve_colors:
        out = original_colors(_resize(content, out.shape[1:3]), out)
    return out


def _run_scale(net, params, state, scale, bar, every, path, fingerprint, callback) -> State:
    cfg = state.config
    chunk, last_eval, eval_cost = 1, -np.inf, 0.0
    step = int(state.step)
    while step < cfg.steps:
        n = min(chunk, cfg.steps - step)
        if every is not None:
            n = min(n, every - step % every)
        t0 = time.perf_counter()
        state, l = update(net, params, state, steps=n)
        l.total.block_until_ready()
        dt = time.perf_counter() - t0
        step += n
        bar.update(n)
        if l.content is None and time.perf_counter() - last_eval > 10 * eval_cost:
            t1 = time.perf_counter()
            l = evaluate(net, params, state)
            l.total.block_until_ready()
            last_eval = time.perf_counter()
            eval_cost = last_eval - t1
        bar.set_postfix(_postfix(l), refresh=False)
        if dt < 0.25 and n == chunk:
            chunk *= 2
        at_checkpoint = every is not None and step % every == 0
        if path is not None and (at_checkpoint or step == cfg.steps):
            _save_checkpoint(path, state, scale, fingerprint)
        if callback is not None and (at_checkpoint or step == cfg.steps):
            callback({"scale": scale, "step": step, "images": np.asarray(result(state)), "losses": l})
    return state
