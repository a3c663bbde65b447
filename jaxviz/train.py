"""Training the small CNN on the procedural shapes, with a cache keyed by the configuration.

A short Optax loop: softmax cross-entropy, SGD with momentum (as in the
course notes, seed 000) on a warm-up + cosine learning rate, dropout before
the head. The default :class:`Config` (600 steps of 32 pictures of 32x32)
reaches about 97% held-out accuracy in well under a minute on a 2-core CPU (docs/demo.md).

:func:`small_cnn_run` is what ``jaxviz demo`` and the tests use: it trains
the model described by a :class:`Config` on :func:`jaxviz.datasets.shapes`
and caches the parameters (``weights.save``, safetensors + sha256 sidecar)
in the weight cache under a name derived from the configuration, so a
second call with the same configuration loads instead of training.

Example:
    >>> from jaxviz import train
    >>> run = train.small_cnn_run(progress=False)     # trained the first time, then loaded from the cache
    >>> run.accuracy > 0.9
    True
    >>> logits = run.net.apply(run.params, run.test.images[:8])
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import _checks, datasets, weights
from .errors import InputError, WeightsError
from .models.small_cnn import SmallCNN, fold_batch_norm, small_cnn

__all__ = ["Config", "Run", "fit", "predict", "accuracy", "small_cnn_run", "cache_path"]

# Bump when the dataset, the model or the loop change in a way that changes the result.
_VERSION = 4


@dataclass(frozen=True)
class Config:
    """Everything that determines a trained small CNN (and its cache key).

    Attributes:
      size: picture side in pixels.
      num_train, num_test: training and held-out set sizes (different seeds).
      widths, dropout: the :func:`~jaxviz.models.small_cnn.small_cnn` architecture.
      batch_norm: train with BatchNorm after every convolution, folded into
        the convolutions afterwards (:func:`~jaxviz.models.small_cnn.fold_batch_norm`),
        so the trained model is a plain conv/ReLU/pool network either way.
        Without it the loss sits on a plateau for a seed-dependent number of
        steps (held-out accuracy 28% to 90% after 400 steps over three seeds;
        with it, 85% to 89%, and about 97% after 600).
      epochs, batch_size: passes over the training set, mini-batch size.
      learning_rate: peak learning rate (10% linear warm-up, then cosine decay to 0).
      momentum: SGD (Nesterov) momentum.
      seed: seeds the data, the initialisation, the shuffling and dropout.
    """

    size: int = 32
    num_train: int = 9600
    num_test: int = 512
    widths: tuple[int, ...] = (16, 32, 64)
    dropout: float = 0.25
    epochs: int = 2
    batch_size: int = 32
    learning_rate: float = 0.2
    momentum: float = 0.9
    batch_norm: bool = True
    seed: int = 0

    def key(self) -> str:
        """A short hash of the configuration (and the training code's version)."""
        blob = json.dumps({"version": _VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Run:
    """A trained small CNN.

    Attributes:
      net: the :class:`~jaxviz.models.small_cnn.SmallCNN`.
      params: its parameters.
      config: the :class:`Config` it was trained with.
      test: the held-out :class:`~jaxviz.datasets.Shapes` (with masks).
      accuracy: accuracy on ``test``, in [0, 1].
      history: mean training loss per epoch.
      path: the cached parameter file (None if caching was off).
      cached: True when the parameters were loaded rather than trained.
      seconds: how long training took (when it was trained, for a cached run).
    """

    net: SmallCNN
    params: Any
    config: Config
    test: datasets.Shapes
    accuracy: float
    history: tuple[float, ...]
    path: Path | None
    cached: bool
    seconds: float


def _check_data(images: Any, labels: Any, num_classes: int | None = None) -> tuple[jax.Array, jax.Array]:
    _checks.images(images, "images")
    labels = np.asarray(labels)
    if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(
            f"labels: expected {images.shape[0]} integer class indices of shape ({images.shape[0]},), "
            f"got shape {labels.shape} and dtype {labels.dtype}"
        )
    if num_classes is not None and labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise InputError(f"labels: expected class indices in [0, {num_classes}) for this network, got values in "
                         f"[{labels.min()}, {labels.max()}]")
    return jnp.asarray(images, jnp.float32), jnp.asarray(labels, jnp.int32)


def fit(
    net: SmallCNN,
    images: Any,
    labels: Any,
    *,
    epochs: int = 2,
    batch_size: int = 32,
    learning_rate: float = 0.2,
    momentum: float = 0.9,
    warmup: float = 0.1,
    seed: int = 0,
    params: Any = None,
    progress: bool = True,
) -> tuple[Any, list[float]]:
    """Trains a classifier with SGD with (Nesterov) momentum on softmax cross-entropy.

    Each epoch shuffles the training set and takes ``len(images) //
    batch_size`` steps (the remainder of the shuffled set sits that epoch
    out). The learning rate warms up linearly over the first ``warmup``
    fraction of the steps, then follows a cosine decay to 0. Dropout is on
    (``train=True``) with rngs split from ``seed``.

    The step is jitted and the loop over steps is a Python loop: on XLA:CPU a
    convolution inside ``lax.scan``'s while loop ran about 7x slower than the
    same step called from Python (measured on this model), and the step is
    long enough (tens of ms) that the dispatch costs nothing.

    Args:
      net: a module with the jaxviz model protocol that accepts ``train=True``
        (e.g. :func:`~jaxviz.models.small_cnn.small_cnn`).
      images: (N, H, W, 3) float RGB in [0, 1].
      labels: (N,) integer class indices.
      epochs, batch_size: passes over the data and mini-batch size
        (``batch_size <= N``).
      learning_rate, momentum: SGD hyper-parameters (peak learning rate).
      warmup: fraction of the steps spent warming up, in [0, 1).
      seed: seeds the initialisation (unless ``params`` is given), the
        shuffling and dropout.
      params: start from these variables instead of a fresh initialisation.
      progress: show a progress bar over the steps.

    Returns:
      ``(variables, losses)``: the trained variables (``{"params": ...}``,
      plus ``"batch_stats"`` for a network with BatchNorm, updated by the
      training-mode forward passes) and the mean training loss of every epoch.

    Raises:
      InputError: bad shapes, non-positive ``epochs``/``batch_size``,
        ``batch_size`` larger than the data, or ``warmup`` outside [0, 1).

    Example:
      >>> data = datasets.shapes(512, size=32)
      >>> net = small_cnn(num_classes=4)
      >>> params, losses = fit(net, data.images, data.labels, epochs=2, progress=False)
      >>> len(losses), bool(losses[1] < losses[0])       # one mean loss per epoch, falling
      (2, True)
    """
    images, labels = _check_data(images, labels, getattr(net, "num_classes", None))
    epochs = _checks.positive_int(epochs, "epochs")
    batch_size = _checks.positive_int(batch_size, "batch_size")
    if not 0 <= warmup < 1:
        raise InputError(f"warmup: expected a fraction in [0, 1), got {warmup!r}")
    n = images.shape[0]
    if batch_size > n:
        raise InputError(f"batch_size: expected at most the number of images ({n}), got {batch_size}")
    steps = n // batch_size
    total = epochs * steps
    key = jax.random.key(seed)
    init_key, key = jax.random.split(key)
    if params is None:
        params = net.init(init_key, images[:1])
    schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, int(warmup * total), total)
    tx = optax.sgd(schedule, momentum=momentum, nesterov=True)
    variables = dict(params)
    weights_ = variables.pop("params")  # trained by SGD; the rest (batch_stats) by the forward pass
    opt_state = tx.init(weights_)
    mutable = list(variables)

    def loss_fn(w, other, x, y, rng):
        logits, updated = net.apply(
            {"params": w, **other}, x, train=True, rngs={"dropout": rng}, mutable=mutable
        )
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), dict(updated)

    @jax.jit
    def step(w, other, state, xs, ys, idx, rng):
        (loss, other), grads = jax.value_and_grad(loss_fn, has_aux=True)(w, other, xs[idx], ys[idx], rng)
        updates, state = tx.update(grads, state, w)
        return optax.apply_updates(w, updates), other, state, loss

    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    history: list[float] = []
    with tqdm(total=total, desc="training", unit="step", disable=not progress, leave=False) as bar:
        for _ in range(epochs):
            order = rng.permutation(n)[: steps * batch_size].reshape(steps, batch_size).astype(np.int32)
            keys = jax.random.split(jax.random.fold_in(key, len(history)), steps)
            losses = []
            for i in range(steps):
                weights_, variables, opt_state, loss = step(
                    weights_, variables, opt_state, images, labels, order[i], keys[i]
                )
                losses.append(loss)
                bar.update(1)
            history.append(float(jnp.mean(jnp.stack(losses))))
            bar.set_postfix(loss=f"{history[-1]:.3f}")
    return {"params": weights_, **variables}, history


def predict(net: Any, params: Any, images: Any, *, batch_size: int = 256) -> np.ndarray:
    """Logits of ``images`` in batches of ``batch_size``: (N, num_classes) NumPy float32."""
    _checks.images(images, "images")
    batch_size = _checks.positive_int(batch_size, "batch_size")
    forward = jax.jit(lambda p, x: net.apply(p, x))
    out = [np.asarray(forward(params, jnp.asarray(images[i : i + batch_size]))) for i in range(0, len(images), batch_size)]
    return np.concatenate(out)


def accuracy(net: Any, params: Any, images: Any, labels: Any, *, batch_size: int = 256) -> float:
    """Fraction of ``images`` whose top-1 class equals ``labels``."""
    _, labels = _check_data(images, labels, getattr(net, "num_classes", None))
    return float(np.mean(predict(net, params, images, batch_size=batch_size).argmax(-1) == np.asarray(labels)))


def params_fit(net, params, size: int) -> bool:
    """Whether ``params`` has exactly the parameter shapes ``net`` builds for (1, size, size, 3) images."""
    expected = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))
    return jax.tree.map(lambda a: a.shape, expected) == jax.tree.map(lambda a: a.shape, params)


