"""Tests for jaxviz.image: decoding, resizing, saving, folders and errors.

Every image is generated procedurally in tmp_path (32-64 px), so the file
runs in a few seconds with no network.
"""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
from PIL import Image, ImageFile

from jaxviz import image as jimage
from jaxviz.errors import ImageError, InputError, JaxvizError

WHITE = (1.0, 1.0, 1.0)


def _noise(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _blocks(h=48, w=64):
    """An RGB image with four 8x8 markers of distinct colours in its corners."""
    a = np.full((h, w, 3), 128, np.uint8)
    a[:8, :8] = (255, 0, 0)  # top-left red
    a[:8, -8:] = (0, 255, 0)  # top-right green
    a[-8:, :8] = (0, 0, 255)  # bottom-left blue
    a[-8:, -8:] = (255, 255, 0)  # bottom-right yellow
    return a


def _save(img, path, **kw):
    img.save(path, **kw)
    return path


# --------------------------------------------------------------------------
# mode conversion


def _mode_1():
    im = Image.new("1", (4, 4), 0)
    im.putpixel((1, 2), 1)
    return im, ".png", {}, {(2, 1): WHITE, (0, 0): (0, 0, 0)}, 0


def _mode_l():
    im = Image.new("L", (4, 4), 51)
    return im, ".png", {}, {(0, 0): (0.2, 0.2, 0.2)}, 1e-7


def _mode_l_transparency_key():
    im = Image.new("L", (4, 4), 51)
    im.putpixel((3, 3), 7)
    return im, ".png", {"transparency": 7}, {(3, 3): WHITE, (0, 0): (0.2, 0.2, 0.2)}, 1e-7


def _mode_la():
    im = Image.new("LA", (4, 4), (100, 255))
    im.putpixel((0, 0), (100, 0))
    return im, ".png", {}, {(0, 0): WHITE, (1, 1): (100 / 255,) * 3}, 1e-7


def _mode_p():
    im = Image.new("P", (4, 4), 0)
    im.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    im.putpixel((1, 0), 1)
    im.putpixel((2, 0), 2)
    return im, ".png", {}, {(0, 0): (1, 0, 0), (0, 1): (0, 1, 0), (0, 2): (0, 0, 1)}, 0


def _mode_p_transparency():
    im, *_ = _mode_p()
    return im, ".png", {"transparency": 1}, {(0, 0): (1, 0, 0), (0, 1): WHITE, (0, 2): (0, 0, 1)}, 0


def _mode_rgba():
    im = Image.new("RGBA", (4, 4), (10, 20, 30, 255))
    im.putpixel((0, 0), (10, 20, 30, 0))
    im.putpixel((1, 0), (0, 0, 0, 128))
    expected = {(0, 0): WHITE, (1, 1): (10 / 255, 20 / 255, 30 / 255), (0, 1): (127 / 255,) * 3}
    return im, ".png", {}, expected, 1.01 / 255


def _mode_rgb_transparency_key():
    im = Image.new("RGB", (4, 4), (10, 20, 30))
    im.putpixel((2, 1), (1, 2, 3))
    return im, ".png", {"transparency": (1, 2, 3)}, {(1, 2): WHITE, (0, 0): (10 / 255, 20 / 255, 30 / 255)}, 1e-7


def _mode_cmyk_tiff():
    return Image.new("CMYK", (4, 4), (255, 0, 0, 0)), ".tif", {}, {(0, 0): (0, 1, 1)}, 0


def _mode_cmyk_jpeg():
    return Image.new("CMYK", (8, 8), (255, 0, 0, 0)), ".jpg", {"quality": 95}, {(4, 4): (0, 1, 1)}, 0.03


def _sixteen_bit(dtype, suffix):
    a = np.array([[0, 32768], [65535, 1000]], dtype=dtype)
    expected = {(0, 0): (0, 0, 0), (0, 1): (32768 / 65535,) * 3, (1, 0): WHITE, (1, 1): (1000 / 65535,) * 3}
    return Image.fromarray(a), suffix, {}, expected, 1e-7


def _mode_i16_png():
    return _sixteen_bit(np.uint16, ".png")


def _mode_i16b_tiff():
    return _sixteen_bit(">u2", ".tif")


def _mode_i32_tiff():
    a = np.array([[-5, 32768], [65535, 70000]], dtype=np.int32)
    expected = {(0, 0): (0, 0, 0), (0, 1): (32768 / 65535,) * 3, (1, 0): WHITE, (1, 1): WHITE}
    return Image.fromarray(a), ".tif", {}, expected, 1e-7


def _mode_f_tiff():
    a = np.array([[0.25, 2.0], [-1.0, 0.5]], dtype=np.float32)
    expected = {(0, 0): (0.25,) * 3, (0, 1): WHITE, (1, 0): (0, 0, 0), (1, 1): (0.5,) * 3}
    return Image.fromarray(a), ".tif", {}, expected, 0


MODE_CASES = {
    "1": _mode_1,
    "L": _mode_l,
    "L+transparency": _mode_l_transparency_key,
    "LA": _mode_la,
    "P": _mode_p,
    "P+transparency": _mode_p_transparency,
    "RGBA": _mode_rgba,
    "RGB+transparency": _mode_rgb_transparency_key,
    "CMYK-tiff": _mode_cmyk_tiff,
    "CMYK-jpeg": _mode_cmyk_jpeg,
    "I;16-png": _mode_i16_png,
    "I;16B-tiff": _mode_i16b_tiff,
    "I-tiff": _mode_i32_tiff,
    "F-tiff": _mode_f_tiff,
}


@pytest.mark.parametrize("case", list(MODE_CASES), ids=list(MODE_CASES))
def test_every_mode_becomes_rgb_float(tmp_path, case):
    im, suffix, save_kw, expected, atol = MODE_CASES[case]()
    path = _save(im, tmp_path / f"img{suffix}", **save_kw)
    with Image.open(path) as check:  # the file really holds the mode under test
        assert check.mode == im.mode or (im.mode == "I;16B" and check.mode.startswith("I;16"))
    x = jimage.load(path)
    assert x.shape == (1, im.height, im.width, 3)
    assert x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0
    for (r, c), rgb in expected.items():
        np.testing.assert_allclose(x[0, r, c], rgb, atol=atol, err_msg=f"pixel {(r, c)}")


def test_rgb_png_is_exact(tmp_path):
    a = _noise(32, 40)
    path = _save(Image.fromarray(a), tmp_path / "n.png")
    np.testing.assert_array_equal(jimage.load(path)[0], a.astype(np.float32) / 255)


def test_first_frame_of_animated_gif(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 0, 255)]]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    np.testing.assert_allclose(jimage.load(path)[0, 0, 0], (1, 0, 0))


