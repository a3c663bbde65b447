"""viz: channel reduction, normalisation, colormaps, overlays and grids."""

import numpy as np
import pytest

from jaxviz import viz
from jaxviz.errors import InputError


def test_reduce_channels():
    a = np.array([[[[1.0, -2.0, 2.0]]]])
    assert viz.reduce_channels(a, "abs_sum")[0, 0, 0] == 5
    assert viz.reduce_channels(a, "sum")[0, 0, 0] == 1
    assert viz.reduce_channels(a, "max_abs")[0, 0, 0] == 2
    assert viz.reduce_channels(a, "l2")[0, 0, 0] == 3
    with pytest.raises(InputError, match=r"how: expected one of 'abs_sum', 'sum', 'max_abs', 'l2'; got 'mean'"):
        viz.reduce_channels(a, "mean")


def test_normalize_clips_at_percentile_and_keeps_sign():
    v = np.arange(101, dtype=np.float32)
    n = viz.normalize(v, percentile=50)
    assert n[0] == 0 and n[50] == 1 and n[100] == 1 and n[25] == pytest.approx(0.5)
    s = viz.normalize(np.array([-4.0, 0.0, 2.0]), signed=True, percentile=100)
    np.testing.assert_allclose(s, [-1, 0, 0.5])
    assert not viz.normalize(np.full((3, 3), 7.0)).any()
    with pytest.raises(InputError, match=r"percentile: expected a value in \(0, 100\], got 0"):
        viz.normalize(v, percentile=0)


def test_colormap_and_heatmap():
    rgb = viz.colormap(np.array([0.0, 1.0]), "gray")
    np.testing.assert_allclose(rgb, [[0, 0, 0], [1, 1, 1]], atol=1e-6)
    with pytest.raises(InputError, match=r"cmap: unknown colormap 'nope'"):
        viz.colormap(np.zeros(2), "nope")
    attr = np.zeros((8, 8, 3), np.float32)
    attr[2, 3] = 1.0
    h = viz.heatmap(attr, cmap="gray", percentile=100)
    assert h.shape == (8, 8, 3) and h[2, 3].tolist() == [1, 1, 1] and h[0, 0].tolist() == [0, 0, 0]
    signed = viz.heatmap(np.array([[-1.0, 0.0, 1.0]]), signed=True, percentile=100)
    assert signed[0, 0, 2] > signed[0, 0, 0] and signed[0, 2, 0] > signed[0, 2, 2]  # blue negative, red positive


def test_overlay_shows_the_image_where_the_map_is_zero():
    img = np.full((1, 4, 4, 3), 0.25, np.float32)
    attr = np.zeros((2, 2))
    attr[0, 0] = 1.0
    out = viz.overlay(img, attr, alpha=1.0, cmap="gray", percentile=100)
    assert out.shape == (4, 4, 3)
    np.testing.assert_allclose(out[:2, :2], 1.0)  # upsampled (nearest) hot quadrant is the colormap's top
    np.testing.assert_allclose(out[2:, 2:], 0.25)  # cold: the image itself
    with pytest.raises(InputError, match=r"img: expected shape \(H, W, 3\), got \(4, 4\)"):
        viz.overlay(np.zeros((4, 4)), attr)


def test_overlay_blends_by_alpha_times_the_normalised_map():
    """out = (1 - w) * img + w * cmap(v), w = alpha * v, v = (map - min) / (percentile - min), map upsampled
    (nearest) to the image."""
    from matplotlib import colormaps

    rng = np.random.default_rng(0)
    img = rng.uniform(0.1, 0.9, (4, 6, 3)).astype(np.float32)
    attr = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 9.0]])  # min 1, max 9: v = 0, 1/8, 1/4, 3/8, 1/2, 1
    out = viz.overlay(img, attr, alpha=0.5, cmap="viridis", percentile=100)
    v = np.repeat(np.repeat((attr - 1) / 8, 2, 0), 2, 1)
    w = 0.5 * v[..., None]
    want = (1 - w) * img + w * colormaps["viridis"](v)[..., :3]
    np.testing.assert_allclose(out, want, atol=1e-6)
    np.testing.assert_allclose(out[:2, :2], img[:2, :2], atol=1e-6)  # v = 0: the image
    # at the map's peak the picture is half image, half colour (alpha = 0.5), not all colour
    np.testing.assert_allclose(out[2:, 4:], 0.5 * img[2:, 4:] + 0.5 * np.array(colormaps["viridis"](1.0)[:3]),
                               atol=1e-6)


