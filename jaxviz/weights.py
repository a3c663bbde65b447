"""Parameters for jaxviz models: torchvision/timm conversion, cache, download, random init.

Loading is a pure function returning a params pytree; modules never touch
files or the network. The layout is Flax's::

    {"params": {"conv1_1": {"kernel": (3, 3, 3, 64), "bias": (64,)}, ...,
                "fc6": {"kernel": (25088, 4096), "bias": (4096,)}, ...}}

Conversion from torchvision's state dict: conv kernels OIHW -> HWIO, linear
weights transposed, and ``fc6``'s input axis permuted from torchvision's
(C, H, W) flattening to our NHWC (H, W, C) flattening.

Example::

    from jaxviz import models, weights
    params = weights.random("vgg19", seed=0)          # offline, torchvision's init
    params = weights.load("vgg19")                     # pretrained: cache, else download
    params = weights.from_torchvision("vgg19-dcbb9e9d.pth", arch="vgg19")
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from . import models
from ._io import atomic_write_bytes, atomic_write_text
from .download import sha256_file
from .errors import (
    ArchitectureError,
    ChecksumError,
    DownloadError,
    InputError,
    WeightsError,
    WeightsNotFoundError,
)
from .models.resnet import RESNETS, ResNet
from .models.vgg import VGG

__all__ = [
    "torchvision_keys",
    "SOURCES",
    "Source",
    "cache_dir",
    "cached",
    "convert",
    "from_torchvision",
    "from_keras",
    "keras_names",
    "file_info",
    "load",
    "load_file",
    "random",
    "save",
    "to_torchvision",
    "features_only",
]

CACHE_ENV = "JAXVIZ_CACHE"
_PREFIX_RE = re.compile(r"-([0-9a-f]{8,64})\.(?:pth|pt|safetensors)$")


@dataclass(frozen=True)
class Source:
    """A pretrained weight file jaxviz can fetch: where from and its checksum."""

    arch: str
    url: str
    filename: str
    sha256_prefix: str
    size_mb: float

    @property
    def converted_name(self) -> str:
        return f"{self.arch}-{self.sha256_prefix}.jaxviz.safetensors"


def _read_manifest() -> dict[str, Source]:
    raw = json.loads(resources.files("jaxviz").joinpath("data/manifest.json").read_text())
    return {
        arch: Source(arch, s["url"], s["filename"], s["sha256_prefix"], s["size_mb"])
        for arch, s in raw["sources"].items()
    }


SOURCES: dict[str, Source] = _read_manifest()


def cache_dir() -> Path:
    """The weight cache: ``$JAXVIZ_CACHE``, else ``$XDG_CACHE_HOME/jaxviz``, else ``~/.cache/jaxviz``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "jaxviz"


def _net_for(arch: str | VGG | ResNet) -> VGG | ResNet:
    if isinstance(arch, (VGG, ResNet)):
        return arch
    return models.get(arch)


def _arch_name(arch: str | VGG | ResNet) -> str:
    if isinstance(arch, VGG):
        for name, stages in (("vgg16", models.VGG16_STAGES), ("vgg19", models.VGG19_STAGES)):
            if tuple(map(tuple, arch.stages)) == stages:
                return name
        return "custom VGG"
    if isinstance(arch, ResNet):
        for name, (kind, blocks) in RESNETS.items():
            if arch.kind == kind and tuple(arch.blocks) == blocks:
                return name
        return "custom ResNet"
    return arch


def _is_resnet(arch: Any) -> bool:
    return isinstance(arch, ResNet) or (isinstance(arch, str) and arch in RESNETS)


def _conv_names(net: VGG) -> list[str]:
    return [n for n in net.layers if n.startswith("conv")]


# --------------------------------------------------------------------------- random init


def random(arch: str | VGG = "vgg19", seed: int = 0, *, classifier: bool = True) -> dict:
    """Random parameters with torchvision's initialisation scheme, for offline use.

    Convolutions: Kaiming normal, ``mode="fan_out"``, gain sqrt(2) (std =
    sqrt(2 / (out_channels * 9))), zero bias. Linear layers: N(0, 0.01), zero bias.

    Args:
      arch: ``"vgg16"``, ``"vgg19"`` or a :class:`~jaxviz.models.VGG` module.
      seed: PRNG seed.
      classifier: include ``fc6``..``fc8`` (ignored for a features-only module).

    Returns:
      A Flax params pytree ``{"params": {...}}`` of float32 arrays.
    """
    net = _net_for(arch)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed: expected a non-negative int, got {seed!r}")
    # NumPy's generator: drawing VGG19's 140M normals with jax.random on a CPU takes
    # ~20 s (threefry plus one compile per shape); NumPy takes well under a second.
    rng = np.random.default_rng(seed)
    if isinstance(net, ResNet):
        return _random_resnet(net, rng)
    classifier = classifier and net.classifier
    params: dict[str, dict[str, jax.Array]] = {}
    cin = 3
    for b, stage in enumerate(net.stages, 1):
        for n, cout in enumerate(stage, 1):
            std = np.sqrt(2.0 / (cout * 9))
            params[f"conv{b}_{n}"] = {
                "kernel": jnp.asarray(std * rng.standard_normal((3, 3, cin, cout), np.float32)),
                "bias": jnp.zeros((cout,), jnp.float32),
            }
            cin = cout
    if classifier:
        ph, pw = net.pool_output
        dims = [ph * pw * cin, net.fc_features, net.fc_features, net.num_classes]
        for name, din, dout in zip(("fc6", "fc7", "fc8"), dims[:-1], dims[1:]):
            params[name] = {
                "kernel": jnp.asarray(np.float32(0.01) * rng.standard_normal((din, dout), np.float32)),
                "bias": jnp.zeros((dout,), jnp.float32),
            }
    return {"params": params}