# --------------------------------------------------------------------------
# EXIF orientation


def _exif(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


@pytest.mark.parametrize("suffix", [".png", ".tif", ".webp"])
def test_exif_orientation_6_rotates_lossless(tmp_path, suffix):
    a = _blocks(32, 48)
    kw = {"lossless": True} if suffix == ".webp" else {}
    path = _save(Image.fromarray(a), tmp_path / f"o6{suffix}", exif=_exif(6), **kw)
    x = jimage.load(path)
    # Orientation 6: stored row 0 is the displayed right edge -> rotate 90 degrees clockwise.
    assert x.shape == (1, 48, 32, 3)
    np.testing.assert_array_equal(x[0], np.rot90(a, k=-1).astype(np.float32) / 255)
    # Stored top-left (red) is displayed top-right; stored bottom-left (blue) top-left.
    np.testing.assert_array_equal(x[0, 0, -1], (1, 0, 0))
    np.testing.assert_array_equal(x[0, 0, 0], (0, 0, 1))


def test_exif_orientation_jpeg(tmp_path):
    a = _blocks(32, 48)
    path = _save(Image.fromarray(a), tmp_path / "o6.jpg", exif=_exif(6), quality=95)
    x = jimage.load(path)
    assert x.shape == (1, 48, 32, 3)
    np.testing.assert_allclose(x[0, 2, -3], (1, 0, 0), atol=0.1)  # red top-right
    np.testing.assert_allclose(x[0, 2, 2], (0, 0, 1), atol=0.1)  # blue top-left
    np.testing.assert_allclose(x[0, -3, 2], (1, 1, 0), atol=0.1)  # yellow bottom-left
    np.testing.assert_allclose(x[0, -3, -3], (0, 1, 0), atol=0.1)  # green bottom-right


def test_exif_orientation_3_and_resize_after_rotation(tmp_path):
    a = _blocks(32, 48)
    path = _save(Image.fromarray(a), tmp_path / "o3.png", exif=_exif(3))
    np.testing.assert_array_equal(jimage.load(path)[0], np.rot90(a, 2).astype(np.float32) / 255)
    p6 = _save(Image.fromarray(a), tmp_path / "o6.png", exif=_exif(6))
    # Size applies to the displayed (rotated) image: 48 tall, 32 wide.
    assert jimage.load(p6, 24).shape == (1, 24, 16, 3)
    assert jimage.load(p6, (12, 8)).shape == (1, 12, 8, 3)


# --------------------------------------------------------------------------
# resizing and cropping


@pytest.mark.parametrize(
    "hw, size, mode, expected",
    [
        ((48, 64), None, "longest", (48, 64)),
        ((48, 64), 32, "longest", (24, 32)),
        ((48, 64), 32, "shortest", (32, 42)),  # int(32 * 64 / 48) = 42, like torchvision
        ((64, 48), 32, "longest", (32, 24)),
        ((64, 48), 32, "shortest", (42, 32)),
        ((48, 64), (10, 20), "longest", (10, 20)),
        ((48, 64), (10, 20), "shortest", (10, 20)),
        ((48, 64), 128, "longest", (96, 128)),  # upsampling
        ((40, 40), 20, "shortest", (20, 20)),
    ],
)
def test_load_and_resize_shapes(tmp_path, hw, size, mode, expected):
    path = _save(Image.fromarray(_noise(*hw)), tmp_path / "n.png")
    x = jimage.load(path, size, resize=mode)
    assert x.shape == (1, *expected, 3) and x.dtype == np.float32
    if size is not None:
        y = jimage.resize(jimage.load(path), size, resize=mode)
        assert y.shape == x.shape and y.dtype == np.float32
        # load resizes uint8 (like torchvision; Pillow rounds after each of its two
        # passes), resize works in float32: they agree to within 1/255.
        np.testing.assert_allclose(y, x, atol=1 / 255 + 1e-6)


def test_load_resize_matches_pillow_bilinear(tmp_path):
    a = _noise(48, 64)
    path = _save(Image.fromarray(a), tmp_path / "n.png")
    ref = np.asarray(Image.fromarray(a).resize((21, 16), Image.BILINEAR), np.float32) / 255
    np.testing.assert_array_equal(jimage.load(path, (16, 21))[0], ref)


def test_resize_antialiases_when_downsampling():
    checker = (np.indices((64, 64)).sum(0) % 2).astype(np.float32)
    x = np.repeat(checker[:, :, None], 3, axis=2)
    y = jimage.resize(x, 8)
    assert y.shape == (8, 8, 3)  # an (H, W, 3) input keeps its rank
    np.testing.assert_allclose(y[1:-1, 1:-1], 0.5, atol=1e-3)  # averaged, not aliased to 0 or 1


def test_resize_keeps_constants_and_range():
    x = np.full((2, 33, 17, 3), 0.3, np.float32)
    x[1] = 0.7
    y = jimage.resize(x, (40, 11))
    assert y.shape == (2, 40, 11, 3)
    np.testing.assert_allclose(y[0], 0.3, atol=1e-6)
    np.testing.assert_allclose(y[1], 0.7, atol=1e-6)
    z = jimage.resize(np.random.default_rng(0).random((1, 32, 32, 3), dtype=np.float32), 50)
    assert z.min() >= 0.0 and z.max() <= 1.0  # bilinear never overshoots


def test_resize_accepts_uint8():
    x = np.full((16, 16, 3), 255, np.uint8)
    np.testing.assert_array_equal(jimage.resize(x, 8), np.ones((8, 8, 3), np.float32))


def test_center_crop_offsets_like_torchvision():
    x = np.arange(8 * 9).reshape(1, 8, 9, 1)
    y = jimage.center_crop(x, (5, 4))
    # round((8 - 5) / 2) = round(1.5) = 2, round((9 - 4) / 2) = round(2.5) = 2 (Python rounding).
    np.testing.assert_array_equal(y, x[:, 2:7, 2:6])
    assert jimage.center_crop(x[0], 3).shape == (3, 3, 1)
    assert jimage.center_crop(x, (8, 9)).shape == x.shape


def test_imagenet_eval_matches_torchvision_pil_pipeline(tmp_path):
    a = _noise(48, 64, seed=3)
    path = _save(Image.fromarray(a), tmp_path / "n.png")
    x = jimage.imagenet_eval(path, crop=24, resize_to=32)
    # Resize(32): shortest side 32, long side int(32 * 64 / 48) = 42; CenterCrop(24):
    # top = round((32 - 24) / 2) = 4, left = round((42 - 24) / 2) = 9.
    ref = Image.fromarray(a).resize((42, 32), Image.BILINEAR).crop((9, 4, 33, 28))
    np.testing.assert_array_equal(x, np.asarray(ref, np.float32)[None] / 255)
    assert jimage.imagenet_eval(path).shape == (1, 224, 224, 3)


def test_imagenet_eval_array_input(tmp_path):
    rng = np.random.default_rng(0)
    x8 = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(x8).save(tmp_path / "x.png")
    from_file = jimage.imagenet_eval(tmp_path / "x.png", crop=24, resize_to=32)
    assert from_file.shape == (1, 24, 24, 3)
    # an array goes through the same pipeline as the file holding it (uint8, or float in [0, 1]); the file's is
    # PIL's 8-bit resize, so the two differ by its rounding, under one level
    np.testing.assert_allclose(jimage.imagenet_eval(x8, crop=24, resize_to=32), from_file, atol=1 / 255)
    np.testing.assert_allclose(jimage.imagenet_eval(x8 / np.float32(255), crop=24, resize_to=32), from_file, atol=1 / 255)
    y8 = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    both = jimage.imagenet_eval(np.stack([x8, y8]), crop=24, resize_to=32)
    one_by_one = [jimage.imagenet_eval(v, crop=24, resize_to=32) for v in (x8, y8)]
    np.testing.assert_allclose(both, np.concatenate(one_by_one), atol=1e-6)
    with pytest.raises(InputError, match=r"resize_to: expected at least crop=224, got 100"):
        jimage.imagenet_eval(x8, resize_to=100)


def test_to_float():
    np.testing.assert_array_equal(
        jimage.to_float(np.array([0, 51, 255], np.uint8)), np.array([0.0, 0.2, 1.0], np.float32)
    )
    np.testing.assert_array_equal(jimage.to_float(np.array([0, 65535], np.uint16)), [0.0, 1.0])
    np.testing.assert_array_equal(jimage.to_float(np.array([True, False])), [1.0, 0.0])
    f = jimage.to_float(np.array([0.25, 2.0], np.float64))
    assert f.dtype == np.float32 and list(f) == [0.25, 2.0]  # floats pass through unclipped
    g = np.zeros(3, np.float32)
    assert jimage.to_float(g) is g
    with pytest.raises(InputError, match=r"array: expected uint8, uint16, bool or a floating dtype, got int32"):
        jimage.to_float(np.zeros(2, np.int32))


def test_bfloat16_pictures_are_floating(tmp_path):
    import ml_dtypes  # installed with jax

    x = np.linspace(0, 1, 48, dtype=np.float32).reshape(4, 4, 3).astype(ml_dtypes.bfloat16)
    f = jimage.to_float(x)
    assert f.dtype == np.float32
    np.testing.assert_array_equal(f, x.astype(np.float32))
    jimage.save(x, tmp_path / "b.png")
    jimage.save(f, tmp_path / "f.png")
    np.testing.assert_array_equal(jimage.load(tmp_path / "b.png"), jimage.load(tmp_path / "f.png"))
    np.testing.assert_array_equal(jimage.resize(x[None], 2), jimage.resize(f[None], 2))


# --------------------------------------------------------------------------
# saving


def test_png_round_trip_is_exact(tmp_path):
    a = _noise(32, 48, seed=1)
    x = a.astype(np.float32) / 255
    out = jimage.save(x[None], tmp_path / "deep" / "dir" / "x.png")  # creates parents
    assert out == tmp_path / "deep" / "dir" / "x.png" and out.is_file()
    np.testing.assert_array_equal(jimage.load(out)[0], x)
    jimage.save(a, tmp_path / "u8.PNG")  # uint8 input, upper-case suffix
    np.testing.assert_array_equal(jimage.load(tmp_path / "u8.PNG")[0], x)


@pytest.mark.parametrize("suffix", [".tif", ".tiff", ".bmp"])
def test_lossless_round_trips(tmp_path, suffix):
    x = _noise(32, 32, seed=2).astype(np.float32) / 255
    np.testing.assert_array_equal(jimage.load(jimage.save(x, tmp_path / f"x{suffix}"))[0], x)


@pytest.mark.parametrize("suffix", [".jpg", ".jpeg", ".webp"])
def test_lossy_round_trips_within_tolerance(tmp_path, suffix):
    yy, xx = np.mgrid[0:48, 0:64].astype(np.float32)
    x = np.stack([yy / 47, xx / 63, (yy + xx) / 110], axis=-1)  # smooth gradients
    y = jimage.load(jimage.save(x, tmp_path / f"x{suffix}", quality=95))[0]
    err = np.abs(y - x)
    assert err.mean() < 0.01 and err.max() < 0.08, (err.mean(), err.max())


def test_jpeg_quality_matters(tmp_path):
    x = _noise(32, 32, seed=4)
    lo = jimage.save(x, tmp_path / "lo.jpg", quality=10).stat().st_size
    hi = jimage.save(x, tmp_path / "hi.jpg", quality=95).stat().st_size
    assert lo < hi


def test_save_greyscale_clips_and_rounds(tmp_path):
    g = np.array([[-0.5, 0.0, 0.2], [0.5, 1.0, 1.5]], np.float32)
    for arr in (g, g[:, :, None]):
        out = jimage.save(arr, tmp_path / "g.png")
        with Image.open(out) as im:
            assert im.mode == "L"
            np.testing.assert_array_equal(np.asarray(im), [[0, 0, 51], [128, 255, 255]])
        x = jimage.load(out)[0]
        np.testing.assert_array_equal(x[..., 0], x[..., 2])  # greyscale loads as equal channels


def test_save_stores_png_text_and_read_text_returns_it(tmp_path):
    x = np.full((4, 5, 3), 0.5, np.float32)
    p = jimage.save(x, tmp_path / "a.png", text={"jaxviz": '{"layer": "relu2_1"}', "Ünïcode": "café ✓"})
    assert jimage.read_text(p) == {"jaxviz": '{"layer": "relu2_1"}', "Ünïcode": "café ✓"}
    np.testing.assert_allclose(jimage.load(p)[0], 128 / 255)  # the pixels are as without text
    assert jimage.read_text(jimage.save(x, tmp_path / "b.png")) == {}
    assert jimage.read_text(jimage.save(x, tmp_path / "c.jpg", text={"k": "v"})) == {}  # PNG only
    (tmp_path / "d.png").write_bytes(b"not a png")
    assert jimage.read_text(tmp_path / "d.png") == {} and jimage.read_text(tmp_path / "missing.png") == {}


def test_save_rgba_png(tmp_path):
    a = np.zeros((4, 4, 4), np.float32)
    a[..., 0] = 1.0
    a[0, 0, 3] = 1.0  # one opaque red pixel, the rest transparent
    out = jimage.save(a, tmp_path / "a.png")
    x = jimage.load(out)[0]
    np.testing.assert_array_equal(x[0, 0], (1, 0, 0))
    np.testing.assert_array_equal(x[1, 1], (1, 1, 1))
    with pytest.raises(InputError, match=r"x: JPEG cannot store an alpha channel"):
        jimage.save(a, tmp_path / "a.jpg")


def test_save_rejects_bad_input(tmp_path):
    x = np.zeros((2, 8, 8, 3), np.float32)
    with pytest.raises(InputError, match=r"x: expected a single image, got a batch of 2"):
        jimage.save(x, tmp_path / "b.png")
    with pytest.raises(InputError, match=r"path: unsupported suffix '\.gif'"):
        jimage.save(x[0], tmp_path / "b.gif")
    with pytest.raises(InputError, match=r"path: unsupported suffix ''"):
        jimage.save(x[0], tmp_path / "noext")
    with pytest.raises(InputError, match=r"x: expected shape \(H, W, 3\)"):
        jimage.save(np.zeros((8, 8, 2)), tmp_path / "b.png")
    with pytest.raises(InputError, match=r"x: contains NaN or infinite values"):
        jimage.save(np.full((8, 8, 3), np.nan, np.float32), tmp_path / "b.png")
    with pytest.raises(InputError, match=r"x: expected uint8, uint16, bool or a floating dtype, got int64"):
        jimage.save(np.zeros((8, 8, 3), np.int64), tmp_path / "b.png")
    with pytest.raises(InputError, match=r"quality: expected an int from 1 to 100, got 101"):
        jimage.save(x[0], tmp_path / "b.jpg", quality=101)
    assert list(tmp_path.iterdir()) == []


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path, monkeypatch):
    path = tmp_path / "out.png"
    jimage.save(np.zeros((8, 8, 3), np.float32), path)
    old = path.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # not tempfile's 0o600

    def broken_encoder(im, fp, filename):
        fp.write(b"\x89PNG half an image")
        raise OSError("disk full")

    monkeypatch.setitem(Image.SAVE, "PNG", broken_encoder)
    with pytest.raises(OSError, match="disk full"):
        jimage.save(np.ones((8, 8, 3), np.float32), path)
    assert path.read_bytes() == old  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]  # temp file removed
    monkeypatch.undo()
    jimage.save(np.ones((8, 8, 3), np.float32), path)  # overwriting works
    np.testing.assert_array_equal(jimage.load(path), np.ones((1, 8, 8, 3), np.float32))
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