def test_one_image_maps_with_a_batch_axis_of_one():
    """grad_cam/cam return (N, h, w): for one image (1, h, w) is that image's map, not 1 px x h x w channels."""
    rng = np.random.default_rng(1)
    img = rng.uniform(0.1, 0.9, (8, 8, 3)).astype(np.float32)
    for m in (rng.uniform(size=(4, 4)), rng.uniform(size=(8, 8))):  # a layer's map, one upsampled to the image
        np.testing.assert_array_equal(viz.heatmap(m[None]), viz.heatmap(m))
        np.testing.assert_array_equal(viz.overlay(img, m[None]), viz.overlay(img, m))
        assert viz.heatmap(m[None]).shape == m.shape + (3,)
    a = rng.normal(size=(8, 8, 3))
    np.testing.assert_array_equal(viz.overlay(img[None], a[None]), viz.overlay(img, a))
    with pytest.raises(InputError, match=r"^attr: expected \(H, W, C\) or \(H, W\), got \(3, 8, 8\), which looks "
                                         r"channels-first"):
        viz.overlay(img, np.moveaxis(a, -1, 0))


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan"), "0.5", True])
def test_overlay_refuses_alpha_outside_0_1(alpha):
    with pytest.raises(InputError, match=r"^alpha: expected a number in \[0, 1\], got "):
        viz.overlay(np.zeros((4, 4, 3)), np.ones((4, 4)), alpha=alpha)


def test_overlay_refuses_0_255_and_nan_images():
    with pytest.raises(InputError, match=r"^img: expected values in \[0, 1\], got values in \[0, 255\] \(a 0-255"):
        viz.overlay(np.linspace(0, 255, 48).reshape(4, 4, 3), np.ones((4, 4)))
    nan = np.zeros((4, 4, 3))
    nan[1, 2, 0] = np.nan
    with pytest.raises(InputError, match=r"^img: expected finite values in \[0, 1\], got NaN or infinite pixels"):
        viz.overlay(nan, np.ones((4, 4)))
    assert viz.overlay(np.zeros((4, 4, 3)), np.ones((4, 4)), alpha=np.float32(0.3)).shape == (4, 4, 3)


def test_grid_layout():
    tiles = [np.full((2, 3, 3), i / 4, np.float32) for i in range(5)]
    g = viz.grid(tiles, ncols=3, pad=1, pad_value=1.0)
    assert g.shape == (2 * 2 + 3, 3 * 3 + 4, 3)
    np.testing.assert_allclose(g[1:3, 1:4], 0.0)  # tile 0
    np.testing.assert_allclose(g[4:6, 5:8], 1.0)  # tile 4 at row 1, col 1
    np.testing.assert_allclose(g[4:6, 9:12], 1.0)  # empty cell keeps the pad value
    np.testing.assert_allclose(g[1:3, 9:12], 0.5)  # tile 2
    assert viz.grid([np.zeros((2, 2))]).shape == (6, 6, 3)  # greyscale -> RGB
    with pytest.raises(InputError, match="images: expected at least one image"):
        viz.grid([])


def test_grid_takes_tiles_of_different_sizes_and_refuses_a_bad_pad():
    g = viz.grid([np.zeros((2, 2, 3)), np.full((3, 1), 0.5)], ncols=2, pad=1)
    assert g.shape == (3 + 2, 2 * 2 + 3, 3)  # cells of the largest height and width
    np.testing.assert_allclose(g[1:4, 4], 0.5)  # the greyscale 3 x 1 tile, top-left in its cell
    np.testing.assert_allclose(g[3, 1:3], 1.0)  # below the 2 x 2 tile: its cell's unused row
    with pytest.raises(InputError, match=r"images: expected tiles of shape \(H, W, 3\) or \(H, W\), got \(6, 5, 4\)"):
        viz.grid([np.zeros((4, 4, 3)), np.zeros((6, 5, 4))])
    for pad in (-1, 1.5, True):
        with pytest.raises(InputError, match=r"pad: expected a non-negative int of pixels"):
            viz.grid([np.zeros((2, 2, 3))], pad=pad)


