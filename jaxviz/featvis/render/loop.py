"""The optimisation loop of activation maximisation: state, update, render, and the batched renders.

Part of :mod:`jaxviz.featvis.render`; import from there.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from tqdm.auto import tqdm

from ... import _checks, execution
from ...execution import host_loop, reverse_mode  # noqa: F401  (host_loop: part of this module's API)
from ...errors import InputError
from ...models import protocol
from ...models.relus import redirected_relu
from .objectives import Objective, _check_indices, channel, neuron
from .params import ImageParam, fourier
from .transforms import Compose, standard_transforms


class RenderState(NamedTuple):
    """Explicit state of an activation-maximisation run."""

    variables: Any  # the parameterisation's variables
    opt_state: Any
    step: jax.Array  # int32, number of steps taken


@functools.lru_cache(maxsize=None)
def _adam(learning_rate: float) -> optax.GradientTransformation:
    return optax.adam(learning_rate)


def _optimizer(optimizer, learning_rate):
    if optimizer is None:
        _checks.positive_number(learning_rate, "learning_rate")
        return _adam(float(learning_rate))
    if not isinstance(optimizer, optax.GradientTransformation):
        raise InputError(f"optimizer: expected an optax.GradientTransformation, got {type(optimizer).__name__}")
    return optimizer


def _hw(size) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        size = (size, size)
    try:
        h, w = size
        h, w = _checks.positive_int(h, "size"), _checks.positive_int(w, "size")
    except (TypeError, ValueError):
        raise InputError(f"size: expected an int or (height, width), got {size!r}") from None
    return h, w


def _check_param(param):
    if param is None:
        return fourier()
    if not isinstance(param, ImageParam):
        raise InputError(f"param: expected pixel(...) or fourier(...), got {param!r}")
    return param


def _check_transforms(transforms):
    if transforms is None:
        return Compose(())
    if isinstance(transforms, (list, tuple)):
        return Compose(tuple(transforms))
    if not callable(transforms):
        raise InputError(f"transforms: expected a transform, a sequence of transforms or None, got {transforms!r}")
    return transforms


def _check_objective(objective):
    if not isinstance(objective, Objective):
        raise InputError(f"objective: expected an Objective (e.g. channel('relu4_1', 0)), got {objective!r}")
    return objective




def _loss(variables, key, net, params, objective, param, transforms, hw, relu):
    img = param.image(variables, hw)
    x = transforms(key, img)
    taps = objective.taps
    acts = dict(protocol.taps(reverse_mode(net), params, x, taps, relu=relu)) if taps else {}  # reverse mode only
    acts["input"] = x
    return -objective(acts)


@functools.partial(jax.jit, static_argnames=("optimizer",))
def _opt_init(variables, *, optimizer):
    return optimizer.init(variables)


@functools.partial(jax.jit, static_argnames=("optimizer",))
def _opt_init_each(variables, *, optimizer):
    return jax.vmap(optimizer.init)(variables)


def _init_state(key, *, param, optimizer, batch, hw) -> RenderState:
    variables = param.init(jax.random.split(key)[0], batch, hw)
    return RenderState(variables, _opt_init(variables, optimizer=optimizer), jnp.int32(0))


def _init_states(keys, *, param, optimizer, batch, hw) -> RenderState:
    firsts = [jax.random.split(k)[0] for k in keys]
    variables = jnp.stack([param.init(k, batch, hw) for k in firsts])
    return RenderState(variables, _opt_init_each(variables, optimizer=optimizer), jnp.zeros((len(firsts),), jnp.int32))


def _loop(body, carry, steps: int, unroll: bool):
    """``lax.scan(body, carry, None, length=steps)``, or the same steps traced one after another.

    The unrolled form is not ``lax.scan(..., unroll=True)``: that still wraps
    the body in a call that XLA:CPU compiles like a loop body (see
    :func:`host_loop`).
    """
    if not unroll:
        return lax.scan(body, carry, None, length=steps)
    outs = []
    for _ in range(steps):
        carry, out = body(carry, None)
        outs.append(out)
    return carry, jnp.stack(outs)


def _update_impl(net, params, objective, state, key, *, param, transforms, optimizer, hw, steps, redirect,
                 unroll=False):
    loop_key = jax.random.split(key)[1]
    relu = redirected_relu if redirect else None

    def body(st, _):
        k = jax.random.fold_in(loop_key, st.step)
        loss, g = jax.value_and_grad(_loss)(st.variables, k, net, params, objective, param, transforms, hw, relu)
        updates, opt_state = optimizer.update(g, st.opt_state, st.variables)
        return RenderState(optax.apply_updates(st.variables, updates), opt_state, st.step + 1), -loss

    return _loop(body, state, steps, unroll)


def _run_impl(net, params, objective, state, key, *, param, transforms, optimizer, hw, steps, redirect, batch,
              unroll=False):
    """``steps`` steps from ``state`` -> (state, history, images)."""
    state, history = _update_impl(net, params, objective, state, key, param=param, transforms=transforms,
                                  optimizer=optimizer, hw=hw, steps=steps, redirect=redirect, unroll=unroll)
    return state, history, param.image(state.variables, hw)


_STATIC = ("net", "param", "transforms", "optimizer", "hw", "steps", "redirect")
_update = jax.jit(_update_impl, static_argnames=_STATIC + ("unroll",))
_run = jax.jit(_run_impl, static_argnames=_STATIC + ("batch", "unroll"))


@functools.partial(jax.jit, static_argnames=_STATIC + ("batch", "maker", "unroll"))
def _run_each(net, params, values, states, keys, *, maker, param, transforms, optimizer, hw, steps, redirect, batch,
              unroll=False):
    """K independent runs stacked into one: one network pass over K * batch images per step.

    Equivalent to ``vmap(_run_impl)`` over (values, states, keys) but the
    network, the most expensive part to compile and run, sees one plain
    batch; only the cheap parts (parameterisation, transforms, objective,
    optimiser update) are vmapped over the K instances.
    """
    k = keys.shape[0]
    loop_keys = jax.vmap(lambda key: jax.random.split(key)[1])(keys)
    relu = redirected_relu if redirect else None
    probe = maker(jax.tree_util.tree_map(lambda v: v[0], values))
    taps = probe.taps

    def loss(variables, step):
        imgs = jax.vmap(lambda v: param.image(v, hw))(variables)  # (K, B, h, w, 3)
        step_keys = jax.vmap(lambda key: jax.random.fold_in(key, step))(loop_keys)
        x = jax.vmap(transforms)(step_keys, imgs)
        acts = {}
        if taps:
            flat = protocol.taps(reverse_mode(net), params, x.reshape((k * batch,) + x.shape[2:]), taps, relu=relu)
            acts = {name: a.reshape((k, batch) + a.shape[1:]) for name, a in flat.items()}
        acts["input"] = x
        per = jax.vmap(lambda v, a: maker(v)(a))(values, acts)  # (K,)
        return -jnp.sum(per), per

    def body(st, _):
        (_, per), g = jax.value_and_grad(loss, has_aux=True)(st.variables, st.step[0])
        updates, opt_state = jax.vmap(optimizer.update)(g, st.opt_state, st.variables)
        return RenderState(optax.apply_updates(st.variables, updates), opt_state, st.step + 1), per

    states, history = _loop(body, states, steps, unroll)
    return states, history.T, jax.vmap(lambda v: param.image(v, hw))(states.variables)


def render_init(key: jax.Array, *, size=128, batch: int = 1, param: ImageParam | None = None,
                optimizer: optax.GradientTransformation | None = None, learning_rate: float = 0.05) -> RenderState:
    """Initial state: random variables from ``split(key)[0]`` and the optimiser's state.

    Arguments as in :func:`render`.
    """
    param, opt = _check_param(param), _optimizer(optimizer, learning_rate)
    return _init_state(_checks.prng_key(key), param=param, optimizer=opt, batch=_checks.positive_int(batch, "batch"), hw=_hw(size))


def render_update(net: Any, params, objective: Objective, state: RenderState, key: jax.Array, *, steps: int,
                  size=128, param: ImageParam | None = None, transforms=None,
                  optimizer: optax.GradientTransformation | None = None,
                  learning_rate: float = 0.05, redirect_relu: bool = True,
                  loop: str = "auto") -> tuple[RenderState, jax.Array]:
    """Runs ``steps`` optimisation steps from ``state``.

    Step ``i`` (counted from the run's start, ``state.step``) draws its
    transforms from ``fold_in(split(key)[1], i)``, so splitting a run into
    several calls gives the same result as one call. ``loop`` as in
    :func:`render`.

    Returns:
      (new state, the objective before each step, shape (steps,)).
    """
    kw = dict(param=_check_param(param), transforms=_check_transforms(transforms),
              optimizer=_optimizer(optimizer, learning_rate), hw=_hw(size), redirect=bool(redirect_relu))
    objective = _check_objective(objective)
    net = protocol.as_model(net)
    _check_indices(net, params, objective)
    steps = _checks.positive_int(steps, "steps")
    key = _checks.prng_key(key)
    if not execution.host_loop_for(loop, key, params, state):
        return _update(net, params, objective, state, key, steps=steps, **kw)
    history = []
    for _ in range(steps):
        state, h = _update(net, params, objective, state, key, steps=1, unroll=True, **kw)
        history.append(h)
    return state, jnp.concatenate(history)


def render(
    net: Any,
    params,
    objective: Objective,
    *,
    key: jax.Array,
    size=128,
    batch: int = 1,
    steps: int = 512,
    param: ImageParam | None = None,
    transforms="standard",
    optimizer: optax.GradientTransformation | None = None,
    learning_rate: float = 0.05,
    redirect_relu: bool = True,
    loop: str = "auto",
    progress: bool = False,
    return_history: bool = False,
):
    """Synthesises images that maximise ``objective``.

    Args:
      net: a model behind the model contract (a jaxviz model runs only up to the deepest tap the
        objective reads).
      params: its parameters.
      objective: what to maximise, e.g. ``channel("relu4_1", 7)``.
      key: PRNG key or int seed (variables from ``split(key)[0]``, transforms from
        ``split(key)[1]``).
      size: image size, an int or (height, width).
      batch: number of images optimised together (use with :func:`diversity`
        or objectives with ``batch=``).
      steps: optimisation steps.
      param: :func:`fourier` (default, decorrelated colour) or :func:`pixel`.
      transforms: ``"standard"`` (:func:`standard_transforms`), None, a
        transform, or a sequence of transforms.
      optimizer: an optax transformation (default Adam at ``learning_rate``).
        Pass the same object again to reuse the compiled program.
      learning_rate: Adam's learning rate when ``optimizer`` is None.
      redirect_relu: back-propagate through the network's ReLUs with
        :func:`redirected_relu` (lucid's default), so units that are silent
        on the initial image still get a gradient. The forward pass is
        unchanged.
      loop: ``"auto"``, ``"scan"`` or ``"host"``: how the steps are driven
        (see :func:`host_loop`; the result is the same).
      progress: show a tqdm bar (a scan is then run in chunks; the result
        is the same).
      return_history: also return the objective at every step.

    Returns:
      images (batch, h, w, 3) RGB in [0, 1]; with ``return_history`` a pair
      (images, history (steps,)).

    Raises:
      InputError: bad arguments, or an objective layer the network lacks.

    Example::

        img = render(net, params, channel("relu3_1", 5), key=jax.random.key(0), size=96)
    """
    _check_objective(objective)
    net = protocol.as_model(net)
    for name in objective.taps:
        net.resolve(name, "objective")
    _check_indices(net, params, objective)
    key = _checks.prng_key(key)
    transforms = standard_transforms() if isinstance(transforms, str) and transforms == "standard" else transforms
    param, opt, hw = _check_param(param), _optimizer(optimizer, learning_rate), _hw(size)
    transforms = _check_transforms(transforms)
    steps = _checks.positive_int(steps, "steps")
    batch = _checks.positive_int(batch, "batch")
    state, history = _init_state(key, param=param, optimizer=opt, batch=batch, hw=hw), []
    with tqdm(total=steps, desc="render", unit="step", disable=not progress, leave=False) as bar:
        host = execution.host_loop_for(loop, key, params)
        for n in execution.schedule(steps, progress, host):
            state, h, images = _run(net, params, objective, state, key, param=param, transforms=transforms,
                                    optimizer=opt, hw=hw, steps=n, redirect=bool(redirect_relu), batch=batch,
                                    unroll=host)
            history.append(h)
            bar.update(n)
    return (images, jnp.concatenate(history)) if return_history else images


def render_each(
    net: Any,
    params,
    make_objective: Callable[[Any], Objective],
    values,
    *,
    key: jax.Array,
    size=128,
    batch: int = 1,
    steps: int = 512,
    param: ImageParam | None = None,
    transforms="standard",
    optimizer: optax.GradientTransformation | None = None,
    learning_rate: float = 0.05,
    redirect_relu: bool = True,
    loop: str = "auto",
    progress: bool = False,
    return_history: bool = False,
):
    """Renders one objective per value, all in one compiled, ``vmap``-ed optimisation.

    Instance ``i`` optimises ``make_objective(values[i])`` and equals
    ``render(..., make_objective(values[i]), key=jax.random.split(key, K)[i])``.

    Args:
      make_objective: value -> :class:`Objective`; it is a static argument,
        so pass the same function object to reuse the compiled program.
      values: (K, ...) array, a list of K scalars, or a pytree of arrays
        with leading axis K.
      Others: as in :func:`render`.

    Returns:
      (K, batch, h, w, 3) images; with ``return_history`` also (K, steps).
    """
    if isinstance(values, (list, tuple)) and values and all(np.ndim(v) == 0 for v in values):
        values = np.asarray(values)  # [3, 5]: K scalars, as the array np.array([3, 5])
    leaves = jax.tree_util.tree_leaves(values)
    if not leaves:
        raise InputError("values: expected at least one value, got none")
    values = jax.tree_util.tree_map(jnp.asarray, values)
    k = leaves[0].shape[0] if np.ndim(leaves[0]) else None
    if k is None or k == 0 or any(np.shape(leaf)[:1] != (k,) for leaf in leaves):
        raise InputError(f"values: expected arrays with the same leading axis K >= 1, got {[np.shape(x) for x in leaves]}")
    key = _checks.prng_key(key)
    probe = make_objective(jax.tree_util.tree_map(lambda x: x[0], values))
    _check_objective(probe)
    net = protocol.as_model(net)
    for name in probe.taps:
        net.resolve(name, "objective")
    _check_indices(net, params, *(make_objective(jax.tree_util.tree_map(lambda x, i=i: x[i], values))
                                  for i in range(k)))
    transforms = standard_transforms() if isinstance(transforms, str) and transforms == "standard" else transforms
    param, opt, hw = _check_param(param), _optimizer(optimizer, learning_rate), _hw(size)
    transforms = _check_transforms(transforms)
    steps = _checks.positive_int(steps, "steps")
    keys = jax.random.split(key, k)
    batch = _checks.positive_int(batch, "batch")
    states, history = _init_states(keys, param=param, optimizer=opt, batch=batch, hw=hw), []
    with tqdm(total=steps, desc=f"render x{k}", unit="step", disable=not progress, leave=False) as bar:
        host = execution.host_loop_for(loop, key, params, values)
        for n in execution.schedule(steps, progress, host):
            states, h, images = _run_each(net, params, values, states, keys, maker=make_objective, param=param,
                                          transforms=transforms, optimizer=opt, hw=hw, steps=n,
                                          redirect=bool(redirect_relu), batch=batch, unroll=host)
            history.append(h)
            bar.update(n)
    return (images, jnp.concatenate(history, axis=1)) if return_history else images


@functools.lru_cache(maxsize=None)
def _channel_maker(layer: str, kind: str) -> Callable[[Any], Objective]:
    if kind == "neuron":
        return lambda c: neuron(layer, c)
    return lambda c: channel(layer, c)


def render_channels(net: Any, params, layer: str, channels: Sequence[int], *, key: jax.Array,
                    neurons: bool = False, **kwargs):
    """Renders one image per channel of ``layer`` in one compiled call (see :func:`render_each`).

    Args:
      layer: tap name.
      channels: channel indices.
      neurons: maximise the centre neuron instead of the channel mean.
      key, **kwargs: as in :func:`render_each` (``batch`` is 1).

    Returns:
      (len(channels), h, w, 3) images (with ``return_history``, also (K, steps)).
    """
    net = protocol.as_model(net)
    name = net.resolve(layer, "layer")
    idx = np.asarray(list(channels) if not isinstance(channels, (np.ndarray, jax.Array)) else channels)
    if idx.ndim != 1 or idx.size == 0 or not np.issubdtype(idx.dtype, np.integer):
        raise InputError(f"channels: expected a non-empty sequence of channel indices, got {channels!r}")
    shape = jax.eval_shape(
        lambda p: protocol.taps(net, p, jnp.zeros((1, max(64, protocol.min_size(net)), max(64, protocol.min_size(net)),
                                                  3)), name)[name],
        params,
    ).shape
    width = shape[-1]
    bad = [int(c) for c in idx if not 0 <= c < width]
    if bad:
        raise InputError(f"channels: {name} has {width} channels (0-{width - 1}), got {_checks.index_ranges(bad)}")
    if kwargs.get("batch", 1) != 1:
        raise InputError(f"batch: render_channels renders one image per channel, got batch={kwargs['batch']}")
    kwargs.pop("batch", None)
    out = render_each(net, params, _channel_maker(name, "neuron" if neurons else "channel"),
                      jnp.asarray(idx, jnp.int32), key=key, batch=1, **kwargs)
    if isinstance(out, tuple):
        return out[0][:, 0], out[1]
    return out[:, 0]
