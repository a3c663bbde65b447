"""``jaxviz attribute``: outputs equal the library's, CSV contents, resume after an interruption, devices."""

import csv
import json
import os
import subprocess
import sys
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz import attribution, cli, datasets, image, viz
from jaxviz.commands import attribute as attribute_cmd
from jaxviz.models.small_cnn import small_cnn

N = 7
SEED = 3


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    d = datasets.shapes(N, size=32, seed=11)
    for i, img in enumerate(d.images):
        image.save(img, root / f"img{i}.png")
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def model():
    """The network and params that ``--model small-cnn --weights random --seed 3`` builds."""
    net = small_cnn(num_classes=4)
    params = net.init(jax.random.key(SEED), jnp.zeros((1, 32, 32, 3)))
    return net, params


def _args(folder, out, *extra):
    return ["attribute", str(folder), "--model", "small-cnn", "--weights", "random", "--seed", str(SEED),
            "--out", str(out), *extra]


def _rows(out):
    with open(out / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def _load_all(folder):
    return np.concatenate([image.load(folder / f"img{i}.png") for i in range(N)])


def test_outputs_equal_library_and_csv(folder, model, tmp_path):
    net, params = model
    out = tmp_path / "out"
    assert cli.main(_args(folder, out, "--method", "saliency", "--batch-size", "3")) == 0
    x = _load_all(folder)
    logits = np.asarray(net.apply(params, x))
    top1 = logits.argmax(-1)
    want = np.asarray(attribution.saliency(net, params, x, top1))
    rows = _rows(out)
    assert [r["file"] for r in rows] == [f"img{i}.png" for i in range(N)]
    probs = np.asarray(jax.nn.softmax(logits, -1))
    for i, r in enumerate(rows):
        got = np.load(out / f"img{i}.png.npy")
        assert got.shape == (32, 32, 3) and got.dtype == np.float32
        np.testing.assert_allclose(got, want[i], rtol=1e-5, atol=1e-6 * np.abs(want[i]).max())
        assert int(r["predicted"]) == top1[i] and r["predicted_name"] == datasets.CLASSES[top1[i]]
        assert float(r["predicted_prob"]) == pytest.approx(probs[i, top1[i]], abs=1e-5)
        assert r["target"] == r["predicted"] and r["target_prob"] == r["predicted_prob"]
        png = image.load(out / f"img{i}.png.png")
        # 32 px inputs are shown enlarged; the scale's title wraps under it when the values leave it no room
        assert png.shape[2:] == (128, 3) and png.shape[1] in (128 + viz.COLORBAR_HEIGHT, 140 + viz.COLORBAR_HEIGHT)
        # the picture is this image's own map (viz.heat/overlays, pinned by the next test) over this image,
        # labelled with the target class and its probability, its colour scale under it
        heat = viz.heat("saliency", want[i:i + 1])
        drawn = viz.overlays(x[i:i + 1], heat, size=128)[0]
        text = f"{datasets.CLASSES[top1[i]]} {100 * probs[i, top1[i]]:.0f}%"
        np.testing.assert_allclose(png[0, :128], viz.corner_mark(viz.label(drawn, text)), atol=1 / 255 + 1e-6)
        assert np.abs(png[0, :128] - drawn).max() > 0.5
        # the scale's ends: the map's smallest value and its 99th percentile, as the overlay draws them
        up = viz.figures._upscale(heat[0], 128, smooth=True)
        lo, hi = float(up.min()), float(np.percentile(up, 99.0))
        assert hi > lo >= 0
        np.testing.assert_allclose(png[0, 128:], viz.colorbar(128, lo, hi, title="max |grad|"), atol=1 / 255 + 1e-6)
        if i == 0:  # --no-label: the bare overlay
            bare = tmp_path / "bare"
            assert cli.main(_args(folder, bare, "--method", "saliency", "--no-label")) == 0
            np.testing.assert_allclose(image.load(bare / "img0.png.png")[0], viz.corner_mark(drawn),
                                       atol=1 / 255 + 1e-6)
    settings = json.loads((out / "attribute.json").read_text())
    assert settings["method"] == "saliency" and settings["model"] == "small-cnn" and settings["size"] == 32
    assert not list(out.glob(".*.tmp"))



def test_heatmap_pictures_show_the_map_in_jet_over_the_image():
    """viz.heat (method output -> display map) and viz.overlays (what attribute and demo draw), by value."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)
    np.testing.assert_array_equal(viz.heat("saliency", a), np.abs(a).max(-1))  # Simonyan et al.: max |grad| over RGB
    np.testing.assert_array_equal(viz.heat("guided_backprop", a), np.abs(a).sum(-1))
    np.testing.assert_array_equal(viz.heat("occlusion", a), np.maximum(a.mean(-1), 0))
    np.testing.assert_array_equal(viz.heat("grad_cam", a[..., 0]), np.maximum(a[..., 0], 0))
    img = rng.random((1, 8, 8, 3), dtype=np.float32)
    big = np.repeat(np.repeat(img[0], 4, 0), 4, 1)  # the image is enlarged without smoothing
    m = np.zeros((1, 8, 8), np.float32)
    m[0, :4, :4] = 1.0  # a hot top-left quadrant
    out = viz.overlays(img, m, size=32)[0]
    np.testing.assert_allclose(out[20:, 20:], big[20:, 20:], atol=1e-6)  # where the map is 0: the image itself
    red = viz.colormap(np.ones(()), "jet")
    np.testing.assert_allclose(red, [0.5, 0, 0], atol=1e-6)  # jet's top colour, dark red
    np.testing.assert_allclose(out[:12, :12], 0.4 * big[:12, :12] + 0.6 * red, atol=1e-5)  # 60% heat where it is 1
    edge = out[:, 16]  # the bilinear edge of the quadrant: part heat, part image
    assert 0 < np.abs(edge[:12] - big[:12, 16]).min() and np.abs(edge[:12] - big[:12, 16]).max() < 0.6

def test_layer_method_target_by_name_and_options(folder, model, tmp_path, monkeypatch):
    net, params = model
    out = tmp_path / "gc"
    assert cli.main(_args(folder, out, "--method", "grad_cam", "--target", "triangle")) == 0
    x = _load_all(folder)
    want = np.asarray(attribution.grad_cam(net, params, x, 2, upsample=True))
    for i, r in enumerate(_rows(out)):
        got = np.load(out / f"img{i}.png.npy")
        assert got.shape == (32, 32)
        np.testing.assert_allclose(got, want[i], rtol=1e-5, atol=1e-6 * max(np.abs(want[i]).max(), 1e-12))
        assert r["target"] == "2" and r["target_name"] == "triangle"
    out2 = tmp_path / "occ"
    opts = ["--method", "occlusion", "--target", "1", "--option", "window=8", "--option", "stride=4",
            "--option", "baseline=0.5"]
    # occlusion's window groups are sized for the whole folder (one compiled call serves every batch)
    asked = []
    real_auto = attribution.occlusion_auto_groups
    monkeypatch.setattr(attribution, "occlusion_auto_groups", lambda *a, **k: asked.append(k) or real_auto(*a, **k))
    assert cli.main(_args(folder, out2, *opts)) == 0
    assert [(k["images"], k["window"], k["stride"]) for k in asked] == [(len(x), 8, 4)]  # every image
    want = np.asarray(attribution.occlusion(net, params, x, 1, window=8, stride=4, baseline=0.5))
    np.testing.assert_allclose(np.load(out2 / "img4.png.npy"), want[4], rtol=1e-5, atol=1e-6)
    # without options, small-cnn's occlusion uses the demo's (a 6 px window at stride 2 on its 32 px pictures,
    # not the library's 16 px window for 224 px inputs)
    assert cli.main(_args(folder, tmp_path / "occ_default", "--method", "occlusion", "--target", "1")) == 0
    want = np.asarray(attribution.occlusion(net, params, x[:1], 1, window=6, stride=2, baseline=0.5))
    np.testing.assert_allclose(np.load(tmp_path / "occ_default" / "img0.png.npy"), want[0], rtol=1e-5, atol=1e-6)
    assert attribute_cmd.parse_options(["a=1", "b=(2, 3)", "c=riemann_left", "d=0.5"]) == {
        "a": 1, "b": (2, 3), "c": "riemann_left", "d": 0.5}


def test_interrupted_run_resumes_without_redoing(folder, tmp_path, monkeypatch, capsys):
    full = tmp_path / "full"
    part = tmp_path / "part"
    opts = ["--method", "occlusion", "--option", "window=8", "--option", "stride=4", "--batch-size", "3"]
    assert cli.main(_args(folder, full, *opts)) == 0

    real_write = attribute_cmd._write_outputs
    written = []

    def interrupt_in_second_batch(out, name, *a, **k):
        if len(written) == 3:
            raise KeyboardInterrupt
        written.append(name)
        return real_write(out, name, *a, **k)

    monkeypatch.setattr(attribute_cmd, "_write_outputs", interrupt_in_second_batch)
    assert cli.main(_args(folder, part, *opts)) == 130
    assert "run the same command again to resume" in capsys.readouterr().err
    assert [r["file"] for r in _rows(part)] == ["img0.png", "img1.png", "img2.png"]

    # a torn last line (killed mid-write) is dropped and that image redone
    with open(part / "summary.csv", "a") as f:
        f.write("img3.png,1,squ")
    loaded = []
    real_load = image.load

    def counting_load(path, *a, **k):
        loaded.append(os.path.basename(path))
        return real_load(path, *a, **k)

    monkeypatch.setattr(image, "load", counting_load)
    written.clear()
    monkeypatch.setattr(attribute_cmd, "_write_outputs", lambda out, name, *a, **k: (written.append(name), real_write(out, name, *a, **k)))
    assert cli.main(_args(folder, part, *opts)) == 0
    redo = [f"img{i}.png" for i in range(3, N)]
    assert loaded == redo and written == redo  # finished images neither decoded nor recomputed
    assert _rows(part) == _rows(full)
    for i in range(N):
        np.testing.assert_array_equal(np.load(part / f"img{i}.png.npy"), np.load(full / f"img{i}.png.npy"))
        assert (part / f"img{i}.png.png").read_bytes() == (full / f"img{i}.png.png").read_bytes()

    # a third run has nothing to do
    loaded.clear()
    assert cli.main(_args(folder, part, *opts)) == 0
    assert loaded == [] and "already done" in capsys.readouterr().out


def test_an_image_modified_after_its_map_is_redone(folder, model, tmp_path, monkeypatch, capsys):
    net, params = model
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"img{i}.png").write_bytes((folder / f"img{i}.png").read_bytes())
    out = tmp_path / "out"
    assert cli.main(_args(src, out, "--method", "saliency")) == 0
    before = {i: np.load(out / f"img{i}.png.npy") for i in range(3)}
    # img1 is replaced by another picture, its time stamp after that of its map
    (src / "img1.png").write_bytes((folder / "img5.png").read_bytes())
    later = (out / "img1.png.npy").stat().st_mtime_ns + 10**6
    os.utime(src / "img1.png", ns=(later, later))
    loaded = []
    real_load = image.load
    monkeypatch.setattr(image, "load", lambda path, *a, **k: (loaded.append(os.path.basename(path)), real_load(path, *a, **k))[1])
    capsys.readouterr()
    assert cli.main(_args(src, out, "--method", "saliency")) == 0
    assert loaded == ["img1.png"]  # only the modified image
    assert "(2 already done, 1 modified since their maps)" in capsys.readouterr().err
    x = real_load(folder / "img5.png")
    logits = np.asarray(net.apply(params, x))
    want = np.asarray(attribution.saliency(net, params, x, logits.argmax(-1)))[0]
    got = np.load(out / "img1.png.npy")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    assert np.abs(got - before[1]).max() > 1e-3  # a different map, not the old one
    for i in (0, 2):
        np.testing.assert_array_equal(np.load(out / f"img{i}.png.npy"), before[i])
    rows = _rows(out)
    assert [r["file"] for r in rows] == ["img0.png", "img2.png", "img1.png"]  # one row each, img1's the new one
    assert int(rows[2]["predicted"]) == logits.argmax()
    loaded.clear()
    assert cli.main(_args(src, out, "--method", "saliency")) == 0
    assert loaded == [] and "already done" in capsys.readouterr().out


def test_errors(folder, tmp_path, capsys):
    out = tmp_path / "e"
    assert cli.main(_args(folder, out, "--method", "saliency")) == 0
    capsys.readouterr()
    assert cli.main(_args(folder, out, "--method", "guided_backprop")) == 2
    err = capsys.readouterr().err
    assert "--out: " in err and "holds results of different settings: method='saliency' (now 'guided_backprop')" in err
    # an option at its default is the same setting; another value is named by option
    assert cli.main(_args(folder, out, "--method", "saliency", "--option", "abs=True")) == 0
    assert "already done" in capsys.readouterr().out
    assert cli.main(_args(folder, out, "--method", "saliency", "--option", "abs=False")) == 2
    assert capsys.readouterr().err.strip().endswith("holds results of different settings: option abs='True' (now "
                                                    "'False'); use another --out or delete it")
    ig = ("--method", "integrated_gradients", "--option", "steps=4")  # its results do not depend on batch_size
    assert cli.main(_args(folder, tmp_path / "ig", *ig, "--option", "batch_size=2")) == 0
    capsys.readouterr()
    assert cli.main(_args(folder, tmp_path / "ig", *ig, "--option", "batch_size=4")) == 0
    assert "already done" in capsys.readouterr().out
    cases = [
        (_args(folder, tmp_path / "a", "--target", "7"), "--target: expected a class index in [0, 4), got 7"),
        (_args(folder, tmp_path / "b", "--target", "dog"), "--target: expected 'top1', a class index in [0, 4) or a class name, got 'dog'"),
        (_args(folder, tmp_path / "c", "--option", "window"), "--option: expected KEY=VALUE, got 'window'"),
        (_args(folder, tmp_path / "d", "--size", "2"), "--size: expected at least 4 for small-cnn, got 2"),
        (_args(tmp_path / "nope", tmp_path / "f"), "IMAGES_DIR: expected a folder of images"),
        (_args(folder, tmp_path / "g", "--batch-size", "0"), "--batch-size: expected a positive int, got 0"),
        (_args(folder, tmp_path / "h", "--option", "bogus=1"), "--option: saliency has no option 'bogus'"),
    ]
    for argv, message in cases:
        assert cli.main(argv) == 2, message
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # argparse's own refusal: one line too (no usage block), exit 2
        cli.main(_args(folder, tmp_path / "i") + ["--seed", "-1"])
    assert e.value.code == 2 and capsys.readouterr().err == (
        "jaxviz attribute: error: argument --seed: expected a non-negative int, got '-1' (see jaxviz attribute "
        "--help)\n")
    one = next(p for p in sorted(folder.rglob("*")) if p.is_file())
    assert cli.main(_args(one, tmp_path / "j")) == 2
    assert capsys.readouterr().err.strip() == (f"jaxviz attribute: error: IMAGES_DIR: expected a folder of images, "
                                               f"got {str(one)!r}, a file (give its folder)")


def test_a_size_the_device_cannot_hold_is_refused_before_decoding(folder, model, tmp_path, capsys, monkeypatch):
    net, params = model
    # the floor: input plus every conv and dense output, float32 (widths 16, 32, 64 at full, 1/2, 1/4 size; 4 logits)
    s, b = 48, 5
    want = 4 * b * (s * s * 3 + s * s * 16 + (s // 2) ** 2 * 32 + (s // 4) ** 2 * 64 + 4)
    assert attribute_cmd.memory_floor(net, params, s, b) == want
    assert attribute_cmd.memory_available() > 2**28  # this machine's RAM (more than 256 MiB, surely)
    out = tmp_path / "m"
    with monkeypatch.context() as m:
        m.setattr(attribute_cmd, "memory_available", lambda devices=None: want - 1)
        m.setattr(image, "load", lambda *a, **k: pytest.fail("an image was decoded"))
        assert cli.main(_args(folder, out, "--size", str(s), "--batch-size", str(b))) == 2
    assert capsys.readouterr().err.strip() == (
        f"jaxviz attribute: error: --size: 48 px in batches of 5 per device needs at least {want / 2**30:.1f} GiB, "
        f"more than the {(want - 1) / 2**30:.1f} GiB free on a device here; use a smaller --size or --batch-size")
    assert not list(out.glob("*.npy"))
    monkeypatch.setattr(attribute_cmd, "memory_available", lambda devices=None: want)  # exactly enough: runs
    assert cli.main(_args(folder, out, "--size", str(s), "--batch-size", str(b), "--no-progress")) == 0


class _Device:
    def __init__(self, platform, stats):
        self.platform, self._stats = platform, stats

    def memory_stats(self):
        return self._stats


def test_memory_available_is_the_least_free_of_the_devices():
    gib = 2**30
    gpus = [_Device("gpu", {"bytes_limit": 16 * gib, "bytes_in_use": 2 * gib}),
            _Device("gpu", {"bytes_limit": 16 * gib, "bytes_in_use": 5 * gib})]
    assert attribute_cmd.memory_available(gpus) == 11 * gib  # the fullest device decides, less what it holds
    assert attribute_cmd.memory_available(gpus[:1]) == 14 * gib
    assert attribute_cmd.memory_available([_Device("gpu", {"bytes_limit": 8 * gib})]) == 8 * gib
    # a GPU that reports no limit: unknown, not the host's RAM
    assert attribute_cmd.memory_available([_Device("gpu", None)]) is None
    assert attribute_cmd.memory_available([_Device("gpu", {})]) is None
    # the CPU: the host memory available now, at most its RAM
    host = attribute_cmd.memory_available([_Device("cpu", None)])
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert 2**28 < host <= ram
    assert 2**28 < attribute_cmd.memory_available() <= ram  # this process's devices: the CPU here


def test_a_failed_run_leaves_no_settings_behind(folder, tmp_path, capsys):
    out = tmp_path / "o"
    # an option the method does not have: one line naming it, before any work
    assert cli.main(_args(folder, out, "--method", "saliency", "--option", "bogus=1")) == 2
    err = capsys.readouterr().err.strip()
    assert err == "jaxviz attribute: error: --option: saliency has no option 'bogus'; expected some of abs"
    # a value the method refuses fails in the method; nothing was recorded, so the corrected command runs
    assert cli.main(_args(folder, out, "--method", "occlusion", "--option", "window=0")) == 2
    assert not (out / "attribute.json").exists() and not list(out.glob("*.npy"))
    # checked by tracing the method before any image is read; the message names the option as it was given
    assert capsys.readouterr().err.strip() == "jaxviz attribute: error: --option window: expected a positive int, got 0"
    assert cli.main(_args(folder, out, "--method", "occlusion", "--option", "window=8")) == 0
    assert len(_rows(out)) == N
    # weights of another model
    other = tmp_path / "other.safetensors"
    from jaxviz import weights

    weights.save(small_cnn(num_classes=4, widths=(4, 4, 4)).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))), other)
    capsys.readouterr()
    argv = _args(folder, tmp_path / "w", "--method", "saliency")
    argv[argv.index("random")] = str(other)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"--weights: {str(other)!r} does not hold the small-cnn's parameters" in err and len(err.splitlines()) == 1


def test_outputs_inside_the_folder_skipped_files_and_empty_folders(folder, tmp_path, capsys):
    import shutil

    for sub, extra in (("attr", ["--recursive"]), ("", [])):  # OUT_DIR inside IMAGES_DIR, or the same folder
        root = tmp_path / f"pics{sub}"
        shutil.copytree(folder, root)
        (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
        out = root / sub
        assert cli.main(_args(root, out, "--method", "saliency", "--batch-size", "4", *extra)) == 0
        text = capsys.readouterr()
        assert f"wrote {N} attributions" in text.out and "skipped 1 unreadable file" in text.out
        assert "(per image NAME.npy, the map, and NAME.png, the overlay: e.g. " in text.out
        example = text.out.split("the overlay: e.g. ")[1].split(")")[0]
        assert os.path.exists(example)  # a written one, not the skipped file's
        assert "random weights" in text.err
        assert f"skipped {root / 'broken.png'}: " in text.err and "Warning" not in text.err
        # a rerun finds nothing new: its own heatmaps are not images to attribute
        assert cli.main(_args(root, out, "--method", "saliency", "--batch-size", "4", *extra)) == 0
        assert "wrote 0 attributions" in capsys.readouterr().out
        assert sorted(p.name for p in out.rglob("*.npy")) == [f"img{i}.png.npy" for i in range(N)]
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    assert cli.main(_args(empty, tmp_path / "e")) == 2
    assert capsys.readouterr().err.strip() == (f"jaxviz attribute: error: IMAGES_DIR: no images in {str(empty)!r} "
                                               "(it has sub-folders: add --recursive)")
    assert not (tmp_path / "e").exists()


_SUBPROCESS = """
import sys
from jaxviz import cli, parallel
import jax
assert len(jax.devices()) == 4
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("opts", [
    ["--method", "occlusion", "--option", "window=8", "--option", "stride=4", "--batch-size", "5"],
    ["--method", "smoothgrad", "--option", "samples=4", "--batch-size", "5"],  # random: one key per image
], ids=["occlusion", "smoothgrad"])
def test_sharded_over_four_devices_equals_one(folder, tmp_path, opts):
    one, four = tmp_path / "one", tmp_path / "four"
    assert cli.main(_args(folder, one, *opts)) == 0
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _SUBPROCESS, *_args(folder, four, *opts)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "over 4 devices" in proc.stderr
    a, b = _rows(one), _rows(four)
    assert [r["predicted"] for r in a] == [r["predicted"] for r in b]
    for ra, rb in zip(a, b):
        assert float(ra["predicted_prob"]) == pytest.approx(float(rb["predicted_prob"]), abs=1e-5)
    for i in range(N):
        x, y = np.load(one / f"img{i}.png.npy"), np.load(four / f"img{i}.png.npy")
        np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-5 * np.abs(x).max())