def test_upsample_nearest_and_maps_refuse_empty_shapes():
    np.testing.assert_array_equal(viz.upsample_nearest(np.array([[1, 2]]), (2, 4)), [[1, 1, 2, 2], [1, 1, 2, 2]])
    for shape in ((0, 5), (3,), (2.0, 2), "ab"):
        with pytest.raises(InputError, match=r"shape: expected \(height, width\) as two positive ints"):
            viz.upsample_nearest(np.ones((3, 3)), shape)
    with pytest.raises(InputError, match=r"a: expected a map of at least 1 x 1 pixels, got shape \(0, 3\)"):
        viz.upsample_nearest(np.ones((0, 3)), (4, 5))
    with pytest.raises(InputError, match=r"attr: expected a map of at least 1 x 1 pixels, got shape \(0, 3\)"):
        viz.heatmap(np.zeros((0, 3)))
    with pytest.raises(InputError, match=r"attr: expected a map of at least 1 x 1 pixels"):
        viz.overlay(np.zeros((4, 4, 3)), np.zeros((4, 0)))


def test_a_few_non_finite_pixels_do_not_blank_the_map():
    v = np.array([0.0, np.nan, 4.0, np.inf, -np.inf, 2.0], np.float32)
    n = viz.normalize(v, percentile=100)
    np.testing.assert_allclose(n, [0, np.nan, 1, 1, 0, 0.5])  # scale from the finite values; NaN stays NaN
    s = viz.normalize(np.array([np.nan, -2.0, 1.0, np.inf]), signed=True, percentile=100)
    np.testing.assert_allclose(s, [np.nan, -1, 0.5, 1])
    np.testing.assert_allclose(viz.normalize(np.array([np.nan, np.inf, -np.inf])), [np.nan, 1, 0])
    m = np.arange(16, dtype=np.float32).reshape(4, 4)
    m[0, 0] = np.nan
    h = viz.heatmap(m, cmap="gray", percentile=100)
    np.testing.assert_allclose(h[0, 0], 0.5)  # NaN drawn mid grey
    np.testing.assert_allclose(h[3, 3], 1.0, atol=1e-6)  # the rest keeps its contrast
    np.testing.assert_allclose(h[0, 1], 0.0, atol=1e-6)
    img = np.full((4, 4, 3), 0.25, np.float32)
    o = viz.overlay(img, m, cmap="gray", alpha=1.0, percentile=100)
    np.testing.assert_allclose(o[0, 0], 0.25)  # the image shows through a NaN pixel
    np.testing.assert_allclose(o[3, 3], 1.0, atol=1e-6)


def test_channel_grid_orders_by_mean_activation():
    maps = np.zeros((1, 4, 4, 3), np.float32)
    maps[..., 1] = 5.0
    maps[0, 0, 0, 1] = 6.0
    maps[..., 2] = 1.0
    maps[0, 0, 0, 2] = 2.0
    g = viz.channel_grid(maps, order="mean", cmap="gray", ncols=3, pad=0)
    assert g.shape == (4, 12, 3)
    # first tile is channel 1 (largest mean), each tile scaled to its own range: its hot pixel is white
    assert g[0, 0].tolist() == [1, 1, 1] and g[1, 1].tolist() == [0, 0, 0]
    by_index = viz.channel_grid(maps, order="index", limit=2, cmap="gray", ncols=2, pad=0)
    assert by_index.shape == (4, 8, 3)
    # as given: channel 0 (constant, drawn at the colormap's low end) first, then channel 1 with its hot pixel
    np.testing.assert_array_equal(by_index[:, :4], 0.0)
    assert by_index[0, 4].tolist() == [1, 1, 1] and by_index[1, 5].tolist() == [0, 0, 0]


