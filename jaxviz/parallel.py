"""Data parallelism: one batch split over all of this process's devices (``jax.local_devices()``).

Attribution, feature extraction and the batch CLI treat every image
independently, so the cheapest way to use several accelerators (or several
host devices, ``XLA_FLAGS=--xla_force_host_platform_device_count=N``) is to
give each device a slice of the batch. :func:`data_parallel` wraps a
function ``fn(shared, *batched)`` so that:

* ``shared`` (the parameters) is replicated on every device once
  (:func:`replicate`; a no-op when it already is),
* every ``batched`` array (images, per-image targets ...) is padded along
  its leading axis to a multiple of the device count by repeating its last
  entry, and placed with a ``NamedSharding`` over a 1-D ``Mesh`` named
  ``"batch"``,
* ``fn`` runs under ``jax.jit(jax.shard_map(...))``: each device calls it on
  its own slice, with no communication, so the result for an image does not
  depend on how many devices there are (for a random method such as
  SmoothGrad, pass one PRNG key per image as a batched argument: one shared
  key would draw by position within each device's slice),
* the outputs (any pytree of arrays with the batch axis first) are trimmed
  back to the true batch size.

With one device it is simply ``jit(fn)``.

Several hosts (a TPU pod slice, a GPU cluster): every host runs the same
program as one JAX process (:func:`initialize`), and each gives its own
images to its own devices (the default mesh is ``jax.local_devices()``):
the images are independent, so no host waits on another's arrays.
``jaxviz attribute --distributed`` splits a folder's images among the hosts
that way.

Example::

    from jaxviz import parallel
    from jaxviz.attribution import saliency
    run = parallel.data_parallel(lambda p, x, t: saliency(net, p, x, t))
    maps = run(params, images, targets)          # (N, H, W, 3), N any size
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from . import _checks
from .errors import InputError

__all__ = ["AXIS", "mesh", "replicate", "pad_batch", "data_parallel", "DataParallel", "initialize", "barrier"]

#: Name of the mesh axis the batch is split over.
AXIS = "batch"


def mesh(devices: Sequence[Any] | None = None) -> Mesh:
    """A 1-D device mesh named :data:`AXIS` over ``devices`` (default: this process's, ``jax.local_devices()``,
    which are all of ``jax.devices()`` unless several processes run, see :func:`initialize`)."""
    devs = list(jax.local_devices() if devices is None else devices)
    if not devs:
        raise InputError("devices: expected at least one device, got none")
    return Mesh(np.array(devs), (AXIS,))


def replicate(tree: Any, devices: Sequence[Any] | Mesh | None = None) -> Any:
    """Places a pytree on every device (fully replicated); returns it unchanged if already so."""
    m = devices if isinstance(devices, Mesh) else mesh(devices)
    return jax.device_put(tree, NamedSharding(m, PartitionSpec()))


def _leading(batched: Sequence[Any]) -> int:
    leaves = jax.tree.leaves(batched)
    if not leaves:
        raise InputError("batched: expected at least one array with a batch axis, got none")
    sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in leaves}
    if None in sizes or len(sizes) != 1:
        shapes = [tuple(np.shape(leaf)) for leaf in leaves]
        raise InputError(f"batched: expected arrays sharing one leading batch axis, got shapes {shapes}")
    (n,) = sizes
    if n == 0:
        raise InputError("batched: expected a non-empty batch, got 0 entries")
    return int(n)


def pad_batch(tree: Any, multiple: int) -> tuple[Any, int]:
    """Pads every array's leading axis to a multiple of ``multiple`` by repeating the last entry.

    Repeating a real entry (rather than zeros) keeps the padding inside the
    function's normal input domain: no NaNs from an all-zero image.

    Args:
      tree: a pytree of arrays sharing their leading axis size N.
      multiple: positive int.

    Returns:
      ``(padded_tree, n)`` with ``n`` the original size N.
    """
    multiple = _checks.positive_int(multiple, "multiple")
    n = _leading(tree)
    extra = (-n) % multiple
    if not extra:
        return tree, n

    def pad(a):
        xp = jnp if isinstance(a, jax.Array) else np
        a = a if isinstance(a, jax.Array) else np.asarray(a)
        return xp.concatenate([a, xp.repeat(a[-1:], extra, axis=0)], axis=0)

    return jax.tree.map(pad, tree), n


class DataParallel:
    """``fn(shared, *batched)`` split over a device mesh along the batch axis (see :func:`data_parallel`)."""

    def __init__(self, fn: Callable[..., Any], devices: Sequence[Any] | None = None):
        if not callable(fn):
            raise InputError(f"fn: expected a callable fn(shared, *batched), got {type(fn).__name__}")
        self.fn = fn
        self.mesh = mesh(devices)
        self.num_devices = self.mesh.size
        self._shard = NamedSharding(self.mesh, PartitionSpec(AXIS))
        self._replicated = NamedSharding(self.mesh, PartitionSpec())
        self._compiled: dict[int, Callable[..., Any]] = {}

    def _runner(self, nbatched: int) -> Callable[..., Any]:
        if nbatched not in self._compiled:
            specs = (PartitionSpec(),) + (PartitionSpec(AXIS),) * nbatched
            sharded = jax.shard_map(
                self.fn, mesh=self.mesh, in_specs=specs, out_specs=PartitionSpec(AXIS), check_vma=False
            )
            self._compiled[nbatched] = jax.jit(sharded)
        return self._compiled[nbatched]

    def __call__(self, shared: Any, *batched: Any) -> Any:
        """Runs ``fn`` on the batch; outputs trimmed to the input's batch size."""
        padded, n = pad_batch(batched, self.num_devices)
        padded = jax.device_put(padded, self._shard)
        shared = jax.device_put(shared, self._replicated)
        out = self._runner(len(batched))(shared, *padded)
        if n == _leading(padded):
            return out
        return jax.tree.map(lambda o: o[:n], out)