def _random_resnet(net: ResNet, rng: np.random.Generator) -> dict:
    """torchvision's ResNet init with BatchNorm at its initial state folded in: convolutions Kaiming normal
    (``fan_out``, gain sqrt(2)), zero biases; ``fc`` uniform(+-1/sqrt(fan_in)) weight and bias (``nn.Linear``'s)."""
    shapes = jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))["params"]
    scale = np.float32(1.0 / np.sqrt(1.0 + 1e-5))  # a fresh BatchNorm in inference mode: x / sqrt(1 + eps)

    def draw(path, spec):
        names = [getattr(k, "key", str(k)) for k in path]
        shape = spec.shape
        if names[0] == "fc":
            bound = 1.0 / np.sqrt(shapes["fc"]["kernel"].shape[0])
            return jnp.asarray(rng.uniform(-bound, bound, shape).astype(np.float32))
        if names[-1] == "bias":
            return jnp.zeros(shape, jnp.float32)
        kh, kw, _, cout = shape
        std = np.sqrt(2.0 / (cout * kh * kw))
        return jnp.asarray(scale * std * rng.standard_normal(shape, np.float32))

    return {"params": jax.tree_util.tree_map_with_path(draw, shapes)}


def _inner(params: Any, name: str = "params") -> Mapping:
    """The layer mapping of ``{"params": {...}}`` or of that inner mapping itself."""
    if not isinstance(params, Mapping):
        raise InputError(f"{name}: expected flax params ({{'params': {{layer: {{...}}}}}}), got {type(params).__name__}")
    return params["params"] if "params" in params else params


def features_only(params: Mapping) -> dict:
    """Drops ``fc6``..``fc8`` (about 120M of VGG's 140M parameters); takes ``{"params": ...}`` or its inner
    mapping and returns ``{"params": ...}``."""
    return {"params": {k: v for k, v in _inner(params).items() if k.startswith("conv")}}


# --------------------------------------------------------------------------- torchvision layout


def _torch_indices(net: VGG) -> dict[str, int]:
    """conv name -> index in torchvision's ``features`` Sequential."""
    out, i = {}, 0
    for b, stage in enumerate(net.stages, 1):
        for n in range(1, len(stage) + 1):
            out[f"conv{b}_{n}"] = i
            i += 2  # Conv2d, ReLU
        i += 1  # MaxPool2d
    return out


def torchvision_keys(arch: str | VGG = "vgg19", *, classifier: bool = True) -> dict[str, str]:
    """jaxviz layer name -> the prefix of its tensors in torchvision's VGG state dict (``PREFIX.weight``,
    ``PREFIX.bias``): what a user converting another layout (Keras, ONNX, a custom checkpoint) renames to, before
    handing the dict to :func:`from_torchvision`, which transposes (OIHW -> HWIO) and permutes ``fc6``'s inputs.

    Args:
      arch: ``"vgg16"``, ``"vgg19"`` or a VGG module (its stages).
      classifier: include ``fc6``..``fc8`` (``classifier.0/3/6``).

    Example:
      >>> from jaxviz import weights
      >>> keys = weights.torchvision_keys("vgg16")
      >>> keys["conv1_1"], keys["conv5_3"], keys["fc8"]
      ('features.0', 'features.28', 'classifier.6')
      >>> keras = {"block1_conv1": "conv1_1", "block5_conv3": "conv5_3"}   # Keras' names -> jaxviz's
      >>> {k: keys[v] for k, v in keras.items()}
      {'block1_conv1': 'features.0', 'block5_conv3': 'features.28'}
    """
    net = _net_for(arch)
    out = {conv: f"features.{i}" for conv, i in _torch_indices(net).items()}
    if classifier:
        out.update(fc6="classifier.0", fc7="classifier.3", fc8="classifier.6")
    return out


def _to_numpy(value: Any, key: str) -> np.ndarray:
    """A weight tensor as float32 NumPy: a WeightsError naming ``key`` for a missing value, an integer or boolean
    tensor (a counter or a mask is no weight), or NaN/inf values."""
    if value is None:
        raise WeightsError(f"{key}: missing")
    dtype = getattr(value, "dtype", None)
    if hasattr(value, "detach"):  # a torch tensor, without importing torch
        if not (value.dtype.is_floating_point or value.dtype.is_complex):
            raise WeightsError(f"{key}: expected floating-point weights, got {str(value.dtype).removeprefix('torch.')}")
        value = value.detach().cpu().float().numpy()
    elif dtype is not None and np.dtype(dtype).kind in "biu":
        raise WeightsError(f"{key}: expected floating-point weights, got {np.dtype(dtype).name}")
    try:
        arr = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise WeightsError(f"{key}: expected an array, got {type(value).__name__}") from e
    if not np.isfinite(arr).all():
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise WeightsError(f"{key}: {bad} NaN or infinite value{'s' * (bad != 1)}; the file is damaged")
    return arr


def _layout(state: Mapping[str, Any]) -> str:
    keys = set(state)
    if "head.fc.weight" in keys or "pre_logits.fc1.weight" in keys:
        return "timm"
    return "torchvision"