def test_label_writes_in_the_corner_and_cuts_what_does_not_fit():
    white = np.ones((32, 48, 3), np.float32)
    short, long = viz.label(white, "3 tench"), viz.label(white, "2 great white shark")
    for t in (short, long):
        assert t[12, 0].max() == 0 and t[12, 45].max() == 0  # a dark box, 6 px per character (7) + 4 wide
        assert (t[:13, 47] == 1).all() and (t[13:] == 1).all()  # the rest of the tile untouched
    assert short[:12, :46].max() > 0.9 and not np.array_equal(short[:13], long[:13])  # light text; cut to "2 gre.."
    with pytest.raises(InputError, match=r"^tile: expected shape \(H, W, 3\), got \(4, 4\)"):
        viz.label(np.zeros((4, 4)), "x")


def test_value_range_is_what_normalize_maps_to_the_ends():
    v = np.arange(101.0).reshape(1, 101)
    assert viz.value_range(v, percentile=90) == (0.0, 90.0)
    n = viz.normalize(v, percentile=90)
    assert n[0, 0] == 0 and n[0, 90] == 1 and n[0, 45] == 0.5
    assert viz.value_range(-v, signed=True, percentile=50) == (-50.0, 50.0)
    assert viz.value_range(np.array([np.nan, np.inf, 2.0, 3.0]), percentile=100) == (2.0, 3.0)  # finite values only
    assert viz.value_range(np.array([np.nan])) == (0.0, 0.0)
    with pytest.raises(InputError, match=r"^percentile: expected a value in \(0, 100\], got 0"):
        viz.value_range(v, percentile=0)


def test_colorbar_runs_the_colormap_from_lo_to_hi_with_the_values_written():
    strip = viz.colorbar(120, 0.0, 3.25, cmap="viridis", title="score drop")
    assert strip.shape == (viz.COLORBAR_HEIGHT, 120, 3) and strip.dtype == np.float32
    ends = viz.colormap(np.array([0.0, 1.0]), "viridis")
    np.testing.assert_allclose(strip[5, 2], ends[0], atol=1 / 255)  # left end: lo's colour
    np.testing.assert_allclose(strip[5, 117], ends[1], atol=1 / 255)  # right end: hi's colour
    assert (strip[:2] == 1).all() and (strip[5, :2] == 1).all()  # white margin
    text = strip[11:]
    dark = text.min(-1) < 0.5
    assert dark[:, :8].any() and dark[:, -26:].any() and dark[:, 30:90].any()  # "0", "3.25", the title
    bare = viz.colorbar(120, 0.0, 3.25, cmap="viridis")
    assert not (bare[11:].min(-1) < 0.5)[:, 30:90].any()  # no title: nothing between the values
    pic = viz.with_colorbar(np.zeros((40, 120, 3), np.float32), 0.0, 3.25, cmap="viridis", title="score drop")
    np.testing.assert_array_equal(pic[40:], strip)
    np.testing.assert_array_equal(pic[:40], 0)
    with pytest.raises(InputError, match="^width: expected an int >= 16, got 8"):
        viz.colorbar(8, 0, 1)
    with pytest.raises(InputError, match="^hi: expected a finite number, got nan"):
        viz.colorbar(64, 0, float("nan"))
    with pytest.raises(InputError, match=r"^picture: expected shape \(H, W, 3\), got \(4, 4\)"):
        viz.with_colorbar(np.zeros((4, 4)), 0, 1)


def test_a_colorbar_title_too_long_for_its_place_wraps_below_never_cut():
    short = viz.colorbar(128, 0.0, 0.5, title="score drop")
    assert short.shape[0] == viz.COLORBAR_HEIGHT  # fits between the two values
    long = viz.colorbar(64, 0.0, 0.0123, title="Guided backprop |gradient|")
    lines = 3  # 10 characters to a 64 px line: "Guided", "backprop", "|gradient|"
    assert long.shape == (viz.COLORBAR_HEIGHT + 12 * lines, 64, 3)
    np.testing.assert_array_equal(long[:10], viz.colorbar(64, 0.0, 0.0123)[:10])  # the same bar
    for k in range(lines):  # text (dark pixels) on every extra line
        band = long[viz.COLORBAR_HEIGHT - 2 + 12 * k: viz.COLORBAR_HEIGHT + 8 + 12 * k]
        assert band.min() < 0.3
    assert long[10:21].min() < 0.3  # the two values still under the bar's ends