# --------------------------------------------------------------------------
# errors


def test_non_image_file(tmp_path):
    path = tmp_path / "photo.txt"
    path.write_text("hello, not a picture")
    with pytest.raises(ImageError, match=r"photo\.txt: not an image Pillow can read \(") as info:
        jimage.load(path)
    assert isinstance(info.value, JaxvizError) and isinstance(info.value, ValueError)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty\.png: not an image Pillow can read"):
        jimage.load(tmp_path / "empty.png")


def test_formats_outside_the_allow_list_are_refused(tmp_path):
    path = tmp_path / "x.ico"
    Image.new("RGB", (16, 16)).save(path)  # Pillow reads ICO, jaxviz does not try
    with pytest.raises(ImageError, match=r"x\.ico: not an image Pillow can read"):
        jimage.load(path)


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_file(tmp_path, monkeypatch, suffix):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", False)
    path = tmp_path / f"cut{suffix}"
    Image.fromarray(_noise(64, 64)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=rf"cut\{suffix}: cannot decode image data \("):
        jimage.load(path)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.png"
    with pytest.raises(FileNotFoundError, match=r"nope\.png: no such file") as info:
        jimage.load(path)
    assert isinstance(info.value, jimage.ImageNotFoundError) and isinstance(info.value, ImageError)
    with pytest.raises(ImageError, match=r"is a directory, not an image file"):
        jimage.load(tmp_path)