def convert(state: Mapping[str, Any], arch: str | VGG | None = None, *, name: str = "state dict",
            strict: bool = True) -> dict:
    """Converts a torchvision- or timm-layout VGG state dict to Flax params.

    Args:
      state: mapping key -> array (numpy, torch tensor, anything ``np.asarray`` takes).
        torchvision keys: ``features.{i}.weight``, ``classifier.{0,3,6}.weight``;
        timm keys (``vgg19.tv_in1k``): ``features.{i}.weight``,
        ``pre_logits.fc1.weight`` (a 7x7 conv), ``pre_logits.fc2.weight`` (1x1 conv),
        ``head.fc.weight``. A state dict without classifier keys converts to a
        features-only params tree.
      arch: ``"vgg16"``, ``"vgg19"``, a VGG module, or None to infer from the
        number of convolutions.
      name: how to refer to the source in error messages.
      strict: like torch's ``load_state_dict(strict=True)``: a key the
        architecture does not have is an error. ``strict=False`` ignores such
        keys (a missing or wrongly shaped key is an error either way).

    Returns:
      A Flax params pytree.

    Raises:
      ArchitectureError: the state dict holds another architecture (layer count
        or shapes differ), or a key is missing or (``strict``) unexpected,
        naming it.
      WeightsError: values unusable: not floating point, NaN or infinite.
    """
    if not isinstance(state, Mapping):
        raise InputError(f"state: expected a mapping of name -> array, got {type(state).__name__}")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if arch is None and "layer1.0.conv1.weight" in state:
        arch = _infer_resnet(state, name)
    if _is_resnet(arch):
        return _convert_resnet(state, arch, name, strict)
    layout = _layout(state)
    conv_keys = sorted(
        (int(k.split(".")[1]) for k in state if re.fullmatch(r"features\.\d+\.weight", k))
    )
    found = len(conv_keys)
    if arch is None:
        by_count = {len(_conv_names(models.get(a))): a for a in models.ARCHS}
        if found not in by_count:
            raise ArchitectureError(
                f"{name}: found {found} convolutions in 'features', which is neither VGG16 (13) nor VGG19 (16)"
            )
        arch = by_count[found]
    net = _net_for(arch)
    label = _arch_name(arch)
    indices = _torch_indices(net)
    expected = len(indices)
    if found != expected or sorted(indices.values()) != conv_keys:
        guess = {13: " (looks like VGG16)", 16: " (looks like VGG19)"}.get(found, "")
        raise ArchitectureError(
            f"{name}: wrong architecture: expected {label} with {expected} convolutions in 'features', "
            f"found {found}{guess}"
        )

    used: set[str] = set()

    def take(key: str, shape: tuple | None = None, what: str = "") -> np.ndarray:
        if key not in state:
            raise ArchitectureError(f"{name}: wrong architecture: no {key}{what} for {label}")
        used.add(key)
        arr = _to_numpy(state[key], key)
        if shape is not None and arr.shape != shape:
            raise ArchitectureError(f"{name}: wrong architecture: {key}{what} has shape {arr.shape}, expected {shape} "
                                    f"for {label}")
        return arr

    params: dict[str, dict[str, np.ndarray]] = {}
    cin = 3
    for conv, i in indices.items():
        cout = net._widths()[conv]
        w = take(f"features.{i}.weight", (cout, cin, 3, 3), f" ({conv})")
        bias = take(f"features.{i}.bias", (cout,), f" ({conv})")
        params[conv] = {"kernel": w.transpose(2, 3, 1, 0), "bias": bias}
        cin = cout

    fc_keys = (
        ("pre_logits.fc1", "pre_logits.fc2", "head.fc")
        if layout == "timm"
        else ("classifier.0", "classifier.3", "classifier.6")
    )
    has_fc = [f"{k}.weight" in state for k in fc_keys]
    if net.classifier and any(has_fc):
        if not all(has_fc):
            missing = [f"{k}.weight" for k, h in zip(fc_keys, has_fc) if not h]
            raise WeightsError(f"{name}: classifier incomplete, missing {', '.join(missing)}")
        ph, pw = net.pool_output
        for fc, key in zip(("fc6", "fc7", "fc8"), fc_keys):
            w = take(f"{key}.weight")
            bias = take(f"{key}.bias")
            if bias.shape != (w.shape[0],):
                raise ArchitectureError(f"{name}: wrong architecture: {key}.bias has shape {bias.shape}, expected "
                                        f"{(w.shape[0],)} for {label}")
            if fc == "fc6":
                w = w.reshape(w.shape[0], cin, ph, pw)  # (F, C, H, W), torch flattening order
                if w.shape[0] != net.fc_features:
                    raise ArchitectureError(
                        f"{name}: {key}.weight has {w.shape[0]} outputs, expected {net.fc_features}"
                    )
                kernel = w.transpose(2, 3, 1, 0).reshape(ph * pw * cin, -1)
            else:
                kernel = w.reshape(w.shape[0], -1).T
            params[fc] = {"kernel": kernel, "bias": bias}
        if params["fc8"]["kernel"].shape[1] != net.num_classes and not isinstance(arch, VGG):
            raise ArchitectureError(
                f"{name}: classifier has {params['fc8']['kernel'].shape[1]} classes; "
                f"build the model with models.{label}(num_classes=...) and pass it as arch"
            )
    extra = sorted(k for k in state if k not in used)
    if not net.classifier:  # a features-only network: the classifier's keys are expected, and left out
        extra = [k for k in extra if not k.startswith(tuple(f"{c}." for c in fc_keys))]
    if extra and strict:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise ArchitectureError(f"{name}: wrong architecture: unexpected key {extra[0]}{more} for {label} "
                                "(strict=False ignores keys the architecture does not have)")
    for layer in params.values():
        for k in layer:
            layer[k] = np.ascontiguousarray(layer[k], dtype=np.float32)
    return {"params": jax.tree.map(jnp.asarray, params)}


BN_EPSILON = 1e-5  # torchvision's BatchNorm2d default


def _infer_resnet(state: Mapping[str, Any], name: str) -> str:
    """The torchvision ResNet a state dict holds, from its blocks per stage and block kind."""
    blocks = []
    for s in range(1, 5):
        idx = {int(m.group(1)) for k in state if (m := re.match(rf"layer{s}\.(\d+)\.", k))}
        blocks.append(max(idx) + 1 if idx else 0)
    kind = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
    for arch, spec in RESNETS.items():
        if spec == (kind, tuple(blocks)):
            return arch
    raise ArchitectureError(f"{name}: a ResNet with {kind} blocks {'-'.join(map(str, blocks))} per stage, which is "
                            f"none of {', '.join(RESNETS)}")