def cache_path(config: Config, cache: str | os.PathLike | None = None) -> Path:
    """Where :func:`small_cnn_run` keeps the parameters trained with ``config``."""
    root = Path(cache).expanduser() if cache else weights.cache_dir()
    return root / "small_cnn" / f"shapes-{config.key()}.safetensors"


def _write_json(path: Path, data: dict) -> None:
    from ._io import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2))


def small_cnn_run(
    config: Config = Config(),
    *,
    cache: str | os.PathLike | None = None,
    use_cache: bool = True,
    retrain: bool = False,
    progress: bool = True,
) -> Run:
    """The small CNN trained on the procedural shapes, from the cache or trained now.

    The training set is ``datasets.shapes(config.num_train, seed=config.seed)``,
    the held-out set uses seed ``config.seed + 1`` (different pictures). With
    ``use_cache`` the parameters are saved to :func:`cache_path` (safetensors
    with a sha256 sidecar, written atomically) next to a JSON file with the
    configuration, accuracy and loss history; a later call with the same
    configuration loads them.

    Args:
      config: the :class:`Config`.
      cache: cache root (default :func:`jaxviz.weights.cache_dir`).
      use_cache: read and write the cache; False always trains and writes nothing.
      retrain: train even if a cached run exists (and overwrite it).
      progress: show the training progress bar.

    Returns:
      A :class:`Run`.

    Warns:
      RuntimeWarning: the cache cannot be written; the model trained now is
        returned with ``path=None``.

    Raises:
      InputError: an invalid configuration.
      ChecksumError, WeightsError: the cached file is corrupt (delete it or
        pass ``retrain=True``).
    """
    if not isinstance(config, Config):
        raise InputError(f"config: expected a jaxviz.train.Config, got {type(config).__name__}")
    net = small_cnn(num_classes=len(datasets.CLASSES), widths=config.widths, dropout=config.dropout)
    test = datasets.shapes(config.num_test, size=config.size, seed=config.seed + 1)
    path = cache_path(config, cache) if use_cache else None
    meta_path = path.with_suffix(".json") if path else None
    if path is not None and path.exists() and meta_path.exists() and not retrain:
        params = weights.load_file(path)
        if not params_fit(net, params, config.size):
            raise WeightsError(f"{path}: cached parameters do not fit the configured model; delete the file")
        meta = json.loads(meta_path.read_text())
        return Run(net, params, config, test, float(meta["accuracy"]), tuple(meta["history"]), path, True,
                   float(meta.get("seconds", float("nan"))))

    start = time.perf_counter()
    train = datasets.shapes(config.num_train, size=config.size, seed=config.seed)
    variables, history = fit(
        net.clone(batch_norm=config.batch_norm),
        train.images,
        train.labels,
        epochs=config.epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        momentum=config.momentum,
        seed=config.seed,
        progress=progress,
    )
    if config.batch_norm:
        _, params = fold_batch_norm(net.clone(batch_norm=True), variables)
    else:
        params = variables
    seconds = time.perf_counter() - start
    acc = accuracy(net, params, test.images, test.labels)
    if path is not None:
        try:
            weights.save(params, path, arch="small_cnn")
            _write_json(meta_path, {"config": dataclasses.asdict(config), "accuracy": acc, "history": history,
                                    "seconds": seconds})
        except OSError as e:  # a read-only cache: the trained model is still returned, just not kept
            warnings.warn(f"could not cache the trained small CNN at {path} ({e.strerror or e}); "
                          f"set JAXVIZ_CACHE to a writable folder to keep it", RuntimeWarning, stacklevel=2)
            path = None
    return Run(net, params, config, test, acc, tuple(history), path, False, seconds)