def test_decompression_bomb_refused_before_decoding(tmp_path, monkeypatch):
    path = _save(Image.fromarray(_noise(32, 48)), tmp_path / "bomb.png")
    decoded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(1) or real_load(self))
    with pytest.raises(ImageError, match=r"bomb\.png: 48x32 image has 1536 pixels, more than max_pixels=1000"):
        jimage.load(path, max_pixels=1000)
    assert decoded == []  # refused from the header alone
    assert jimage.load(path, max_pixels=1536).shape == (1, 32, 48, 3)
    assert jimage.load(path, max_pixels=None).shape == (1, 32, 48, 3)
    assert decoded


@pytest.mark.parametrize("pillow_limit", [1000, 500])  # Pillow warns above 1x, raises above 2x
def test_pillow_bomb_warning_and_error_become_image_error(tmp_path, monkeypatch, pillow_limit):
    path = _save(Image.fromarray(_noise(32, 48)), tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pillow_limit)
    with pytest.raises(ImageError, match=r"bomb\.png: refusing to decode a possible decompression bomb"):
        jimage.load(path, max_pixels=None)


def test_argument_errors(tmp_path):
    path = _save(Image.fromarray(_noise(8, 8)), tmp_path / "n.png")
    for bad in (0, -3, 2.5, "big", (1, 2, 3), (0, 4), True):
        with pytest.raises(InputError, match=r"^size: expected None, a positive int or \(height, width\), got "):
            jimage.load(path, bad)
    with pytest.raises(InputError, match=r"^resize: expected one of 'longest', 'shortest'; got 'middle'"):
        jimage.load(path, 4, resize="middle")
    with pytest.raises(InputError, match=r"^max_pixels: expected a positive int, got 0"):
        jimage.load(path, max_pixels=0)
    with pytest.raises(InputError, match=r"^size: expected a positive int or \(height, width\), got None"):
        jimage.resize(np.zeros((8, 8, 3)), None)
    with pytest.raises(InputError, match=r"^x: expected shape \(N, H, W, C\) or \(H, W, C\), got \(8, 8\)"):
        jimage.resize(np.zeros((8, 8)), 4)
    with pytest.raises(InputError, match=r"^size: crop 9x9 is larger than the image 8x8"):
        jimage.center_crop(np.zeros((8, 8, 3)), 9)