def _convert_resnet(state: Mapping[str, Any], arch: str | ResNet, name: str, strict: bool = True) -> dict:
    """A torchvision/timm ResNet state dict -> Flax params with every BatchNorm folded into its convolution.

    Strict like ``load_state_dict``: a missing, unexpected or wrongly shaped key is an ArchitectureError naming
    it (``num_batches_tracked`` counters are ignored).
    """
    net = _net_for(arch)
    label = _arch_name(arch)
    expected = jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))["params"]
    used: set[str] = set()

    def take(key: str) -> np.ndarray:
        if key not in state:
            raise ArchitectureError(f"{name}: wrong architecture: no {key} for {label}")
        used.add(key)
        return _to_numpy(state[key], key)

    def conv_bn(conv: str, bn: str, shape: tuple) -> dict:
        w = take(f"{conv}.weight")
        want = (shape[3], shape[2], shape[0], shape[1])
        if w.shape != want:
            raise ArchitectureError(f"{name}: wrong architecture: {conv}.weight has shape {w.shape}, expected {want} "
                                    f"for {label}")
        gamma, beta = take(f"{bn}.weight"), take(f"{bn}.bias")
        mean, var = take(f"{bn}.running_mean"), take(f"{bn}.running_var")
        scale = gamma / np.sqrt(var + BN_EPSILON)
        return {"kernel": (w * scale[:, None, None, None]).transpose(2, 3, 1, 0), "bias": beta - mean * scale}

    params: dict[str, Any] = {"conv1": conv_bn("conv1", "bn1", expected["conv1"]["kernel"].shape)}
    for s, n in enumerate(net.blocks, 1):
        for b in range(n):
            module, prefix = f"layer{s}_{b}", f"layer{s}.{b}"
            block = {}
            for conv, leaves in expected[module].items():
                if conv == "downsample":
                    block[conv] = conv_bn(f"{prefix}.downsample.0", f"{prefix}.downsample.1", leaves["kernel"].shape)
                else:
                    block[conv] = conv_bn(f"{prefix}.{conv}", f"{prefix}.bn{conv[-1]}", leaves["kernel"].shape)
            params[module] = block
    w, bias = take("fc.weight"), take("fc.bias")
    cin = expected["fc"]["kernel"].shape[0]
    if w.ndim != 2 or w.shape[1] != cin:
        raise ArchitectureError(f"{name}: wrong architecture: fc.weight has shape {w.shape}, expected (K, {cin}) for "
                                f"{label}")
    if w.shape[0] != net.num_classes:
        raise ArchitectureError(f"{name}: fc has {w.shape[0]} classes; build the model with "
                                f"models.{label}(num_classes={w.shape[0]}) and pass it as arch")
    params["fc"] = {"kernel": w.T, "bias": bias}
    extra = sorted(k for k in state if k not in used and not k.endswith("num_batches_tracked"))
    if extra and strict:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise ArchitectureError(f"{name}: wrong architecture: unexpected key {extra[0]}{more} for {label}")
    return {"params": jax.tree.map(lambda a: jnp.asarray(np.ascontiguousarray(a, np.float32)), params)}


def to_torchvision(params: Mapping, arch: str | VGG = "vgg19") -> dict[str, np.ndarray]:
    """The inverse of :func:`convert`: Flax params -> torchvision state dict (numpy)."""
    net = _net_for(arch)
    inner = _inner(params)
    missing = [c for c in _torch_indices(net) if c not in inner]
    if missing:
        raise ArchitectureError(f"params: no {missing[0]} for {_arch_name(arch)}; pass arch= the network these "
                                f"params belong to (e.g. the models.VGG(...) they were made for)")
    state: dict[str, np.ndarray] = {}
    for conv, i in _torch_indices(net).items():
        state[f"features.{i}.weight"] = np.asarray(inner[conv]["kernel"]).transpose(3, 2, 0, 1)
        state[f"features.{i}.bias"] = np.asarray(inner[conv]["bias"])
    if "fc6" in inner:
        ph, pw = net.pool_output
        k6 = np.asarray(inner["fc6"]["kernel"])
        cin = k6.shape[0] // (ph * pw)
        w6 = k6.reshape(ph, pw, cin, -1).transpose(3, 2, 0, 1).reshape(k6.shape[1], -1)
        for fc, key, w in (
            ("fc6", "classifier.0", w6),
            ("fc7", "classifier.3", np.asarray(inner["fc7"]["kernel"]).T),
            ("fc8", "classifier.6", np.asarray(inner["fc8"]["kernel"]).T),
        ):
            state[f"{key}.weight"] = np.ascontiguousarray(w)
            state[f"{key}.bias"] = np.asarray(inner[fc]["bias"])
    return state


# --------------------------------------------------------------------------- Keras and ONNX


#: Keras applications' VGG head -> jaxviz's
_KERAS_HEAD = {"fc1": "fc6", "fc2": "fc7", "predictions": "fc8"}
_KERAS_LEAF = re.compile(r"(?:^|/)(block\d+_conv\d+|fc1|fc2|predictions)(?:_\d+)?/(kernel|bias)(?::0)?$")
#: the shapes that mark an ONNX graph's first dense layers as Keras' VGG classifier: (7 * 7 * 512, 4096)
_VGG_HEAD_INPUTS = (7 * 7 * 512, 4096)
_KERAS3_LEAF = re.compile(r"(?:^|/)(block\d+_conv\d+|fc1|fc2|predictions)(?:_\d+)?/vars/([01])$")


def keras_names(arch: str | VGG = "vgg19", *, classifier: bool = True) -> dict[str, str]:
    """Keras applications' layer name -> jaxviz's (``block1_conv1`` -> ``conv1_1``, ``fc1`` -> ``fc6``,
    ``predictions`` -> ``fc8``).

    Example:
      >>> from jaxviz import weights
      >>> names = weights.keras_names("vgg16")
      >>> names["block1_conv1"], names["block5_conv3"], names["predictions"]
      ('conv1_1', 'conv5_3', 'fc8')
    """
    net = _net_for(arch)
    out = {f"block{b}_conv{n}": f"conv{b}_{n}" for b, stage in enumerate(net.stages, 1)
           for n in range(1, len(stage) + 1)}
    if classifier:
        out.update(_KERAS_HEAD)
    return out


