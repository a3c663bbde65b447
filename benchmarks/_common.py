"""Shared helpers for the benchmark programs (not part of the library)."""

from __future__ import annotations

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))


def timeit(fn, *, repeats: int = 5, warmup: int = 1) -> float:
    """Median seconds per call of ``fn`` (which must block until its result is ready)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def vgg_flops(net, height: int, width: int, *, classifier: bool = True) -> float:
    """Forward FLOPs (2 per multiply-add) of a jaxviz VGG for one image."""
    flops, cin, h, w = 0.0, 3, height, width
    for stage in net.stages:
        for cout in stage:
            flops += 2 * h * w * cin * cout * 9
            cin = cout
        h, w = h // 2, w // 2
    if classifier and net.classifier:
        ph, pw = net.pool_output
        dims = [ph * pw * cin, net.fc_features, net.fc_features, net.num_classes]
        flops += sum(2 * a * b for a, b in zip(dims[:-1], dims[1:]))
    return flops


def matmul_rate(n: int = 2048, repeats: int = 5, dtype=None) -> float:
    """FLOP/s of an n x n matmul on the default JAX device, measured now.

    ``dtype`` is that of the operands (float32 by default); the product is always accumulated and returned in
    float32, as a network's layers in that dtype do (``preferred_element_type``).
    """
    import jax
    import jax.numpy as jnp

    dtype = jnp.float32 if dtype is None else dtype
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dtype)
    f = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32))
    t = timeit(lambda: f(a, b).block_until_ready(), repeats=repeats)
    return 2 * n**3 / t


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what ``platform`` knows: the ratios depend on it."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    import jaxviz  # noqa: F401  (its XLA:CPU settings apply only if it is imported before JAX starts its backend)
    import jax

    dev = jax.devices()[0]
    flags = os.environ.get("XLA_FLAGS", "")
    return (f"{dev.platform}:{dev.device_kind} ({cpu_model()}), {os.cpu_count()} cpus, jax {jax.__version__}, "
            f"XLA_FLAGS={flags!r}")