# --------------------------------------------------------------------------
# folders


def _folder(tmp_path):
    """Six images of distinct solid colours, plus files that are not images."""
    d = tmp_path / "photos"
    (d / "sub").mkdir(parents=True)
    specs = {
        "b.png": ((40, 64), (255, 0, 0), {}),
        "a.jpg": ((64, 40), (0, 255, 0), {"quality": 100}),
        "C.PNG": ((32, 32), (0, 0, 255), {}),
        "d.webp": ((48, 64), (255, 255, 0), {"lossless": True}),
        "e.tiff": ((50, 50), (0, 255, 255), {}),
        "sub/f.bmp": ((33, 35), (255, 0, 255), {}),
        "g.gif": ((30, 34), (255, 128, 0), {}),  # formats load() reads are found in folders too
        "h.ppm": ((36, 30), (128, 0, 255), {}),
    }
    colours = {}
    for name, ((h, w), rgb, kw) in specs.items():
        Image.new("RGB", (w, h), rgb).save(d / name, **kw)
        colours[d / name] = np.array(rgb, np.float32) / 255
    (d / "notes.txt").write_text("not an image")
    (d / ".hidden.png").write_bytes(b"macOS resource fork")
    return d, colours


def test_list_images(tmp_path):
    d, colours = _folder(tmp_path)
    top = jimage.list_images(d)
    assert top == sorted(p for p in colours if p.parent == d)
    assert [p.name for p in top] == ["C.PNG", "a.jpg", "b.png", "d.webp", "e.tiff", "g.gif", "h.ppm"]
    assert jimage.list_images(d, recursive=True) == sorted(colours)
    with pytest.raises(FileNotFoundError, match=r"nowhere: no such directory"):
        jimage.list_images(tmp_path / "nowhere")
    with pytest.raises(NotADirectoryError, match=r"b\.png: not a directory"):
        jimage.list_images(d / "b.png")