def data_parallel(fn: Callable[..., Any], *, devices: Sequence[Any] | None = None) -> DataParallel:
    """Wraps ``fn(shared, *batched)`` to run data-parallel over ``devices``.

    Args:
      fn: a pure function of ``shared`` (replicated on every device, e.g. the
        parameters) and one or more ``batched`` pytrees whose arrays share a
        leading batch axis; it must return a pytree of arrays with that batch
        axis first, and treat batch entries independently (each device sees
        only its slice).
      devices: the devices to use (default: this process's, ``jax.local_devices()``).

    Returns:
      A callable ``g(shared, *batched)`` returning ``fn``'s outputs for the
      whole batch, any batch size (padded to a multiple of the device count
      by repeating the last entry, trimmed afterwards). Compiled once per
      padded batch shape.

    Raises:
      InputError: ``fn`` not callable, no devices, or batched arrays with
        different leading sizes.

    Example::

        g = data_parallel(lambda p, x: net.apply(p, x))
        logits = g(params, images)
    """
    return DataParallel(fn, devices)


def initialize(**kwargs: Any) -> None:
    """Joins this process to a multi-process JAX run: ``jax.distributed.initialize(**kwargs)``.

    Without arguments the cluster is detected from the environment (Cloud
    TPU, SLURM, Open MPI, Kubernetes; see JAX's docs), so the same program runs
    on every host. Host-CPU processes exchange their barriers over Gloo (set
    here, before JAX starts its CPU backend). Call it before any other JAX
    work in the process.

    Raises:
      InputError: no cluster was detected and no coordinator given, or JAX
        has already started (the message says which).
    """
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except (AttributeError, ValueError):  # a jaxlib without Gloo: CPU processes then cannot meet at barriers
        pass
    try:
        jax.distributed.initialize(**kwargs)
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0].rstrip(".") if str(e).strip() else type(e).__name__
        err = InputError(f"distributed: could not join a multi-process run: {first}; JAX detects Cloud TPU, "
                         "SLURM, Open MPI and Kubernetes clusters, elsewhere pass coordinator_address, "
                         "num_processes and process_id")
        err.reason = first
        raise err from None


def barrier(name: str) -> None:
    """Waits until every process of a multi-process run gets here (nothing to wait for with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
