"""The last layers as a feature space: feature vectors, nearest neighbours, PCA and t-SNE maps.

A trained classifier's penultimate layer (``relu7`` in VGG: the 4096-d
vector the class scores are read from) places images by content. This
module turns a folder into such vectors (any tap; convolutional taps are
pooled over positions), finds each image's nearest neighbours in that space
(L2, L1 or cosine), and maps the space to 2-D with PCA (in JAX) or t-SNE
(scikit-learn's implementation), drawn as a scatter plot of thumbnails.

Example::

    from jaxviz import models, weights, image, embed
    net, params = models.vgg19(), weights.load("vgg19")
    feats = embed.features(net, params, image.load_folder("photos", size=224), layer="relu7",
                           thumbnail_size=48)
    idx, dist = embed.nearest_neighbours(feats.vectors, k=5, metric="cosine")
    image.save(embed.neighbour_grid(feats.thumbnails, idx[:8]), "neighbours.png")
    xy = embed.pca(feats.vectors).points                  # or embed.tsne(feats.vectors)
    image.save(embed.scatter_thumbnails(xy, feats.thumbnails), "pca.png")

References: A. Krizhevsky, I. Sutskever, G. Hinton, "ImageNet Classification
with Deep Convolutional Neural Networks", NeurIPS 2012 (nearest neighbours in
the last hidden layer); L. van der Maaten, G. Hinton, "Visualizing Data using
t-SNE", JMLR 2008.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Iterable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from tqdm.auto import tqdm

from .. import _checks
from ..errors import InputError, JaxvizError
from ..models import protocol
from ..viz.features import neighbour_grid, scatter_thumbnails  # noqa: F401  (drawn in jaxviz.viz; re-exported here)

__all__ = [
    "Features",
    "features",
    "pairwise_distances",
    "nearest_neighbours",
    "PCAResult",
    "pca",
    "tsne",
    "MissingDependencyError",
    "thumbnails",
    "neighbour_grid",
    "scatter_thumbnails",
]

METRICS = ("l2", "l1", "cosine")
POOLS = ("mean", "max", "flatten")


class MissingDependencyError(JaxvizError, ImportError):
    """An optional dependency (an extra) is not installed."""


# =========================================================================== feature vectors


class Features(NamedTuple):
    """Feature vectors of a collection.

    Attributes:
      names: the names given with each batch (file paths for a folder).
      vectors: (N, D) float32 NumPy array.
      thumbnails: (N, t, t, 3) float32 thumbnails, or None.
    """

    names: list
    vectors: np.ndarray
    thumbnails: np.ndarray | None


@functools.partial(jax.jit, static_argnames=("net", "layer", "pool", "thumb"))
def _extract(net, params, x, *, layer, pool, thumb):
    a = protocol.taps(net, params, x, layer)[layer].astype(jnp.float32)
    if a.ndim == 4:
        if pool == "mean":
            a = a.mean(axis=(1, 2))
        elif pool == "max":
            a = a.max(axis=(1, 2))
        else:
            a = a.reshape(a.shape[0], -1)
    small = None
    if thumb:
        small = jax.image.resize(x, (x.shape[0], thumb, thumb, 3), "linear", antialias=True)
    return a, small


def thumbnails(images, size: int = 48) -> np.ndarray:
    """Square thumbnails (N, size, size, 3) of images (N, H, W, 3) (bilinear, antialiased; no crop)."""
    x = _checks.images(images, "images")
    size = _checks.positive_int(size, "size")
    return np.asarray(jax.image.resize(jnp.asarray(x, jnp.float32), (x.shape[0], size, size, 3), "linear",
                                       antialias=True))


def features(
    net: Any,
    params,
    batches: Iterable[tuple[Sequence[Any], Any]] | str | os.PathLike,
    *,
    layer: str | None = None,
    pool: str = "mean",
    thumbnail_size: int | None = None,
    size: int = 224,
    batch_size: int = 16,
    progress: bool = False,
) -> Features:
    """Feature vectors of every image of a collection at one tap.

    Args:
      net, params: the model (the network stops at ``layer``).
      batches: an iterable of ``(names, images)``, images (B, H, W, 3) in
        [0, 1] (e.g. :func:`jaxviz.image.load_folder`), an (N, H, W, 3)
        array (names are the indices), or a folder path
        (centre crops of ``size`` in batches of ``batch_size``).
      layer: the tap; default :func:`jaxviz.models.protocol.embedding_layer`:
        the tap before the class scores (VGG's ``relu7``, a ResNet's
        ``avgpool``), or the last tap of a features-only network.
      pool: for convolutional taps: ``"mean"`` or ``"max"`` over positions
        (a C-vector), or ``"flatten"`` (h * w * C). Classifier taps are
        vectors already.
      thumbnail_size: also keep square thumbnails of this size (for plots).
      size, batch_size: for a folder path.
      progress: show a tqdm bar.

    Returns:
      :class:`Features` (names, (N, D) vectors, thumbnails or None). Batches
      smaller than the first are padded, so the extractor compiles once.

    Raises:
      InputError: unknown layer or pool, badly shaped batches, no images.
    """
    net = protocol.as_model(net)
    if layer is None:
        layer = protocol.embedding_layer(net, params, (1, size, size, 3))
    name = net.resolve(layer, "layer")
    _checks.one_of(pool, "pool", POOLS)
    thumb = None if thumbnail_size is None else _checks.positive_int(thumbnail_size, "thumbnail_size")
    from .. import image

    stream, total = image._batch_source(batches, size, batch_size)
    names: list = []
    vecs, thumbs = [], []
    width = None
    with tqdm(total=total, desc=f"features {name}", unit="img", disable=not progress, leave=False) as bar:
        for batch_names, imgs in stream:
            x = np.asarray(imgs, np.float32)
            _checks.images(x, "images", min_size=protocol.min_size(net), unit_range=protocol.unit_range(net))
            batch_names = list(batch_names)
            if len(batch_names) != x.shape[0]:
                raise InputError(f"batches: got {len(batch_names)} names for {x.shape[0]} images")
            n = x.shape[0]
            width = width or n
            if n < width:
                x = np.concatenate([x, np.zeros((width - n,) + x.shape[1:], np.float32)])
            v, t = _extract(net, params, jnp.asarray(x), layer=name, pool=pool, thumb=thumb)
            vecs.append(np.asarray(v)[:n])
            if thumb:
                thumbs.append(np.asarray(t)[:n])
            names.extend(batch_names)
            bar.update(n)
    if not names:
        raise InputError("batches: expected at least one image, got none")
    return Features(names, np.concatenate(vecs), np.concatenate(thumbs) if thumb else None)


# =========================================================================== distances and neighbours


def _check_matrix(x, name) -> jax.Array:
    a = jnp.asarray(x)
    if a.ndim != 2 or a.shape[0] == 0 or not jnp.issubdtype(a.dtype, jnp.floating):
        raise InputError(f"{name}: expected a float array of shape (N, D), got {getattr(x, 'dtype', type(x))} {np.shape(x)}")
    if not isinstance(a, jax.core.Tracer):
        bad = np.flatnonzero(~np.isfinite(np.asarray(a)).all(axis=1))
        if bad.size:
            raise InputError(f"{name}: expected finite values, got NaN or infinite entries in {bad.size} of "
                             f"{a.shape[0]} rows (first: row {bad[0]})")
    return a.astype(jnp.float32)


def _distances(a, b, metric):
    hi = lax.Precision.HIGHEST
    if metric == "l2":
        # |a - b|² = |a|² + |b|² - 2 a.b on data centred on b's mean (smaller norms, less cancellation)
        centre = jnp.mean(b, axis=0)
        a, b = a - centre, b - centre
        d2 = (jnp.sum(a * a, 1)[:, None] + jnp.sum(b * b, 1)[None, :] - 2 * jnp.matmul(a, b.T, precision=hi))
        return jnp.sqrt(jnp.maximum(d2, 0.0))
    if metric == "cosine":
        an = a / jnp.maximum(jnp.linalg.norm(a, axis=1, keepdims=True), 1e-12)
        bn = b / jnp.maximum(jnp.linalg.norm(b, axis=1, keepdims=True), 1e-12)
        return 1.0 - jnp.matmul(an, bn.T, precision=hi)
    return jax.vmap(lambda row: jnp.sum(jnp.abs(row[None, :] - b), axis=1))(a)  # l1


@functools.partial(jax.jit, static_argnames=("metric", "batch_size"))
def _pairwise(a, b, *, metric, batch_size):
    blocks = -(-a.shape[0] // batch_size)
    pad = blocks * batch_size - a.shape[0]
    ap = jnp.pad(a, ((0, pad), (0, 0))).reshape(blocks, batch_size, a.shape[1])
    out = lax.map(lambda blk: _distances(blk, b, metric), ap)
    return out.reshape(-1, b.shape[0])[: a.shape[0]]


def pairwise_distances(a, b=None, *, metric: str = "l2", batch_size: int = 256) -> jax.Array:
    """Distances between the rows of ``a`` (Na, D) and ``b`` (Nb, D) (default ``a``).

    Args:
      metric: ``"l2"`` (Euclidean, by the ``|a|² + |b|² - 2a.b`` expansion on
        centred data: for nearly coincident rows the absolute error is about
        1e-3 of the rows' spread; :func:`nearest_neighbours` re-ranks by the
        exact distance), ``"l1"`` (Manhattan) or ``"cosine"`` (1 - cosine
        similarity).
      batch_size: rows of ``a`` per block (``lax.map``); L1 holds
        ``batch_size * Nb * D`` floats at a time. Results do not depend on it.

    Returns:
      (Na, Nb) float32.
    """
    a = _check_matrix(a, "a")
    b = a if b is None else _check_matrix(b, "b")
    if a.shape[1] != b.shape[1]:
        raise InputError(f"b: expected {a.shape[1]} features per row like a, got {b.shape[1]}")
    _checks.one_of(metric, "metric", METRICS)
    return _pairwise(a, b, metric=metric, batch_size=min(_checks.positive_int(batch_size, "batch_size"), a.shape[0]))


@functools.partial(jax.jit, static_argnames=("k", "metric", "batch_size", "exclude_self"))
def _knn(q, x, *, k, metric, batch_size, exclude_self):
    blocks = -(-q.shape[0] // batch_size)
    pad = blocks * batch_size - q.shape[0]
    qp = jnp.pad(q, ((0, pad), (0, 0))).reshape(blocks, batch_size, q.shape[1])
    starts = jnp.arange(blocks) * batch_size

    n = x.shape[0]
    extra = min(n, k + 16) if metric == "l2" else k

    def block(args):
        rows, start = args
        d = _distances(rows, x, metric)
        if exclude_self:
            own = start + jnp.arange(batch_size)
            d = jnp.where(own[:, None] == jnp.arange(n)[None, :], jnp.inf, d)
        neg, idx = lax.top_k(-d, extra)
        if metric == "l2":
            # re-rank the candidates by the exact distance (no cancellation), lower index first on ties
            exact = jnp.sqrt(jnp.sum((rows[:, None, :] - x[idx]) ** 2, axis=-1))
            exact = jnp.where(jnp.isinf(neg), jnp.inf, exact)
            order = jnp.lexsort((idx, exact), axis=-1)[:, :k]
            return jnp.take_along_axis(idx, order, 1), jnp.take_along_axis(exact, order, 1)
        return idx, -neg

    idx, dist = lax.map(block, (qp, starts))
    return idx.reshape(-1, k)[: q.shape[0]], dist.reshape(-1, k)[: q.shape[0]]


def nearest_neighbours(
    vectors,
    queries=None,
    *,
    k: int = 5,
    metric: str = "l2",
    batch_size: int = 256,
) -> tuple[jax.Array, jax.Array]:
    """The ``k`` nearest rows of ``vectors`` for each query.

    Args:
      vectors: (N, D) feature vectors.
      queries: (Q, D) query vectors; None queries every row of ``vectors``
        against the others (a row is never its own neighbour).
      k: neighbours per query.
      metric: ``"l2"``, ``"l1"`` or ``"cosine"``.
      batch_size: queries per block; results do not depend on it.

    Returns:
      (indices (Q, k) int32, distances (Q, k) float32), nearest first; ties go
      to the lower index.

    Raises:
      InputError: bad shapes, metric, or k larger than the candidates.
    """
    x = _check_matrix(vectors, "vectors")
    self_query = queries is None
    q = x if self_query else _check_matrix(queries, "queries")
    if q.shape[1] != x.shape[1]:
        raise InputError(f"queries: expected {x.shape[1]} features per row like vectors, got {q.shape[1]}")
    _checks.one_of(metric, "metric", METRICS)
    k = _checks.positive_int(k, "k")
    available = x.shape[0] - (1 if self_query else 0)
    if k > available:
        raise InputError(f"k: expected at most {available} (the candidates), got {k}")
    bs = min(_checks.positive_int(batch_size, "batch_size"), q.shape[0])
    return _knn(q, x, k=k, metric=metric, batch_size=bs, exclude_self=self_query)


# =========================================================================== PCA, t-SNE


class PCAResult(NamedTuple):
    """Principal components of a set of vectors.

    Attributes:
      points: (N, n_components) coordinates of each vector.
      components: (n_components, D) unit principal axes, largest variance
        first; each axis's largest-magnitude entry is positive (a fixed sign).
      mean: (D,) the mean that was subtracted.
      explained_variance: (n_components,) variance along each axis (N - 1
        denominator).
      explained_variance_ratio: (n_components,) fraction of the total variance.
    """

    points: jax.Array
    components: jax.Array
    mean: jax.Array
    explained_variance: jax.Array
    explained_variance_ratio: jax.Array


@functools.partial(jax.jit, static_argnames=("n_components",))
def _pca(x, *, n_components):
    mean = x.mean(axis=0)
    xc = x - mean
    _, s, vt = jnp.linalg.svd(xc, full_matrices=False)
    vt = vt[:n_components]
    sign = jnp.sign(jnp.take_along_axis(vt, jnp.argmax(jnp.abs(vt), axis=1)[:, None], axis=1))
    vt = vt * jnp.where(sign == 0, 1.0, sign)
    var = s**2 / max(x.shape[0] - 1, 1)
    total = jnp.sum(var)
    ev = var[:n_components]
    return PCAResult(jnp.matmul(xc, vt.T, precision=lax.Precision.HIGHEST), vt, mean, ev,
                     ev / jnp.where(total > 0, total, 1.0))


def pca(vectors, n_components: int = 2) -> PCAResult:
    """Principal component analysis by SVD of the centred data (in JAX).

    Args:
      vectors: (N, D) float array.
      n_components: number of axes, at most min(N, D).

    Returns:
      :class:`PCAResult`; ``points`` is the 2-D map for ``n_components=2``.

    Example::

        xy = pca(np.random.rand(100, 64)).points      # (100, 2)
    """
    x = _check_matrix(vectors, "vectors")
    n = _checks.positive_int(n_components, "n_components")
    if n > min(x.shape):
        raise InputError(f"n_components: expected at most min(N, D) = {min(x.shape)}, got {n}")
    return _pca(x, n_components=n)


def tsne(
    vectors,
    n_components: int = 2,
    *,
    perplexity: float = 30.0,
    seed: int = 0,
    pca_dims: int | None = 50,
    **kwargs: Any,
) -> np.ndarray:
    """t-SNE map of vectors by scikit-learn's ``TSNE`` (install ``jaxviz[embed]``).

    The vectors are first reduced to ``pca_dims`` dimensions with :func:`pca`
    (the usual practice for high-dimensional features; None skips it), then
    embedded with ``sklearn.manifold.TSNE(init="pca", learning_rate="auto")``,
    with the exact gradient up to 1000 vectors (faster and more accurate
    there) and Barnes-Hut above.

    Args:
      vectors: (N, D) float array, N >= 4.
      n_components: output dimensions.
      perplexity: effective number of neighbours; lowered to (N - 1) / 3 for
        small sets (t-SNE needs perplexity < N).
      seed: ``random_state``.
      pca_dims: dimensions kept by the PCA step.
      **kwargs: passed to ``TSNE``.

    Returns:
      (N, n_components) float32 NumPy array.

    Raises:
      InputError: fewer than 4 vectors, a perplexity <= 0, or a non-positive
        ``n_components``/``pca_dims``.
      MissingDependencyError: scikit-learn is not installed.
    """
    try:
        from sklearn.manifold import TSNE
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise MissingDependencyError("tsne: needs scikit-learn: pip install 'jaxviz[embed]'") from e
    x = _check_matrix(vectors, "vectors")
    if x.shape[0] < 4:
        raise InputError(f"vectors: t-SNE needs at least 4 vectors, got {x.shape[0]}")
    n_components = _checks.positive_int(n_components, "n_components")
    _checks.positive_number(perplexity, "perplexity")
    if pca_dims is not None:
        pca_dims = _checks.positive_int(pca_dims, "pca_dims")
    if pca_dims is not None and x.shape[1] > pca_dims:
        x = pca(x, min(pca_dims, x.shape[0])).points
    perplexity = float(min(perplexity, (x.shape[0] - 1) / 3.0))
    kwargs.setdefault("method", "exact" if x.shape[0] <= 1000 else "barnes_hut")
    model = TSNE(n_components=n_components, perplexity=perplexity, init="pca", learning_rate="auto",
                 random_state=seed, **kwargs)
    return model.fit_transform(np.asarray(x, np.float64)).astype(np.float32)


# =========================================================================== pictures