def test_load_folder_batches_in_sorted_order(tmp_path):
    d, colours = _folder(tmp_path)
    batches = list(jimage.load_folder(d, size=16, batch_size=2, recursive=True))
    assert [len(p) for p, _ in batches] == [2, 2, 2, 2]
    paths = [p for ps, _ in batches for p in ps]
    assert paths == sorted(colours)
    for ps, batch in batches:
        assert batch.shape == (len(ps), 16, 16, 3) and batch.dtype == np.float32
        for p, img in zip(ps, batch):
            np.testing.assert_allclose(img, np.broadcast_to(colours[p], img.shape), atol=0.02)

    exact = list(jimage.load_folder(d, size=(8, 12), batch_size=4))
    assert [b.shape for _, b in exact] == [(4, 8, 12, 3), (3, 8, 12, 3)]


def test_load_folder_is_lazy_and_validates_eagerly(tmp_path, monkeypatch):
    d, _ = _folder(tmp_path)
    with pytest.raises(InputError, match=r"^batch_size: expected a positive int, got 0"):
        jimage.load_folder(d, size=8, batch_size=0)  # raised at the call, not at next()
    with pytest.raises(InputError, match=r"^size: expected a positive int or \(height, width\), got None"):
        jimage.load_folder(d, size=None)
    calls = []
    real = jimage._load_hw3
    monkeypatch.setattr(jimage, "_load_hw3", lambda *a: calls.append(a[0]) or real(*a))
    it = jimage.load_folder(d, size=8, batch_size=2)
    assert calls == []
    next(it)
    assert len(calls) == 2  # one batch decoded, not the folder