def _read_h5(path: Path) -> dict[str, np.ndarray]:
    """The VGG arrays of a Keras ``.h5`` file as ``{"block1_conv1/kernel": array, ...}``: Keras 2's
    ``save_weights`` files (keras.applications' ``vgg16_weights_tf_dim_ordering_tf_kernels*.h5``), whole-model
    files (under ``model_weights/``) and Keras 3's ``.weights.h5`` (``layers/NAME/vars/0``)."""
    try:
        import h5py
    except ImportError:
        raise WeightsError(f"{path}: reading Keras .h5 files needs h5py: pip install 'jaxviz[keras]' "
                           "(or pip install h5py)") from None
    out: dict[str, np.ndarray] = {}
    other: list[str] = []

    def visit(name: str, obj: Any) -> None:
        if not isinstance(obj, h5py.Dataset):
            return
        m = _KERAS_LEAF.search(name)
        if m:
            out[f"{m.group(1)}/{m.group(2)}"] = obj[()]
            return
        m = _KERAS3_LEAF.search(name)
        if m:
            out[f"{m.group(1)}/{('kernel', 'bias')[int(m.group(2))]}"] = obj[()]
            return
        other.append(name)

    try:
        with h5py.File(path, "r") as f:
            f.visititems(visit)
    except OSError as e:
        raise WeightsError(f"{path}: corrupt or not an HDF5 file ({e})") from None
    if not out:
        raise WeightsError(f"{path}: no Keras VGG layers (block1_conv1/kernel ...) in this file"
                           + (f"; it holds {other[0]} ..." if other else ""))
    return out


