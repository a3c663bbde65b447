"""Feature vectors, nearest neighbours and PCA against NumPy references; t-SNE; the pictures."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz import embed, models, weights, viz
from jaxviz.errors import InputError

NET = models.VGG(stages=((8,), (16,)), fc_features=32, num_classes=10, pool_output=(2, 2))


def _uniform(seed, *shape):
    """Test data from NumPy (a jax.random draw of a new shape costs a compilation)."""
    return np.random.default_rng(seed).uniform(size=shape).astype(np.float32)


def _normal(seed, *shape):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)



def _batches(imgs, size):
    for s in range(0, len(imgs), size):
        yield [f"im{i}" for i in range(s, min(s + size, len(imgs)))], imgs[s:s + size]


def test_features_pool_a_tap_and_compile_once():
    params = weights.random(NET, seed=0)
    imgs = np.asarray(_uniform(0, 5, 32, 32, 3))
    f = embed.features(NET, params, _batches(imgs, 2), layer="relu2_1", pool="mean", thumbnail_size=8)
    size = embed._extract._cache_size()
    acts = {k: np.asarray(v) for k, v in NET.apply(params, jnp.asarray(imgs), taps=("relu2_1", "relu7")).items()}
    assert f.names == [f"im{i}" for i in range(5)]
    np.testing.assert_allclose(f.vectors, acts["relu2_1"].mean((1, 2)), rtol=1e-5, atol=1e-6)
    assert f.thumbnails.shape == (5, 8, 8, 3)
    np.testing.assert_allclose(f.thumbnails.mean((1, 2)), imgs.mean((1, 2)), atol=5e-3)  # a smoothed copy
    g = embed.features(NET, params, _batches(imgs, 2), layer="relu2_1", pool="mean", thumbnail_size=8)
    assert embed._extract._cache_size() == size  # second pass, short last batch: no new program
    np.testing.assert_array_equal(g.vectors, f.vectors)
    m = embed.features(NET, params, _batches(imgs, 5), layer="relu2_1", pool="max")
    np.testing.assert_allclose(m.vectors, acts["relu2_1"].max((1, 2)), rtol=1e-5, atol=1e-6)
    flat = embed.features(NET, params, _batches(imgs, 5), layer="relu2_1", pool="flatten")
    np.testing.assert_allclose(flat.vectors, acts["relu2_1"].reshape(5, -1), rtol=1e-5, atol=1e-6)  # h * w * C, NHWC order
    d = embed.features(NET, params, _batches(imgs, 5))  # default: relu7
    np.testing.assert_allclose(d.vectors, acts["relu7"], rtol=1e-4, atol=1e-6)
    assert d.thumbnails is None


def _reference_distances(a, b, metric):
    if metric == "l2":
        return np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1))
    if metric == "l1":
        return np.abs(a[:, None] - b[None]).sum(-1)
    an = a / np.linalg.norm(a, axis=1, keepdims=True)
    bn = b / np.linalg.norm(b, axis=1, keepdims=True)
    return 1 - an @ bn.T


@pytest.mark.parametrize("metric", ["l2", "l1", "cosine"])
def test_distances_and_neighbours_match_numpy(metric):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(37, 12)).astype(np.float32)
    q = rng.normal(size=(9, 12)).astype(np.float32)
    ref = _reference_distances(x.astype(np.float64), x.astype(np.float64), metric)
    for bs in (5, 256):
        got = embed.pairwise_distances(x, metric=metric, batch_size=bs)
        np.testing.assert_allclose(got, ref, atol=3e-3 if metric == "l2" else 2e-5, rtol=1e-5)
    # every vector against the others
    idx, dist = embed.nearest_neighbours(x, k=4, metric=metric, batch_size=8)
    masked = ref + np.diag(np.full(37, np.inf))
    want = np.argsort(masked, axis=1, kind="stable")[:, :4]
    np.testing.assert_array_equal(idx, want)
    np.testing.assert_allclose(dist, np.take_along_axis(masked, want, 1), atol=2e-5, rtol=1e-5)
    # explicit queries (no self-exclusion)
    refq = _reference_distances(q.astype(np.float64), x.astype(np.float64), metric)
    idx, dist = embed.nearest_neighbours(x, q, k=3, metric=metric)
    wantq = np.argsort(refq, axis=1, kind="stable")[:, :3]
    np.testing.assert_array_equal(idx, wantq)
    np.testing.assert_allclose(dist, np.take_along_axis(refq, wantq, 1), atol=3e-3 if metric == "l2" else 2e-5,
                               rtol=1e-5)


def test_neighbours_ties_go_to_the_lower_index_and_self_is_excluded():
    x = np.array([[0.0, 0], [1, 0], [-1, 0], [0, 1], [5, 5]], np.float32)
    idx, dist = embed.nearest_neighbours(x, k=3)
    np.testing.assert_array_equal(idx[0], [1, 2, 3])  # three at distance 1: lower index first
    np.testing.assert_allclose(dist[0], [1, 1, 1])
    assert 4 not in np.asarray(idx[:4, :1])


def test_pca_matches_the_numpy_eigendecomposition():
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(50, 6)) @ rng.normal(size=(6, 6)) + 3.0).astype(np.float32)
    res = embed.pca(x, 3)
    xd = x.astype(np.float64)
    cov = np.cov(xd, rowvar=False)
    w, v = np.linalg.eigh(cov)
    order = np.argsort(-w)[:3]
    comps = v[:, order].T
    comps *= np.sign(comps[np.arange(3), np.abs(comps).argmax(1)])[:, None]
    np.testing.assert_allclose(res.components, comps, atol=1e-4)
    np.testing.assert_allclose(res.explained_variance, w[order], rtol=1e-4)
    np.testing.assert_allclose(res.explained_variance_ratio, w[order] / w.sum(), rtol=1e-4)
    np.testing.assert_allclose(res.mean, xd.mean(0), rtol=1e-5)
    np.testing.assert_allclose(res.points, (xd - xd.mean(0)) @ comps.T, atol=1e-3)
    sk = pytest.importorskip("sklearn.decomposition")
    ref = sk.PCA(3).fit(xd)
    np.testing.assert_allclose(np.abs(np.asarray(res.components) @ ref.components_.T), np.eye(3), atol=1e-4)


def test_tsne_keeps_separated_clusters_apart():
    pytest.importorskip("sklearn")
    rng = np.random.default_rng(2)
    from sklearn.manifold import TSNE

    centres = rng.normal(size=(3, 64)) * 10
    centres[:, :2] = 0  # the clusters differ only past the first two coordinates
    x = np.concatenate([c + rng.normal(size=(12, 64)) for c in centres]).astype(np.float32)
    labels = np.repeat(np.arange(3), 12)
    y = embed.tsne(x, perplexity=8, seed=0, max_iter=500)  # past the 250 steps of early exaggeration
    assert y.shape == (36, 2)
    idx, _ = embed.nearest_neighbours(y, k=3)
    assert (labels[np.asarray(idx)] == labels[:, None]).mean() > 0.95
    idx, _ = embed.nearest_neighbours(x[:, :2], k=3)
    assert (labels[np.asarray(idx)] == labels[:, None]).mean() < 0.7  # which the raw coordinates do not show
    # the documented recipe: PCA to min(50, N) dimensions, then scikit-learn's exact t-SNE with PCA init
    reduced = embed.pca(x, 36).points
    want = TSNE(n_components=2, perplexity=8, init="pca", learning_rate="auto", random_state=0, method="exact",
                max_iter=500).fit_transform(np.asarray(reduced, np.float64))
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_pictures():
    rng = np.random.default_rng(3)
    thumbs = rng.uniform(size=(6, 16, 16, 3)).astype(np.float32)
    grid = embed.neighbour_grid(thumbs, np.array([[1, 2], [0, 5]]), queries=[3, 4], pad=2)
    assert grid.shape == (2 * 16 + 3 * 2, 3 * 16 + 4 * 2, 3)
    np.testing.assert_array_equal(grid[2:18, 20:36], thumbs[1])  # first neighbour of the first query
    np.testing.assert_allclose(grid[2, 2], (1.0, 0.55, 0.0))  # the query's frame
    # with distances, each neighbour's tile carries its distance (3 significant digits); the query's does not
    thumbs32 = rng.uniform(size=(6, 32, 32, 3)).astype(np.float32)
    d = np.array([[0.123456, 0.5], [2.0, 31.25]])
    grid = embed.neighbour_grid(thumbs32, np.array([[1, 2], [0, 5]]), queries=[3, 4], pad=2, distances=d)
    np.testing.assert_allclose(grid[2:34, 36:68], viz.label(thumbs32[1], "0.123"), atol=1e-6)
    np.testing.assert_allclose(grid[36:68, 70:102], viz.label(thumbs32[5], "31.2"), atol=1e-6)
    assert np.abs(grid[2:34, 36:68] - thumbs32[1]).max() > 0.5  # the label is there
    np.testing.assert_array_equal(grid[36:68, 36:68], viz.label(thumbs32[0], "2"))
    bare = embed.neighbour_grid(thumbs32, np.array([[1, 2], [0, 5]]), queries=[3, 4], pad=2)
    np.testing.assert_array_equal(grid[:, :34], bare[:, :34])  # query column unlabelled
    with pytest.raises(InputError, match=r"^distances: expected shape \(2, 2\) \(one per index\), got \(2,\)"):
        embed.neighbour_grid(thumbs32, np.array([[1, 2], [0, 5]]), distances=[1.0, 2.0])
    pts = rng.normal(size=(6, 2))
    pic = embed.scatter_thumbnails(pts, thumbs, labels=list("aabbcc"), title="t", size=3, dpi=50)
    assert pic.shape == (150, 150, 3) and pic.dtype == np.float32
    assert 0 <= pic.min() and pic.max() <= 1 and pic.std() > 0.05
    # each thumbnail sits at its point: the axes fill 0.06..0.96 of the figure, the limits pad the points' range
    # by 6%; a pure green thumbnail among grey ones is drawn around that pixel and nowhere else
    pts = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 5.0], [10.0, 5.0], [3.0, 1.0], [7.0, 4.0]])
    tiles = np.full((6, 16, 16, 3), 0.5, np.float32)
    for i in (4, 5):
        tiles[i] = (0.0, 1.0, 0.0)
        pic = embed.scatter_thumbnails(pts, np.where(np.arange(6)[:, None, None, None] == i, tiles, 0.5), size=3,
                                       dpi=50, zoom=1.0)
        green = (pic[..., 1] > 0.9) & (pic[..., 0] < 0.1) & (pic[..., 2] < 0.1)
        rows, cols = np.nonzero(green)
        side = 150
        fx = 0.06 + 0.9 * (pts[i, 0] + 0.6) / 11.2
        fy = 0.06 + 0.9 * (pts[i, 1] + 0.3) / 5.6
        # one 16 px thumbnail at zoom 1: 16 px at any dpi (edges antialiased)
        assert 15 * 15 <= green.sum() <= 17 * 17
        assert abs(cols.mean() + 0.5 - fx * side) < 1.5 and abs(rows.mean() + 0.5 - (1 - fy) * side) < 1.5
        assert 15 <= np.ptp(cols) + 1 <= 17 and 15 <= np.ptp(rows) + 1 <= 17
    # the automatic zoom draws thumbnails 1/25 of the picture wide: 300 / 25 = 12 px at 100 dpi
    one = np.where(np.arange(6)[:, None, None, None] == 4, tiles, 0.5)
    for dpi in (100, 200):
        pic = embed.scatter_thumbnails(pts, one, size=3, dpi=dpi)
        green = (pic[..., 1] > 0.9) & (pic[..., 0] < 0.1) & (pic[..., 2] < 0.1)
        rows, cols = np.nonzero(green)
        want = 3 * dpi / 25
        assert want - 1 <= np.ptp(cols) + 1 <= want + 1 and want - 1 <= np.ptp(rows) + 1 <= want + 1
    with pytest.raises(InputError, match=r"^thumbs: expected shape \(6, t, t, 3\), got \(5, 16, 16, 3\)"):
        embed.scatter_thumbnails(pts, thumbs[:5])
    for kw, msg in (({"size": 0}, r"^size: expected a positive finite number, got 0"),
                    ({"size": float("inf")}, r"^size: expected a positive finite number, got inf"),
                    ({"size": 0.001}, r"^size: expected a picture of at least 1 px, got 0.001 inches at 100 dpi"),
                    ({"dpi": -5}, r"^dpi: expected a positive finite number, got -5"),
                    ({"zoom": float("nan")}, r"^zoom: expected a positive finite number, got nan")):
        with pytest.raises(InputError, match=msg):
            embed.scatter_thumbnails(pts, thumbs, **kw)


def test_errors():
    x = np.zeros((4, 3), np.float32)
    with pytest.raises(InputError, match=r"^metric: expected one of 'l2', 'l1', 'cosine'; got 'l3'"):
        embed.nearest_neighbours(x, metric="l3")
    with pytest.raises(InputError, match=r"^k: expected at most 3 \(the candidates\), got 4"):
        embed.nearest_neighbours(x, k=4)
    with pytest.raises(InputError, match=r"^queries: expected 3 features per row like vectors, got 2"):
        embed.nearest_neighbours(x, np.zeros((1, 2), np.float32))
    with pytest.raises(InputError, match=r"^vectors: expected a float array of shape \(N, D\)"):
        embed.pca(np.zeros(5))
    with pytest.raises(InputError, match=r"^n_components: expected at most min\(N, D\) = 3, got 4"):
        embed.pca(x, 4)
    with pytest.raises(InputError, match=r"^pool: expected one of 'mean', 'max', 'flatten'; got 'sum'"):
        embed.features(NET, {}, [], layer="relu2_1", pool="sum")
    bad = np.ones((6, 3), np.float32)
    bad[2, 1] = np.nan
    bad[4, 0] = np.inf
    msg = r"^{}: expected finite values, got NaN or infinite entries in 2 of 6 rows \(first: row 2\)"
    for call, name in ((lambda: embed.tsne(bad), "vectors"), (lambda: embed.pca(bad), "vectors"),
                       (lambda: embed.nearest_neighbours(bad), "vectors"),
                       (lambda: embed.nearest_neighbours(np.ones((6, 3), np.float32), bad), "queries"),
                       (lambda: embed.pairwise_distances(np.ones((2, 3), np.float32), bad), "b")):
        with pytest.raises(InputError, match=msg.format(name)):
            call()