def test_load_folder_errors_and_skip(tmp_path):
    d, colours = _folder(tmp_path)
    (d / "broken.jpg").write_text("this is not a jpeg")
    with pytest.raises(ImageError, match=r"broken\.jpg: not an image Pillow can read"):
        list(jimage.load_folder(d, size=8, batch_size=3))
    with pytest.warns(UserWarning, match=r"broken\.jpg: skipped") as record:
        batches = list(jimage.load_folder(d, size=8, batch_size=3, skip_errors=True))
    assert len(record) == 1
    assert [len(p) for p, _ in batches] == [3, 3, 1]  # the skipped slot is refilled
    assert [p for ps, _ in batches for p in ps] == sorted(p for p in colours if p.parent == d)


def test_load_folder_empty(tmp_path):
    assert list(jimage.load_folder(tmp_path, size=8)) == []


def test_public_api():
    assert set(jimage.__all__) == {
        "DEFAULT_MAX_PIXELS",
        "IMAGE_SUFFIXES",
        "READ_FORMATS",
        "ImageNotFoundError",
        "load",
        "to_float",
        "resize",
        "center_crop",
        "imagenet_eval",
        "save",
        "read_text",
        "list_images",
        "load_folder",
    }
    assert jimage.DEFAULT_MAX_PIXELS == 89_478_485
    for name in jimage.__all__:
        obj = getattr(jimage, name)
        if callable(obj) and not isinstance(obj, type):
            doc = obj.__doc__ or ""
            assert "Args:" in doc and "Returns:" in doc and "Example:" in doc, name