def _free_ompi_port():
    """A free loopback port in the range JAX's Open MPI detection derives from the job id, and that job id."""
    import socket

    for port in range(61440 + os.getpid() % 2000, 65536):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port, (port - 61440) * 4096
    pytest.fail("no free port in 61440-65535")


def test_distributed_processes_split_the_folder_and_equal_one_process(folder, tmp_path):
    """Two processes of two host devices each, joined as ``mpirun -n 2`` would (Open MPI's variables, detected by
    jax.distributed on loopback): each does its share of the images, summary.csv ends whole."""
    one, two = tmp_path / "one", tmp_path / "two"
    opts = ["--method", "smoothgrad", "--option", "samples=4", "--batch-size", "3", "--no-progress"]
    assert cli.main(_args(folder, one, *opts)) == 0
    port, job = _free_ompi_port()
    procs = []
    for rank in (0, 1):
        env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2",
                   OMPI_MCA_orte_hnp_uri=f"{job}.0;tcp://127.0.0.1:{port}", OMPI_COMM_WORLD_SIZE="2",
                   OMPI_COMM_WORLD_RANK=str(rank), OMPI_COMM_WORLD_LOCAL_RANK=str(rank))
        procs.append(subprocess.Popen([sys.executable, "-m", "jaxviz", *_args(folder, two, *opts), "--distributed"],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert "over 2 devices (process 1 of 2: 4 of the 7 images)" in outs[0][1]
    assert "over 2 devices (process 2 of 2: 3 of the 7 images)" in outs[1][1]
    assert not list(two.glob("summary.process*.csv"))  # the second process's rows were merged into summary.csv
    a, b = _rows(one), _rows(two)
    assert [r["file"] for r in b] == [f"img{i}.png" for i in range(N)]
    assert [r["predicted"] for r in a] == [r["predicted"] for r in b]
    for i in range(N):  # per-image keys: the same noise whichever process and device drew it
        x, y = np.load(one / f"img{i}.png.npy"), np.load(two / f"img{i}.png.npy")
        np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-5 * np.abs(x).max())
    assert json.loads((two / "attribute.json").read_text()) == json.loads((one / "attribute.json").read_text())


def test_rows_a_distributed_run_left_in_part_files_count_as_done(folder, tmp_path, capsys):
    out = tmp_path / "o"
    assert cli.main(_args(folder, out, "--no-progress")) == 0
    rows = _rows(out)
    # as if the run was interrupted before the first process merged the second's rows (part files have no header)
    attribute_cmd._rewrite_csv(out / "summary.csv", rows[:3])
    (out / "summary.process1.csv").write_text("".join(",".join(r[k] for k in attribute_cmd.CSV_FIELDS) + "\n"
                                                      for r in rows[3:]))
    (out / "img6.png.npy").unlink()  # a row whose map is missing is redone
    capsys.readouterr()
    assert cli.main(_args(folder, out, "--no-progress")) == 0
    assert "saliency on 1 image (6 already done)" in capsys.readouterr().err
    assert _rows(out) == rows and not (out / "summary.process1.csv").exists()


def test_distributed_without_a_cluster_is_one_line(folder, tmp_path, capsys):
    code = subprocess.run([sys.executable, "-m", "jaxviz", *_args(folder, tmp_path / "d"), "--distributed"],
                          env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True, timeout=120)
    assert code.returncode == 2 and code.stderr.strip() == (
        "jaxviz attribute: error: --distributed: could not join a multi-process run: coordinator_address should be "
        "defined; start the command on every host under SLURM (srun), Open MPI (mpirun), Cloud TPU or Kubernetes")
    assert not (tmp_path / "d").exists()


def test_smoothgrad_maps_depend_on_neither_batch_size_nor_batch_position(folder, model, tmp_path):
    net, params = model
    opts = ["--method", "smoothgrad", "--option", "samples=4", "--option", "key=9"]
    assert cli.main(_args(folder, tmp_path / "b2", *opts, "--batch-size", "2")) == 0
    assert cli.main(_args(folder, tmp_path / "b7", *opts, "--batch-size", "7")) == 0
    x = _load_all(folder)
    names = [f"img{i}.png" for i in range(N)]
    # image i's noise comes from fold_in(key(9), crc32("imgI.png")), wherever it sits
    keys = jax.vmap(lambda c: jax.random.fold_in(jax.random.key(9), c))(
        jnp.asarray([zlib.crc32(n.encode()) for n in names], jnp.uint32))
    top1 = np.asarray(net.apply(params, x)).argmax(-1)
    want = np.asarray(attribution.smoothgrad(net, params, x, top1, samples=4, key=keys))
    for i in range(N):
        a, b = np.load(tmp_path / "b2" / f"img{i}.png.npy"), np.load(tmp_path / "b7" / f"img{i}.png.npy")
        np.testing.assert_allclose(a, want[i], rtol=1e-5, atol=1e-6 * np.abs(want[i]).max())
        np.testing.assert_allclose(b, want[i], rtol=1e-5, atol=1e-6 * np.abs(want[i]).max())
    # (one key for the whole batch gave images 1-6 other noise at --batch-size 7 than at 2)
    assert np.abs(np.asarray(attribution.smoothgrad(net, params, x, top1, samples=4, key=9))[3] - want[3]).max() > \
        1e-3 * np.abs(want[3]).max()


def test_rerun_finds_its_programs_in_the_compile_cache(folder, model, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    env.update(JAXVIZ_CACHE=str(tmp_path / "cache"), JAXVIZ_COMPILE_CACHE="1",
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")  # cache even this tiny model's programs

    def cli_run(out, env=env):
        cmd = [sys.executable, "-m", "jaxviz", *_args(folder, tmp_path / out, "--method", "saliency")]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr

    cli_run("a")
    xla = tmp_path / "cache" / "xla"
    first = {p.name: p.stat().st_size for p in xla.iterdir()}
    assert any(n.endswith("-cache") for n in first)
    # compiled programs, not weights baked in as constants (a closed-over VGG19 writes a 564 MB entry)
    weight_bytes = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(model[1]))
    assert max(first.values()) < weight_bytes
    cli_run("b")  # the same shapes: every program comes from the cache, nothing new is written
    assert {p.name for p in xla.iterdir()} == set(first)
    np.testing.assert_array_equal(np.load(tmp_path / "a" / "img0.png.npy"), np.load(tmp_path / "b" / "img0.png.npy"))
    cli_run("c", env=dict(env, JAXVIZ_COMPILE_CACHE="0", JAXVIZ_CACHE=str(tmp_path / "off")))
    assert not (tmp_path / "off" / "xla").exists()


def test_every_compiling_command_uses_the_compile_cache(tmp_path):
    """Not only attribute: a second featmaps compiles nothing (its programs come from the cache), entries hold
    programs, not the VGG's weights, and info (which compiles nothing) leaves no cache behind."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    env.update(JAXVIZ_CACHE=str(tmp_path / "cache"), JAXVIZ_COMPILE_CACHE="1", JAXVIZ_OFFLINE="1",
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    pic = tmp_path / "p.png"
    image.save(datasets.shapes(1, size=32, seed=0).images[0], pic)

    def jaxviz(*argv):
        done = subprocess.run([sys.executable, "-m", "jaxviz", *argv], env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr

    jaxviz("info")
    assert not (tmp_path / "cache" / "xla").exists()
    argv = ["featmaps", str(pic), "--layer", "relu2_1", "--size", "32", "--arch", "vgg16", "--weights", "random"]
    jaxviz(*argv, "--out", str(tmp_path / "a.png"))
    xla = tmp_path / "cache" / "xla"
    first = {p.name: p.stat().st_size for p in xla.iterdir()}
    assert any(n.startswith("jit__apply") and n.endswith("-cache") for n in first)
    assert max(first.values()) < 4 * 64 * 64 * 9  # smaller than conv1_2's kernel alone: no weights inside
    jaxviz(*argv, "--out", str(tmp_path / "b.png"))
    assert {p.name for p in xla.iterdir()} == set(first)
    np.testing.assert_array_equal(image.load(tmp_path / "a.png"), image.load(tmp_path / "b.png"))


def test_no_progress_reaches_the_small_cnn_training(monkeypatch):
    from types import SimpleNamespace

    from jaxviz import train

    calls = []
    monkeypatch.setattr(train, "small_cnn_run",
                        lambda config, **kw: calls.append(kw) or SimpleNamespace(net="net", params="params"))
    for flag, want in ((True, False), (False, True)):
        got = attribute_cmd._model(attribute_cmd.argparse.Namespace(model="small-cnn", weights="pretrained", seed=0,
                                                                    no_progress=flag), 32)
        assert got[:2] == ("net", "params") and calls.pop() == {"progress": want}


def test_an_out_that_cannot_be_written_is_one_line_naming_it(folder, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = blocker / "maps"
    assert cli.main(_args(folder, out, "--no-progress")) == 2
    assert capsys.readouterr().err.strip() == (f"jaxviz attribute: error: --out: cannot write in {str(out)!r} "
                                               "(Not a directory)")


def test_guided_backprop_is_drawn_as_the_signed_rgb_gradient_by_default(folder, tmp_path):
    """Springenberg et al.'s and Zeiler & Fergus' pictures (pytorch-grad-cam's deprocess_image): the map
    standardised, x0.1, centred on grey; --picture heat gives the heat overlay instead."""
    out = tmp_path / "out"
    assert cli.main(_args(folder, out, "--method", "guided_backprop", "--no-label", "--no-progress")) == 0
    attr = np.load(out / "img0.png.npy")
    pic = image.load(out / "img0.png.png")[0]
    want = np.clip((attr - attr.mean()) / (attr.std() + 1e-5) * 0.1 + 0.5, 0, 1)
    want = np.repeat(np.repeat(want, 4, 0), 4, 1)  # the 32 px map enlarged to 128 px
    assert pic.shape == (128, 128, 3)
    np.testing.assert_allclose(pic, viz.corner_mark(want), atol=0.6 / 255)  # random weights: said in the corner
    assert json.loads((out / "attribute.json").read_text())["picture"] == "gradient"
    heat = tmp_path / "heat"
    assert cli.main(_args(folder, heat, "--method", "guided_backprop", "--no-label", "--no-progress",
                          "--picture", "heat")) == 0
    drawn = image.load(heat / "img0.png.png")[0]
    x = image.load(folder / "img0.png")
    np.testing.assert_allclose(drawn, viz.corner_mark(viz.overlays(x, viz.heat("guided_backprop", attr[None]),
                                                                   size=128)[0]), atol=1.5 / 255)


def test_several_methods_in_one_pass(folder, tmp_path, capsys):
    """--method a,b,c: one pass, each method's maps in OUT/METHOD/ equal to a run of that method alone, and per
    image a figure of the input and one column per method; a rerun finds it all done."""
    multi = tmp_path / "multi"
    code = cli.main(_args(folder, multi, "--method", "saliency,grad_cam,occlusion", "--no-progress"))
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "saliency, grad_cam, occlusion on 7 images" in err
    assert json.loads((multi / "attribute.json").read_text())["method"] == ["saliency", "grad_cam", "occlusion"]
    for m in ("saliency", "grad_cam", "occlusion"):
        alone = tmp_path / m
        assert cli.main(_args(folder, alone, "--method", m, "--no-progress")) == 0
        for i in range(N):
            np.testing.assert_allclose(np.load(multi / m / f"img{i}.png.npy"), np.load(alone / f"img{i}.png.npy"),
                                       rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(image.load(multi / m / f"img{i}.png.png"), image.load(alone / f"img{i}.png.png"),
                                       atol=2 / 255)
    capsys.readouterr()
    fig = image.load(multi / "img0.png.png")[0]
    assert fig.shape == (28 + 4 + 128 + 4, 4 + 4 * (128 + 4), 3)  # titles band, then the input and 3 columns
    assert sorted(r["file"] for r in _rows(multi)) == [f"img{i}.png" for i in range(N)]
    assert cli.main(_args(folder, multi, "--method", "saliency,grad_cam,occlusion", "--no-progress")) == 0
    assert "all 7 images already done" in capsys.readouterr().out
    # an option no chosen method takes is one line; one that some take goes to those
    assert cli.main(_args(folder, tmp_path / "bad", "--method", "saliency,grad_cam", "--option", "window=4")) == 2
    assert capsys.readouterr().err.strip() == (
        "jaxviz attribute: error: --option: none of saliency, grad_cam has an option 'window'")
    from jaxviz.attribution import METHODS
    from jaxviz.commands.attribute import method_list

    assert method_list("all") == tuple(sorted(METHODS)) and method_list("cam, saliency,cam") == ("cam", "saliency")


def test_resize_modes_crop_pad_stretch(model, tmp_path, capsys):
    """A 60x80 photo at 32 px: crop cuts its sides (and the label says so), pad letterboxes it with the ImageNet
    mean and writes the map of the picture's own pixels (24x32), stretch squeezes it; each map is the library's
    on the square the model saw."""
    from jaxviz.commands.attribute import _cut

    net, params = model
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(5)
    image.save(rng.uniform(size=(60, 80, 3)).astype(np.float32), photos / "wide.png")
    for mode in ("crop", "pad", "stretch"):
        out = tmp_path / mode
        assert cli.main(_args(photos, out, "--method", "saliency", "--resize", mode, "--no-progress")) == 0
        got = np.load(out / "wide.png.npy")
        if mode == "crop":
            square = image.center_crop(image.load(photos / "wide.png", 32, resize="shortest"), 32)
            want = np.asarray(attribution.saliency(net, params, square, net.apply(params, square).argmax(-1)))[0]
        elif mode == "stretch":
            square = image.load(photos / "wide.png", (32, 32))
            want = np.asarray(attribution.saliency(net, params, square, net.apply(params, square).argmax(-1)))[0]
        else:
            small = image.load(photos / "wide.png", 32)  # longest side to 32: 24 x 32
            assert small.shape == (1, 24, 32, 3)
            square = np.empty((1, 32, 32, 3), np.float32)
            square[...] = image.PAD_COLOUR
            square[:, 4:28] = small
            full = np.asarray(attribution.saliency(net, params, square, net.apply(params, square).argmax(-1)))[0]
            want = full[4:28]
            png = image.load(out / "wide.png.png")[0]  # drawn on the whole picture: 96 x 128, the scale under it
            assert got.shape == (24, 32, 3) and png.shape[1] == 128 and png.shape[0] - 96 in (24, 36)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        assert json.loads((out / "attribute.json").read_text())["resize"] == mode
    capsys.readouterr()
    assert (_cut("crop", (60, 80)), _cut("crop", (80, 60)), _cut("crop", (50, 50)), _cut("pad", (60, 80))) == (
        " (sides cut)", " (top, bottom cut)", "", "")


def test_full_grad_writes_input_resolution_maps_equal_to_the_library(folder, model, tmp_path):
    from jaxviz import attribution

    net, params = model
    out = tmp_path / "fg"
    assert cli.main(_args(folder, out, "--method", "full_grad", "--target", "1", "--no-progress")) == 0
    x = _load_all(folder)
    want = np.asarray(attribution.full_grad(net, params, x, 1))
    for i in range(N):
        got = np.load(out / f"img{i}.png.npy")
        assert got.shape == (32, 32)
        np.testing.assert_allclose(got, want[i], rtol=1e-4, atol=1e-5)
        assert image.load(out / f"img{i}.png.png").shape[-1] == 3


def test_reference_methods_through_the_cli(folder, model, tmp_path):
    """RISE, feature ablation, KernelSHAP, LIME and GradientSHAP in one pass; the random ones get one key per image
    (from its file name), so a lone image gets the same maps."""
    from jaxviz import attribution

    net, params = model
    out = tmp_path / "rf"
    opts = ["--method", "rise,feature_ablation,kernel_shap,lime,gradient_shap", "--target", "2", "--option", "masks=12",
            "--option", "cells=4", "--option", "segments=8", "--option", "samples=24", "--no-progress",
            "--batch-size", "3"]
    assert cli.main(_args(folder, out, *opts)) == 0
    x = _load_all(folder)
    want = np.asarray(attribution.feature_ablation(net, params, x, 2, segments=8))
    for i in range(N):
        np.testing.assert_allclose(np.load(out / "feature_ablation" / f"img{i}.png.npy"), want[i], rtol=1e-4,
                                   atol=1e-5)
        assert np.load(out / "rise" / f"img{i}.png.npy").shape == (32, 32)
    # the same image alone in a folder: the same RISE map (its key follows its name, not its batch position)
    solo = tmp_path / "solo"
    solo.mkdir()
    (solo / "img3.png").write_bytes((folder / "img3.png").read_bytes())
    assert cli.main(_args(solo, tmp_path / "solo_out", *opts)) == 0
    for m in ("rise", "kernel_shap", "lime", "gradient_shap"):  # the random ones
        got = np.load(tmp_path / "solo_out" / m / "img3.png.npy")
        np.testing.assert_allclose(got, np.load(out / m / "img3.png.npy"), rtol=1e-4, atol=1e-5)
        assert np.abs(got).max() > 0, m


def test_lrp_through_the_cli_with_a_named_composite(folder, model, tmp_path):
    from jaxviz import attribution

    net, params = model
    out = tmp_path / "lrp"
    assert cli.main(_args(folder, out, "--method", "lrp", "--target", "1", "--option", "composite=epsilon_plus_flat",
                          "--no-progress")) == 0
    x = _load_all(folder)
    want = np.asarray(attribution.lrp(net, params, x, 1, composite="epsilon_plus_flat"))
    assert np.abs(want).max() > 0
    for i in range(N):
        np.testing.assert_allclose(np.load(out / f"img{i}.png.npy"), want[i], rtol=1e-4, atol=1e-6 * np.abs(want).max())
    assert cli.main(_args(folder, tmp_path / "bad", "--method", "lrp", "--option", "composite=gamma",
                          "--no-progress")) == 2


def test_deeplift_through_the_cli(folder, model, tmp_path):
    from jaxviz import attribution

    net, params = model
    out = tmp_path / "dl"
    assert cli.main(_args(folder, out, "--method", "deeplift,deeplift_shap", "--target", "1", "--option",
                          "baselines=0.5", "--no-progress", "--batch-size", "2")) == 0
    x = _load_all(folder)
    want = np.asarray(attribution.deeplift(net, params, x, 1, baselines=0.5))
    assert np.abs(want).max() > 0
    for m in ("deeplift", "deeplift_shap"):  # one baseline: DeepLIFT-SHAP is DeepLIFT
        for i in range(N):
            np.testing.assert_allclose(np.load(out / m / f"img{i}.png.npy"), want[i], rtol=1e-4,
                                       atol=1e-6 * np.abs(want).max())