def _read_onnx(path: Path) -> dict[str, np.ndarray]:
    """A Keras VGG exported to ONNX as ``{"block1_conv1/kernel": HWIO array, ...}``: the ``Conv`` nodes'
    initializers in graph order (13 or 16; a pretrained base under any head), and the first three ``MatMul``/``Gemm``
    initializers after them as ``fc1``, ``fc2``, ``predictions`` when their shapes are VGG's classifier's."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise WeightsError(f"{path}: reading ONNX files needs onnx: pip install 'jaxviz[keras]' "
                           "(or pip install onnx)") from None
    try:
        model = onnx.load(str(path))
    except Exception as e:  # onnx raises DecodeError, ValueError ... for a damaged file
        raise WeightsError(f"{path}: corrupt or not an ONNX file ({type(e).__name__}: {e})") from None
    init = {t.name: t for t in model.graph.initializer}

    def array(node, i: int) -> np.ndarray:
        if len(node.input) <= i or node.input[i] not in init:
            raise WeightsError(f"{path}: {node.op_type} node {node.name or node.output[0]!r} takes its weights from "
                               "the graph, not from an initializer; export the model with constant weights")
        return numpy_helper.to_array(init[node.input[i]])

    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    if not convs:
        raise WeightsError(f"{path}: no convolutions in this ONNX graph")
    out: dict[str, np.ndarray] = {}
    # a block ends where the next convolution reads a pooled map
    pooled = {n.output[0] for n in model.graph.node if n.op_type in ("MaxPool", "AveragePool")}
    b, n_in_block = 1, 0
    for i, node in enumerate(convs):
        if i and node.input[0] in pooled:
            b, n_in_block = b + 1, 0
        n_in_block += 1
        kernel = array(node, 1)
        if kernel.ndim != 4:
            raise WeightsError(f"{path}: convolution {i + 1} has a {kernel.ndim}-d kernel, expected (O, I, kH, kW)")
        out[f"block{b}_conv{n_in_block}/kernel"] = kernel.transpose(2, 3, 1, 0)
        out[f"block{b}_conv{n_in_block}/bias"] = (array(node, 2) if len(node.input) > 2
                                                   else np.zeros(kernel.shape[0], kernel.dtype))
    last = max(i for i, n in enumerate(model.graph.node) if n.op_type == "Conv")
    dense = []
    for node in model.graph.node[last + 1:]:
        if node.op_type == "MatMul" and node.input[1] in init:
            dense.append((node, numpy_helper.to_array(init[node.input[1]]), None))
        elif node.op_type == "Gemm" and node.input[1] in init:
            w = numpy_helper.to_array(init[node.input[1]])
            trans = any(a.name == "transB" and a.i for a in node.attribute)
            bias = numpy_helper.to_array(init[node.input[2]]) if len(node.input) > 2 and node.input[2] in init else None
            dense.append((node, w.T if trans else w, bias))
    inputs, width = _VGG_HEAD_INPUTS
    if len(dense) >= 3 and dense[0][1].shape[0] == inputs and dense[0][1].shape[1] == dense[1][1].shape[0] == width:
        for (node, w, bias), name in zip(dense[:3], _KERAS_HEAD):
            if bias is None:  # MatMul then Add(bias initializer)
                adds = [n for n in model.graph.node if n.op_type == "Add" and node.output[0] in n.input]
                names = [x for a in adds for x in a.input if x in init]
                bias = numpy_helper.to_array(init[names[0]]) if names else np.zeros(w.shape[1], w.dtype)
            out[f"{name}/kernel"], out[f"{name}/bias"] = w, bias
    return out


def from_keras(source: str | os.PathLike | Mapping[str, Any], arch: str | VGG | None = None, *,
               strict: bool = True) -> dict:
    """Flax params from Keras applications' VGG16/VGG19 weights (for ``models.vgg16(preprocess="caffe")``).

    Keras' VGG weights (converted from the original Caffe models) expect BGR
    input, 0-255, minus the BGR mean; their ``conv1_1`` kernel reads the
    channels in B, G, R order. The params are returned as Keras stores them,
    so build the model with ``preprocess="caffe"`` (RGB [0, 1] in, the
    conversion done inside), or ``preprocess="none"`` for a network that was
    fine-tuned on raw inputs. :func:`save` records the convention with
    ``preprocess=``, and ``jaxviz ... --weights FILE`` reads it back.

    Args:
      source: a Keras ``.h5`` file (keras.applications' ``vgg16_weights_tf_dim_ordering_tf_kernels.h5`` or
        ``..._notop.h5``, a whole saved model, or Keras 3's ``.weights.h5``; needs ``h5py``), an ``.onnx``
        export of such a model (its convolutions in graph order, whatever the head; needs ``onnx``), or a
        mapping ``"block1_conv1/kernel"`` (HWIO) / ``"block1_conv1/bias"`` / ``"fc1/kernel"`` ... -> array.
      arch: ``"vgg16"``, ``"vgg19"``, a VGG module, or None to infer from the number of convolutions.
      strict: a key the architecture does not have is an error (``strict=False`` ignores it). A file's
        layers other than VGG's (an ONNX export's own head) are not keys and are left out either way.

    Returns:
      ``{"params": {...}}``: features only, or with ``fc6``..``fc8`` when the source has Keras' classifier.

    Raises:
      ArchitectureError: another architecture, or a missing, unexpected or misshapen key (named).
      WeightsError: unreadable file, missing optional reader, NaN/inf or integer values.

    Example:
      >>> import numpy as np
      >>> from jaxviz import weights, models
      >>> net = models.vgg16(classifier=False, preprocess="caffe")
      >>> keras = {f"{k}/{leaf}": np.asarray(v) for k, layer in zip(weights.keras_names("vgg16", classifier=False),
      ...          weights.random(net)["params"].values()) for leaf, v in (("kernel", layer["kernel"]),
      ...                                                                   ("bias", layer["bias"]))}
      >>> params = weights.from_keras(keras)
      >>> params["params"]["conv1_1"]["kernel"].shape
      (3, 3, 3, 64)
    """
    if isinstance(source, Mapping):
        name, arrays = "keras dict", {str(k).removesuffix(":0"): v for k, v in source.items()}
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"{path}: no such file")
        name = str(path)
        arrays = _read_onnx(path) if path.suffix.lower() == ".onnx" else _read_h5(path)
    pattern = re.compile(r"(block(\d+)_conv(\d+)|fc1|fc2|predictions)/(kernel|bias)")
    known = {k: v for k, v in arrays.items() if pattern.fullmatch(k)}
    extra = [k for k in arrays if k not in known]
    if arch is None:
        found = sum(1 for k in known if k.startswith("block") and k.endswith("/kernel"))
        arch = {13: "vgg16", 16: "vgg19"}.get(found)
        if arch is None:
            raise ArchitectureError(f"{name}: found {found} convolutions (block*_conv*), which is neither VGG16 (13) "
                                    "nor VGG19 (16)")
    net = _net_for(arch)
    names = keras_names(net)
    extra += [k for k in known if k.split("/")[0] not in names]
    if extra and strict:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise ArchitectureError(f"{name}: wrong architecture: unexpected key {extra[0]}{more} for "
                                f"{_arch_name(arch)} (strict=False ignores keys the architecture does not have)")
    prefixes = torchvision_keys(net)
    state: dict[str, np.ndarray] = {}
    for key, value in known.items():
        layer, leaf = key.split("/")
        if layer not in names:
            continue
        ours = names[layer]
        arr = _to_numpy(value, key)
        if leaf == "kernel":
            if ours.startswith("conv"):
                if arr.ndim != 4:
                    raise ArchitectureError(f"{name}: wrong architecture: {key} has shape {arr.shape}, expected "
                                            "(3, 3, in, out)")
                arr = arr.transpose(3, 2, 0, 1)  # HWIO -> torch's OIHW
            elif ours == "fc6":
                ph, pw = net.pool_output
                cin = net.stages[-1][-1]
                if arr.ndim != 2 or arr.shape[0] != ph * pw * cin:
                    raise ArchitectureError(f"{name}: wrong architecture: {key} has shape {arr.shape}, expected "
                                            f"({ph * pw * cin}, {net.fc_features})")
                # Keras flattens (H, W, C); torch (C, H, W): converted back by convert()
                arr = arr.reshape(ph, pw, cin, -1).transpose(3, 2, 0, 1).reshape(arr.shape[1], -1)
            else:
                arr = arr.T
        state[f"{prefixes[ours]}.{'weight' if leaf == 'kernel' else 'bias'}"] = arr
    try:
        return convert(state, net, name=name)
    except ArchitectureError as e:  # torchvision's key in the message -> Keras' name
        text = str(e)
        for keras, ours in names.items():
            prefix = re.escape(prefixes[ours])
            text = re.sub(prefix + r"\.weight\b", f"{keras}/kernel", text)
            text = re.sub(prefix + r"\.bias\b", f"{keras}/bias", text)
        raise ArchitectureError(text) from None


# --------------------------------------------------------------------------- files


def _check_name_digest(path: Path) -> None:
    """torchvision file names carry the sha256 prefix: verify it when present."""
    m = _PREFIX_RE.search(path.name)
    if m and not path.name.endswith(".jaxviz.safetensors"):
        want, got = m.group(1), sha256_file(path)
        if not got.startswith(want):
            raise ChecksumError(
                f"{path}: checksum mismatch: the name promises sha256 {want}..., the file has {got}; "
                "the file is corrupt, truncated or not the published one: delete it and fetch it again"
            )


def _read_state(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise WeightsNotFoundError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.numpy import load_file as st_load

        try:
            return st_load(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise WeightsError(f"{path}: corrupt or truncated safetensors file ({e})") from e
    try:
        import torch
    except ImportError as e:
        raise WeightsError(
            f"{path}: reading PyTorch .pth files needs PyTorch: pip install 'jaxviz[torch]' "
            "(or pass a .safetensors file, which needs no PyTorch)"
        ) from e
    if Path(path).is_dir():
        raise WeightsError(f"{path}: a folder, expected a weights file (.pth or .safetensors)")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise WeightsError(f"{path}: cannot read it ({e.strerror or e})") from e
    if not head.startswith((b"PK", b"\x80")):  # torch.save writes a zip archive (a pickle before PyTorch 1.6)
        raise WeightsError(f"{path}: not a PyTorch checkpoint (those are zip archives or pickles; this file starts "
                           f"with {head!r})")
    try:
        # weights_only=True: a restricted unpickler, no arbitrary pickled code runs.
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, zip errors ...
        lines = str(e).splitlines()
        # torch's weights_only message opens with advice to load unsafely: keep only its reason
        reason = [ln.split("WeightsUnpickler error:", 1)[1].strip() for ln in lines if "WeightsUnpickler error:" in ln]
        text = reason[0] if reason else (lines[0] if lines else type(e).__name__)
        # every weights_only failure mentions weights_only; only an unsupported GLOBAL means a pickled object
        # (garbage bytes read as a pickle fail with "Unsupported operand" and are reported as corrupt)
        if "Unsupported global" in str(e) or "unsupported GLOBAL" in str(e):
            raise WeightsError(
                f"{path}: refused: the file holds pickled Python objects, not just tensors ({text})"
            ) from e
        raise WeightsError(f"{path}: corrupt or truncated PyTorch file ({text})") from e
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise WeightsError(f"{path}: expected a state dict (name -> tensor), got {type(state).__name__}")
    return dict(state)


def from_torchvision(source: str | os.PathLike | Mapping[str, Any], arch: str | VGG | None = "vgg19", *,
                     strict: bool = True) -> dict:
    """Flax params from a torchvision/timm VGG checkpoint.

    Args:
      source: a ``.pth`` file (read with ``torch.load(weights_only=True)``: no
        pickled code runs), a ``.safetensors`` file in torchvision's or timm's
        layout, or a mapping name -> array.
      arch: ``"vgg16"``, ``"vgg19"``, a VGG module, or None to infer.
      strict: as for :func:`convert` (unexpected keys are an error).

    Returns:
      A Flax params pytree.

    Raises:
      ChecksumError: the file name carries a sha256 prefix (torchvision's
        ``vgg19-dcbb9e9d.pth``) that the content does not match.
      ArchitectureError: the file holds another architecture.
      WeightsError: the file is corrupt, truncated or unreadable.
    """
    if isinstance(source, Mapping):
        return convert(source, arch, strict=strict)
    path = Path(source).expanduser()
    state = _read_state(path)
    _check_name_digest(path)
    return convert(state, arch, name=str(path), strict=strict)


def _flatten(variables: Mapping) -> dict[str, np.ndarray]:
    """``{"params": {layer: {leaf: array}}, "batch_stats": ...}`` (or the params' inner mapping) -> flat arrays.

    Params are keyed by their path joined with dots (``layer.leaf``, or
    ``block.conv.leaf`` for nested modules); another collection's arrays
    ``collection/layer.leaf``, so a BatchNorm network's running statistics
    travel with its weights.
    """
    collections = variables if isinstance(variables, Mapping) and "params" in variables else {"params": _inner(variables)}
    flat = {}

    def walk(prefix: str, tree: Any, where: str) -> None:
        for key, value in tree.items():
            if isinstance(value, Mapping):
                walk(f"{prefix}{key}.", value, f"{where}[{key!r}]")
            elif prefix:
                flat[f"{prefix}{key}"] = np.ascontiguousarray(np.asarray(value, np.float32))
            else:
                raise InputError(f"params: expected {where}[{key!r}] to map leaf names to arrays, "
                                 f"got {type(value).__name__}")

    for collection, tree in collections.items():
        if not isinstance(tree, Mapping):
            raise InputError(f"params: expected a mapping of layers under {collection!r}, got {type(tree).__name__}")
        walk("" if collection == "params" else f"{collection}/", tree, collection)
    return flat


def _canonical_safetensors(data: bytes) -> bytes:
    """The same safetensors file with its JSON header's keys sorted: the Rust writer emits the metadata in hash
    order, which changes from run to run, and a converted file must have the same bytes (and sha256) each time.
    The header is the format's 8-byte little-endian length, then JSON padded with spaces to 8 bytes; the data
    offsets in it are relative to the end of the header, so they stay valid."""
    import json
    import struct

    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data[8 + n:]


def save(params: Mapping, path: str | os.PathLike, *, arch: str | None = None,
         preprocess: str | None = None) -> Path:
    """Saves params as safetensors (atomically) with a ``.sha256`` sidecar.

    Args:
      params: a flax variables tree (``{"params": {...}}``, with any other
        collections such as a BatchNorm network's ``"batch_stats"``, all of
        which are saved) or the params' inner mapping.
      path: the file to write (its sidecar is ``path + ".sha256"``).
      arch: recorded in the file's metadata (e.g. "vgg19").
      preprocess: the input convention the weights expect (``VGG.preprocess``:
        ``"torchvision"``, ``"caffe"``, ``"none"``), recorded likewise; the CLI's
        ``--weights FILE`` builds the model with both.

    Returns:
      ``path`` as a :class:`~pathlib.Path`.

    Raises:
      InputError: ``path`` does not end in ``.safetensors``.
    """
    from safetensors.numpy import save as save_bytes

    path = Path(path)
    if path.suffix != ".safetensors":  # a .pth name would promise a PyTorch file
        raise InputError(f"path: expected a file name ending in .safetensors (the format written), got {str(path)!r}")
    meta = {"format": "jaxviz", "layout": "flax-nhwc"}
    if arch:
        meta["arch"] = arch
    if preprocess is not None:
        if preprocess not in models.PREPROCESSING:
            raise InputError(f"preprocess: expected one of {', '.join(map(repr, models.PREPROCESSING))}, "
                             f"got {preprocess!r}")
        meta["preprocess"] = preprocess
    data = _canonical_safetensors(save_bytes(_flatten(params), metadata=meta))
    sidecar = path.with_name(path.name + ".sha256")
    # Replacing a file: its old sidecar goes first, so an interrupt between the two writes leaves a whole file
    # without a sidecar (loaded unverified), never a new file beside the old checksum (refused as corrupt)
    sidecar.unlink(missing_ok=True)
    atomic_write_bytes(path, data)
    atomic_write_text(sidecar, f"{hashlib.sha256(data).hexdigest()}  {path.name}\n")
    return path


def file_info(path: str | os.PathLike) -> dict[str, str]:
    """What :func:`save` recorded beside the weights of a ``.safetensors`` file: ``{"arch": "vgg16",
    "preprocess": "caffe", ...}`` (empty for a file written by another program; nothing is verified or loaded).

    Raises:
      WeightsError: the file is not a readable safetensors file.
    """
    path = Path(path)
    try:
        from safetensors import safe_open

        with safe_open(str(path), "numpy") as f:
            meta = f.metadata() or {}
    except (OSError, ValueError, RuntimeError) as e:  # SafetensorError derives from Exception: caught below
        raise WeightsError(f"{path}: not a readable safetensors file ({e})") from None
    except Exception as e:
        if type(e).__name__ != "SafetensorError":
            raise
        raise WeightsError(f"{path}: not a readable safetensors file ({e})") from None
    return {k: v for k, v in meta.items() if k in ("arch", "preprocess", "format", "layout")}


def load_file(path: str | os.PathLike, arch: str | VGG | None = None) -> dict:
    """Loads params written by :func:`save`, verifying the ``.sha256`` sidecar when present.

    Args:
      path: a ``.safetensors`` file written by :func:`save`.
      arch: optional "vgg16"/"vgg19" or a VGG module whose layer shapes the
        file must have.

    Returns:
      The variables tree for ``Module.apply``: ``{"params": {...}}``, plus
      any other collection the file holds (``"batch_stats"``).

    Raises:
      ChecksumError: the file does not match its sidecar.
      ArchitectureError: ``arch`` given and the file's layer shapes differ.
      WeightsError: the file is corrupt or not a jaxviz params file.
    """
    path = Path(path)
    sidecar = path.with_name(path.name + ".sha256")
    if sidecar.exists() and path.exists():
        want = sidecar.read_text().split()[0]
        got = sha256_file(path)
        if got != want:
            raise ChecksumError(
                f"{path}: checksum mismatch: expected sha256 {want}, got {got}; the cached file is "
                "corrupt: delete it and convert again"
            )
    flat = _read_state(path)
    if any(k.startswith(("features.", "layer1.")) for k in flat):  # torchvision's/timm's layout, not jaxviz's
        return from_torchvision(path, arch)
    keys = [re.fullmatch(r"(?:(\w+)/)?(\w+(?:\.\w+)+)", k) for k in flat]
    if not flat or not all(keys) or not any(m.group(1) is None for m in keys):
        raise WeightsError(f"{path}: not a jaxviz params file (keys like 'conv1_1.kernel' expected)")
    variables: dict[str, Any] = {"params": {}}
    for m, value in zip(keys, flat.values()):
        node = variables.setdefault(m.group(1) or "params", {})
        *parents, leaf = m.group(2).split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = jnp.asarray(value)
    params = variables["params"]
    if arch is not None:
        expected = jax.eval_shape(lambda: random(arch))["params"]
        for path_, spec in jax.tree_util.tree_flatten_with_path(expected)[0]:
            names = [getattr(k, "key", str(k)) for k in path_]
            node, missing = params, None
            for depth, part in enumerate(names):
                if not isinstance(node, Mapping) or part not in node:
                    missing = ".".join(names[:depth + 1])  # the first missing module or leaf
                    break
                node = node[part]
            dotted = ".".join(names)
            if missing is not None:
                if names[0].startswith("fc") and isinstance(_net_for(arch), VGG):
                    continue  # a features-only file
                raise ArchitectureError(f"{path}: wrong architecture: no {missing} for {_arch_name(arch)}")
            if node.shape != spec.shape:
                raise ArchitectureError(
                    f"{path}: wrong architecture: {dotted} has shape {node.shape}, "
                    f"expected {spec.shape} for {_arch_name(arch)}"
                )
    return variables


# --------------------------------------------------------------------------- cache + download


def _source(arch: str) -> Source:
    if arch not in SOURCES:
        raise InputError(f"arch: expected one of {', '.join(map(repr, SOURCES))}; got {arch!r}")
    return SOURCES[arch]


def cached(directory: str | os.PathLike | None = None) -> dict[str, dict[str, Path | None]]:
    """What the cache holds: ``arch -> {"converted": path or None, "original": path or None}``."""
    root = Path(directory) if directory else cache_dir()
    out = {}
    for arch, src in SOURCES.items():
        conv, orig = root / src.converted_name, root / src.filename
        out[arch] = {"converted": conv if conv.exists() else None, "original": orig if orig.exists() else None}
    return out


def load(
    arch: str = "vgg19",
    *,
    cache: str | os.PathLike | None = None,
    download: bool = True,
    progress: bool = True,
    classifier: bool = True,
) -> dict:
    """Pretrained ImageNet params for ``arch``: from the cache, else converted from a
    cached torchvision file, else downloaded (when online) and converted.

    Args:
      arch: ``"vgg16"``, ``"vgg19"``, ``"resnet18"`` .. ``"resnet152"``
        (torchvision's ``IMAGENET1K_V1`` files).
      cache: cache directory (default :func:`cache_dir`, ``$JAXVIZ_CACHE``).
      download: allow fetching the torchvision file when nothing is cached.
      progress: show a progress bar while downloading.
      classifier: False drops a VGG's ``fc6``..``fc8`` (for style transfer,
        DeepDream ...); a ResNet's small ``fc`` is always kept.

    Returns:
      A Flax params pytree.

    Raises:
      WeightsNotFoundError: nothing cached and the download is off or failed;
        the message names the file, the URL, where to put it, and
        :func:`random` as the offline fallback.
      ChecksumError, WeightsError: a cached or downloaded file is corrupt.
    """
    src = _source(arch)
    root = Path(cache).expanduser() if cache else cache_dir()
    converted, original = root / src.converted_name, root / src.filename
    if not converted.exists():
        if not original.exists():
            hint = (
                f"no pretrained weights for {arch} in {root}. Download {src.url} "
                f"({src.size_mb:.0f} MB) to {original} (or run `jaxviz convert FILE`), "
                f"or use weights.random({arch!r}) offline"
            )
            if not download:
                raise WeightsNotFoundError(hint)
            from . import download as _download

            try:
                _download.download(src.url, original, sha256=src.sha256_prefix, progress=progress)
            except DownloadError as e:
                raise WeightsNotFoundError(f"{hint} (download failed: {e})") from e
        params = from_torchvision(original, arch)
        save(params, converted, arch=arch)
    params = load_file(converted, arch)
    return params if classifier or _is_resnet(arch) else features_only(params)
