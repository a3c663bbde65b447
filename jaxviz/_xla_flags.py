"""XLA:CPU settings jaxviz applies when it is imported, before JAX starts its CPU backend.

jaxlib 0.10.2 began handing chains of operations to YNNPACK on the CPU
("ynn fusions", ``--xla_cpu_experimental_ynn_fusion_type``). For a VGG, whose
max pools are reductions, that pulls the entire network into one YNNPACK
graph whose convolutions run far slower than XLA's own. YNNPACK's matrix
products are worth keeping, though: the classifier's backward pass multiplies
by the transposed 25088x4096 ``fc6`` kernel, which XLA's own dot does by first
transposing 411 MB. So ``import jaxviz`` restricts the fusions to single
matrix products by adding ``--xla_cpu_experimental_ynn_fusion_type=individual_dot``
to ``XLA_FLAGS``. ``python benchmarks/vgg.py`` measures the three settings;
docs/performance.md has the numbers.

It does so only when all of these hold, and otherwise leaves the environment alone:

* ``JAXVIZ_KEEP_XLA_FLAGS`` is unset (or ``0``): setting it opts out;
* ``XLA_FLAGS`` does not already mention the YNN fusion flag (the user's choice wins);
* the installed jaxlib is one known to accept the flag (:data:`KNOWN_JAXLIB`):
  XLA aborts the process on a flag it does not know.

XLA reads ``XLA_FLAGS`` once, when JAX first creates its CPU backend, so the
setting takes effect only if ``jaxviz`` is imported before the first JAX
computation of the process (importing ``jax`` itself is fine). The flag
concerns the CPU backend only; GPU and TPU runs are unaffected.
"""

from __future__ import annotations

import os
import re
from collections.abc import MutableMapping
from importlib import metadata

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type=individual_dot"
OPT_OUT = "JAXVIZ_KEEP_XLA_FLAGS"
#: [first, last) jaxlib versions checked to accept ``YNN_FLAG`` (0.10.2 turned the fusions on by default)
KNOWN_JAXLIB = ((0, 10, 2), (0, 11, 0))


def _version(text: str) -> tuple[int, ...] | None:
    m = re.match(r"(\d+)\.(\d+)\.(\d+)", text)
    return tuple(int(g) for g in m.groups()) if m else None


def known_jaxlib(jaxlib_version: str | None = None) -> bool:
    """Whether the installed jaxlib (or ``jaxlib_version``) is one whose XLA flags jaxviz has checked
    (:data:`KNOWN_JAXLIB`): XLA aborts the process on a flag it does not know."""
    if jaxlib_version is None:
        try:
            jaxlib_version = metadata.version("jaxlib")
        except metadata.PackageNotFoundError:
            return False
    v = _version(jaxlib_version)
    return v is not None and KNOWN_JAXLIB[0] <= v < KNOWN_JAXLIB[1]


def apply(environ: MutableMapping[str, str] | None = None, jaxlib_version: str | None = None) -> bool:
    """Adds :data:`YNN_FLAG` to ``environ["XLA_FLAGS"]`` when the conditions above hold; True if it did."""
    environ = os.environ if environ is None else environ
    if environ.get(OPT_OUT, "") not in ("", "0"):
        return False
    flags = environ.get("XLA_FLAGS", "")
    if "xla_cpu_experimental_ynn_fusion_type" in flags:
        return False
    if not known_jaxlib(jaxlib_version):
        return False
    environ["XLA_FLAGS"] = (flags + " " + YNN_FLAG).strip()
    return True
