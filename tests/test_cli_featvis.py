"""The feature-visualisation commands end to end, on a tiny VGG (patched in) and small images."""

from __future__ import annotations

import csv
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import titled
from jaxviz import cli, image, models, viz, weights
from jaxviz.commands import dream as dream_cmd
from jaxviz.commands import _features, featmaps, filters, render, top_patches

NET = models.VGG(stages=((8,), (16,)), fc_features=32, num_classes=10, pool_output=(2, 2))


@pytest.fixture(scope="module")
def params():
    return weights.random(NET, seed=0)


@pytest.fixture
def tiny(monkeypatch, params):
    """Every command gets the tiny network instead of VGG19."""
    calls = []

    def fake(args, *, classifier=True, **kw):
        calls.append(classifier)
        return NET, params

    for mod in (featmaps, filters, dream_cmd, render, top_patches, _features):
        monkeypatch.setattr(mod, "model_and_params", fake)
    return calls


_body = titled.body

def _picture(path, h=40, w=48, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([yy / h, xx / w, 0.5 + 0.3 * np.sin(xx / (2 + seed))], -1)
    img = np.clip(base + 0.1 * rng.normal(size=base.shape), 0, 1)
    Image.fromarray((img * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "photos"
    for group in ("a", "b"):
        (root / group).mkdir(parents=True)
        for i in range(3):
            _picture(root / group / f"{i}.png", seed=i + (0 if group == "a" else 10))
    return root


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_featmaps_writes_a_grid_with_the_input_first_and_a_rerun_does_nothing(tiny, params, tmp_path, capsys):
    src = _picture(tmp_path / "in.png")
    out = tmp_path / "maps.png"
    code, text, err = run(capsys, "featmaps", src, "--layer", "relu2_1", "--size", "48", "--limit", "5",
                          "--out", out, "--weights", "random", "--no-progress")
    assert code == 0 and "relu2_1: 16 channels of 20x24, showing 5" in text
    pic = _body(out)
    # input + 5 maps of 20x24, enlarged x6 (8 px per cell up to 128 px: 24 -> 144), 3 per row
    assert pic.shape == (2 * 120 + 3 * 2, 3 * 144 + 4 * 2, 3)
    np.testing.assert_allclose(pic[2, 40], (1.0, 0.55, 0.0), atol=0.01)  # the input tile's orange frame (its
    # top-left corner holds the "input" label)
    # every tile is the library's: the input (longest side 48) and relu2_1's 5 strongest maps, viridis, tiles as the map's size asks
    from jaxviz.featvis import maps

    x = image.load(src, 48)
    fm = np.asarray(maps.feature_maps(NET, params, x, "relu2_1"))[0]
    want = maps.feature_map_grid(fm, order="mean", limit=5, cmap="viridis", image=x, labels=True)
    np.testing.assert_allclose(pic, want, atol=1 / 255)  # PNG stores 8 bits, tiles labelled with their channel
    assert fm[..., np.argsort(-fm.mean((0, 1)))[:5]].std((0, 1)).min() > 0  # the tiles are maps, not flat colour
    mtime = os.path.getmtime(out)
    # the same settings (the image named another way, no progress bar): nothing to do
    same = ("--layer", "relu2_1", "--size", "48", "--limit", "5", "--out", out, "--weights", "random")
    code, _, err = run(capsys, "featmaps", os.path.relpath(src), *same)
    assert code == 0 and "already exists; nothing to do" in err and os.path.getmtime(out) == mtime
    # other settings: the picture records what made it, so the rerun says what differs instead of "nothing to do"
    code, _, err = run(capsys, "featmaps", src, "--layer", "relu1_1", "--size", "48", "--out", out, "--weights",
                       "random")
    assert code == 2 and err.strip() == (
        f"jaxviz featmaps: error: --out: {out} exists and other settings: --layer 'relu2_1' (now 'relu1_1'), "
        "--limit 5 (now 64); use another --out, or --overwrite to replace it")
    assert os.path.getmtime(out) == mtime
    code, _, err = run(capsys, "filters", "--out", out, "--weights", "random")
    assert code == 2 and f"--out: {out} exists and it was made by jaxviz featmaps; use another --out" in err
    code, text, _ = run(capsys, "featmaps", src, "--layer", "relu1_1", "--size", "48", "--out", out, "--weights",
                        "random", "--overwrite", "--no-progress")
    assert code == 0 and "relu1_1: 8 channels" in text
    code, _, err = run(capsys, "featmaps", src, "--layer", "relu1_1", "--size", "48", "--out", out, "--weights",
                       "random")
    assert code == 0 and "nothing to do" in err
    # a JPEG cannot carry the record: an existing one counts as done, as before
    jpg = tmp_path / "maps.jpg"
    image.save(pic, jpg)
    code, _, err = run(capsys, "featmaps", src, "--layer", "relu1_1", "--out", jpg, "--weights", "random")
    assert code == 0 and "nothing to do" in err
    # a PNG without it is not one of ours (here the input picture itself): refused, not "nothing to do"
    before = src.read_bytes()
    code, _, err = run(capsys, "featmaps", src, "--layer", "relu1_1", "--out", src, "--weights", "random")
    assert code == 2 and err.strip() == (f"jaxviz featmaps: error: --out: {src} exists and was not made by jaxviz "
                                         "featmaps (a picture of yours?); use another --out, or --overwrite to "
                                         "replace it")
    assert src.read_bytes() == before


def test_seed_is_a_setting_only_where_it_draws_something(tiny, tmp_path, capsys):
    src = _picture(tmp_path / "in.png")
    out = tmp_path / "maps.png"
    args = [src, "--layer", "relu2_1", "--size", "32", "--out", out, "--no-progress"]
    # featmaps with pretrained weights: --seed draws nothing, so another seed finds the picture finished
    assert run(capsys, "featmaps", *args, "--weights", "pretrained", "--seed", "1")[0] == 0
    code, _, err = run(capsys, "featmaps", *args, "--weights", "pretrained", "--seed", "2")
    assert code == 0 and "nothing to do" in err
    # with random weights it draws them: another seed is another picture
    out2 = tmp_path / "maps2.png"
    args2 = [a if a != out else out2 for a in args]
    assert run(capsys, "featmaps", *args2, "--weights", "random", "--seed", "1")[0] == 0
    code, _, err = run(capsys, "featmaps", *args2, "--weights", "random", "--seed", "2")
    assert code == 2 and "other settings: --seed 1 (now 2)" in err
    # render draws its start image and transforms from it, whatever the weights
    r = tmp_path / "r.png"
    base = ["render", "--layer", "relu2_1", "--channels", "0", "--size", "32", "--steps", "2", "--no-transforms",
            "--weights", "pretrained", "--no-progress", "--out", r]
    assert run(capsys, *base, "--seed", "1")[0] == 0
    code, _, err = run(capsys, *base, "--seed", "2")
    assert code == 2 and "other settings: --seed 1 (now 2)" in err
    for command, also in (("render", " and the start image and the transforms"), ("featmaps", " (default")):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        assert f"--seed SEED seed for --weights random{also}" in " ".join(capsys.readouterr().out.split())


def test_filters(tiny, tmp_path, capsys):
    out = tmp_path / "f.png"
    code, text, _ = run(capsys, "filters", "--out", out, "--tile", "12", "--weights", "random")
    assert code == 0 and "conv1_1: 8 kernels of 3x3x3" in text
    k = np.asarray(weights.random(NET, seed=0)["params"]["conv1_1"]["kernel"])
    pic = _body(out)
    assert pic.shape == (3 * 12 + 4 * 2, 3 * 12 + 4 * 2, 3)  # 8 tiles, 3 per row
    want = 0.5 + 0.5 * k[..., 0] / np.abs(k).max()  # kernel 0, enlarged x4
    np.testing.assert_allclose(pic[2:14:4, 2:14:4], want, atol=1 / 255)
    code, text, _ = run(capsys, "filters", "--layer", "conv2_1", "--limit", "5", "--out", tmp_path / "g.png",
                        "--weights", "random")
    assert code == 0 and "\nconv2_1: 5 of 16 kernels of 3x3x8\n" in text  # what is shown, of how many
    for extra in ((), ("--limit", "3")):  # not a convolution: one line, not a KeyError traceback
        code, _, err = run(capsys, "filters", "--layer", "pool1", *extra, "--out", tmp_path / "p.png", "--weights",
                           "random")
        assert code == 2 and err.startswith("jaxviz filters: error: --layer: expected a convolution in params (")


def test_dream_reports_a_rising_objective_per_octave(tiny, params, tmp_path, capsys):
    src = _picture(tmp_path / "in.png", 44, 52)
    out = tmp_path / "d.png"
    code, text, _ = run(capsys, "dream", src, "--layers", "relu2_1:1,relu1_1:0.2", "--size", "0", "--octaves", "2",
                        "--steps", "3", "--jitter", "4", "--tile", "0", "--out", out, "--weights", "random",
                        "--no-progress")
    assert code == 0, text
    from jaxviz import dream

    want = dream.dream(NET, params, image.load(src), key=jax.random.key(0), layers={"relu2_1": 1.0, "relu1_1": 0.2},
                       octaves=2, steps=3, jitter=4, tile_size=None)
    got = image.load(out)
    assert got.shape == (1, 44, 52, 3)
    # the dream, saved as 8 bits, marked as made with random weights in its corner
    np.testing.assert_allclose(got[0], viz.corner_mark(np.clip(np.asarray(want[0]), 0, 1)), atol=0.6 / 255)
    assert np.abs(got[0, -6, -2] - np.array([190, 20, 20]) / 255).max() < 1e-6
    assert np.abs(got - image.load(src)).mean() > 0.01  # and not the input
    lines = [ln for ln in text.splitlines() if ln.startswith("octave")]
    assert len(lines) == 2
    for ln in lines:
        before, after = (float(v) for v in ln.split("objective ")[1].split(" -> "))
        assert after > before


def test_dream_resumes_after_finished_octaves(tiny, params, tmp_path, capsys, monkeypatch):
    from jaxviz import dream

    src = _picture(tmp_path / "in.png", 44, 52)
    args = ["dream", src, "--layers", "relu2_1", "--size", "0", "--octaves", "2", "--steps", "2", "--jitter", "4",
            "--tile", "0", "--weights", "random", "--no-progress"]
    assert run(capsys, *args, "--out", tmp_path / "whole.png")[0] == 0
    real, sizes = dream._run_octave, set()

    def interrupted(*a, **k):  # dies in the second octave
        sizes.add(a[2].shape)
        if len(sizes) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(dream, "_run_octave", interrupted)
    out = tmp_path / "parts.png"
    code, _, err = run(capsys, *args, "--out", out)
    assert code == 130 and err.endswith("jaxviz: interrupted; run the same command again to resume\n")
    assert int(np.load(tmp_path / "parts.png.dream.npz")["octaves_done"]) == 1
    monkeypatch.setattr(dream, "_run_octave", real)
    code, text, err = run(capsys, *args, "--out", out)
    assert code == 0 and f"resumed from {tmp_path / 'parts.png.dream.npz'}" in err and text.count("octave ") == 2
    np.testing.assert_array_equal(image.load(out), image.load(tmp_path / "whole.png"))
    assert not (tmp_path / "parts.png.dream.npz").exists()
    # --overwrite of a finished picture, interrupted: the command it is told to run again (with --overwrite)
    # resumes from the checkpoint instead of deleting it and starting over
    monkeypatch.setattr(dream, "_run_octave", interrupted)
    sizes.clear()
    assert run(capsys, *args, "--out", out, "--overwrite")[0] == 130
    monkeypatch.setattr(dream, "_run_octave", real)
    code, _, err = run(capsys, *args, "--out", out, "--overwrite")
    assert code == 0 and f"resumed from {tmp_path / 'parts.png.dream.npz'}" in err
    np.testing.assert_array_equal(image.load(out), image.load(tmp_path / "whole.png"))
    # a checkpoint of other settings, or a damaged one, is ignored with the reason, and the run starts over
    np.savez(tmp_path / "other.png.dream.npz", fingerprint=np.array("x"), octaves_done=np.array(1))
    (tmp_path / "torn.png.dream.npz").write_bytes(b"PK\x03\x04 torn")
    for name, why in (("other", "it was made with other settings"), ("torn", "unreadable")):
        code, _, err = run(capsys, *args, "--out", tmp_path / f"{name}.png")
        assert code == 0 and f"ignoring {tmp_path / f'{name}.png.dream.npz'}: {why}\n" in err and "resumed" not in err
        np.testing.assert_array_equal(image.load(tmp_path / f"{name}.png"), image.load(tmp_path / "whole.png"))


RENDER = ["render", "--layer", "relu2_1", "--size", "32", "--steps", "4", "--batch-size", "2", "--no-transforms",
          "--weights", "random", "--no-progress"]


def _public_renders(params, objective, channels):
    """What ``render`` is documented to draw, built with the public objectives: channels in groups of
    --batch-size (the last padded with its last channel), group g keyed fold_in(key(--seed), g), Fourier
    parameterisation with decorrelated colour, Adam at --lr."""
    from jaxviz.featvis import render as R

    want = []
    for g in range(0, len(channels), 2):
        group = channels[g:g + 2]
        imgs = R.render_each(NET, params, objective, jnp.asarray(group + group[-1:] * (2 - len(group)), jnp.int32),
                             key=jax.random.fold_in(jax.random.key(0), g // 2), size=32, steps=4,
                             param=R.fourier(decorrelate=True), transforms=None, learning_rate=0.05)
        want.extend(np.asarray(imgs)[:len(group), 0])
    return want


@pytest.fixture(scope="module")
def channel_renders(params):
    """relu2_1 channels 0-2 rendered with the public ``channel`` objective (computed once for the module)."""
    from jaxviz.featvis import render as R

    return _public_renders(params, lambda c: R.channel("relu2_1", c), [0, 1, 2])


def _assert_tiles(pic, want, ncols=2):
    for i, w in enumerate(want):
        r, c = 4 + 36 * (i // ncols), 4 + 36 * (i % ncols)
        # below the label box (rows 0-12 of a tile); PNG stores 8 bits
        np.testing.assert_allclose(pic[r + 13:r + 32, c:c + 32], np.clip(w[13:], 0, 1), atol=0.6 / 255)


def test_render_channels_grid(tiny, params, channel_renders, tmp_path, capsys):
    out = tmp_path / "r.png"
    code, text, _ = run(capsys, *RENDER, "--channels", "0-2", "--out", out)
    assert code == 0 and "relu2_1: 3 channels (0-2), 4 steps at 32 px" in text
    pic = _body(out)
    assert pic.shape == (2 * 32 + 3 * 4, 2 * 32 + 3 * 4, 3)  # 3 tiles, 2 per row
    # the tiles are renders of the public channel objective (mean of relu2_1's channel c)
    _assert_tiles(pic, channel_renders)
    assert np.abs(channel_renders[0] - channel_renders[1]).mean() > 0.01  # different channels, different pictures
    code, _, err = run(capsys, "render", "--layer", "relu2_1", "--channels", "3,16", "--out", tmp_path / "x.png",
                       "--weights", "random")
    assert code == 2 and err.strip() == "jaxviz render: error: --channels: relu2_1 has 16 channels (0-15), got 16"
    code, _, err = run(capsys, "render", "--layer", "relu2_1", "--channels", "3,16-999,1200,1202", "--out",
                       tmp_path / "x.png", "--weights", "random")  # out-of-range indices as ranges, not 986 numbers
    assert code == 2 and err.strip() == ("jaxviz render: error: --channels: relu2_1 has 16 channels (0-15), "
                                         "got 16-999,1200,1202")


def test_render_neuron_maximises_the_centre_position(tiny, params, channel_renders, tmp_path, capsys):
    from jaxviz.featvis import render as R

    out = tmp_path / "n.png"
    code, _, _ = run(capsys, *RENDER, "--channels", "0-1", "--neuron", "--out", out)
    assert code == 0
    pic = _body(out)
    assert pic.shape == (32 + 2 * 4, 2 * 32 + 3 * 4, 3)
    want = _public_renders(params, lambda c: R.neuron("relu2_1", c), [0, 1])  # the centre of the map by default
    _assert_tiles(pic, want)
    assert np.abs(want[0] - channel_renders[0]).mean() > 0.01  # a neuron is not its channel's mean


def test_render_resumes_after_finished_groups(tiny, params, channel_renders, tmp_path, capsys, monkeypatch):
    from jaxviz.featvis import render as R

    args = [*RENDER, "--channels", "0-2"]
    code, _, _ = run(capsys, *args, "--out", tmp_path / "whole.png")
    assert code == 0
    _assert_tiles(_body(tmp_path / "whole.png"), channel_renders)
    real, calls, stop = R.render_each, [], [2]

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) in stop:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(R, "render_each", interrupted)
    out = tmp_path / "parts.png"
    code, _, err = run(capsys, *args, "--out", out)
    assert code == 130 and err.endswith("jaxviz: interrupted; run the same command again to resume\n")
    saved = np.load(tmp_path / "parts.png.render.npz")["images"]
    assert saved.shape == (2, 32, 32, 3)  # the first group: channels 0 and 1
    np.testing.assert_allclose(saved, np.stack(channel_renders[:2]), atol=1e-5)
    calls.clear()
    stop.clear()
    code, _, err = run(capsys, *args, "--out", out)  # group 1 only
    assert code == 0 and "resuming after 2 of 3 renders" in err and len(calls) == 1
    np.testing.assert_array_equal(image.load(out), image.load(tmp_path / "whole.png"))
    assert not (tmp_path / "parts.png.render.npz").exists()
    # --overwrite of the finished picture, interrupted, then the same command again: it resumes
    calls.clear()
    stop.append(2)
    assert run(capsys, *args, "--out", out, "--overwrite")[0] == 130
    calls.clear()
    stop.clear()
    code, _, err = run(capsys, *args, "--out", out, "--overwrite")
    assert code == 0 and "resuming after 2 of 3 renders" in err and len(calls) == 1
    np.testing.assert_array_equal(image.load(out), image.load(tmp_path / "whole.png"))
    # other settings do not reuse it, and a damaged checkpoint is one line, not a traceback
    monkeypatch.setattr(R, "render_each", real)
    np.savez(tmp_path / "other.png.render.npz", signature=np.array("x"), images=np.zeros((2, 32, 32, 3)))
    (tmp_path / "torn.png.render.npz").write_bytes(b"PK\x03\x04 torn")
    for name, why in (("other", "it was made with other settings"), ("torn", "unreadable (")):
        code, _, err = run(capsys, *args, "--out", tmp_path / f"{name}.png")
        assert code == 0 and f"ignoring {tmp_path / f'{name}.png.render.npz'}: {why}" in err
        np.testing.assert_array_equal(image.load(tmp_path / f"{name}.png"), image.load(tmp_path / "whole.png"))


def test_render_classifier_taps(tiny, params, tmp_path, capsys):
    """--layer logits (or fc6 .. fc8) renders classifier units: the network is built with its classifier."""
    from jaxviz.featvis import render as R

    out = tmp_path / "logits.png"
    code, _, _ = run(capsys, "render", "--layer", "logits", "--channels", "3,7", "--size", "32", "--steps", "4",
                     "--batch-size", "2", "--no-transforms", "--out", out, "--weights", "random", "--no-progress")
    assert code == 0 and tiny[-1] is True
    _assert_tiles(_body(out), _public_renders(params, lambda c: R.channel("fc8", c), [3, 7]))
    code, _, err = run(capsys, "render", "--layer", "fc7", "--neuron", "--out", tmp_path / "n.png", "--weights", "random")
    assert code == 2 and err.strip() == ("jaxviz render: error: --neuron: expected a convolutional --layer; "
                                         "fc7 has no positions")
    code, _, err = run(capsys, "render", "--layer", "fc7", "--channels", "40", "--out", tmp_path / "n.png",
                       "--weights", "random")
    assert code == 2 and err.strip() == "jaxviz render: error: --channels: fc7 has 32 channels (0-31), got 40"


def test_render_labels_classes_by_name():
    assert render._tile_names([1, 130], True, 1000) == ["1 goldfish", "130 flamingo"]  # ImageNet's fc8
    assert render._tile_names([3], True, 10) == ["class 3"] and render._tile_names([3], False, 64) == ["3"]
    tile = np.ones((32, 48, 3), np.float32)
    np.testing.assert_array_equal(render._labelled([tile], ["2 great white shark"])[0],
                                  viz.label(tile, "2 great white shark"))  # cut to fit (see test_viz)


def test_library_errors_name_the_flags(tiny, tmp_path, capsys):
    """A check inside the library names its parameter (``step_size``); the command line names the flag."""
    src = _picture(tmp_path / "p.png")
    code, _, err = run(capsys, "dream", src, "--layers", "relu2_1", "--step-size", "-1", "--out", tmp_path / "d.png", "--weights", "random")
    assert code == 2 and err.strip() == "jaxviz dream: error: --step-size: expected a positive number, got -1.0"
    code, _, err = run(capsys, "dream", src, "--layers", "relu2_1", "--octave-scale", "0.5", "--out", tmp_path / "d.png", "--weights", "random")
    assert code == 2 and err.strip() == "jaxviz dream: error: --octave-scale: expected a number > 1, got 0.5"
    code, _, err = run(capsys, "featmaps", src, "--cmap", "nosuch", "--out", tmp_path / "f.png", "--weights", "random")
    assert code == 2 and err.startswith("jaxviz featmaps: error: --cmap: unknown colormap 'nosuch'")
    # a flag named otherwise than the parameter (--lr for learning_rate), and flags the command checks itself
    render = ("render", "--layer", "relu2_1", "--channels", "0", "--steps", "1", "--out", tmp_path / "r.png",
              "--weights", "random", "--no-progress")
    code, _, err = run(capsys, *render, "--lr", "nan")
    assert code == 2 and err.strip() == "jaxviz render: error: --lr: expected a positive number, got nan"
    code, _, err = run(capsys, *render, "--tv", "nan")
    assert code == 2 and err.strip() == "jaxviz render: error: --tv: expected a finite number >= 0, got nan"
    code, _, err = run(capsys, *render, "--size", "3")  # the tiny test network's minimum is 4 px (VGG's 32)
    assert code == 2 and err.strip() == ("jaxviz render: error: --size: expected at least 4 px (the network's "
                                         "minimum), got 3")
    assert not (tmp_path / "r.png").exists()


def test_an_unknown_layer_lists_every_tap_the_command_takes(tiny, folder, tmp_path, capsys):
    """embed, neighbours and render take classifier taps too; the list of names says so (it stopped at pool5)."""
    tail = "pool5, avgpool, fc6, relu6, fc7, relu7, fc8, logits"
    for argv in (("embed", folder, "--recursive", "--layer", "relu9", "--out", tmp_path / "e.png"),
                 ("neighbours", folder, "--recursive", "--k", "2", "--layer", "relu9", "--out", tmp_path / "n.png"),
                 ("render", "--layer", "relu9", "--out", tmp_path / "r.png")):
        code, _, err = run(capsys, *argv, "--weights", "random")
        assert code == 2 and err.startswith(f"jaxviz {argv[0]}: error: --layer: unknown layer 'relu9'; this network "
                                            "has conv1_1, relu1_1,") and err.strip().endswith(tail), err
        assert not tiny  # refused before any network or weights were made
    code, _, err = run(capsys, "top-patches", folder, "--recursive", "--layer", "relu2_1", "--channels", "3,16-999", "--out",
                       tmp_path / "t.png", "--weights", "random")
    assert code == 2 and err.strip() == ("jaxviz top-patches: error: --channels: relu2_1 has 16 channels (0-15), "
                                         "got 16-999")


def test_sizes_are_refused_by_flag_before_the_work(tiny, params, folder, tmp_path, capsys, monkeypatch):
    """Sizes the network cannot take name --size (the library would say "images"), and embed's plot flags are
    checked before the features are extracted."""
    from jaxviz.commands import stylize

    src = _picture(tmp_path / "p.png")  # 40 x 48
    code, _, err = run(capsys, "featmaps", src, "--size", "0", "--out", tmp_path / "f.png", "--weights", "random")
    assert code == 2 and err.strip() == "jaxviz featmaps: error: --size: expected a positive number of px, got 0"
    code, _, err = run(capsys, "featmaps", src, "--size", "4", "--out", tmp_path / "f.png", "--weights", "random")
    assert code == 2 and err.strip() == ("jaxviz featmaps: error: --size: the image is 3x4 px at --size 4, below the "
                                         "network's minimum of 4 px; use a larger --size")
    code, _, err = run(capsys, "dream", src, "--size", "4", "--out", tmp_path / "d.png", "--weights", "random")
    assert code == 2 and err.startswith("jaxviz dream: error: --size: the image is 3x4 px at --size 4, below")
    made = len(tiny)  # featmaps and dream need the network's minimum; the rest below is refused before any is made
    for cmd in ("top-patches", "neighbours", "embed"):  # centre-cropped squares: checked against VGG's 32 px
        code, _, err = run(capsys, cmd, folder, "--recursive", "--size", "8", "--out", tmp_path / "x.png",
                           "--weights", "random")
        assert code == 2 and err.strip() == (f"jaxviz {cmd}: error: --size: expected at least 32 px (the network's "
                                             "minimum), got 8")
    embed = ("embed", folder, "--recursive", "--size", "32", "--out", tmp_path / "e.png", "--weights", "random")
    code, _, err = run(capsys, *embed, "--plot-size", "0")
    assert code == 2 and err.strip() == ("jaxviz embed: error: --plot-size: expected a finite size of at least "
                                         "0.01 inches (1 px), got 0.0")
    code, _, err = run(capsys, *embed, "--perplexity", "nan")
    assert code == 2 and err.strip() == "jaxviz embed: error: --perplexity: expected a positive finite number, got nan"
    assert len(tiny) == made  # no network was made, no feature extracted
    monkeypatch.setattr(stylize, "model_and_params", lambda args, **kw: (NET, params))
    thin = _picture(tmp_path / "thin.png", h=2, w=40)
    code, _, err = run(capsys, "stylize", src, src, thin, "--size", "32", "--steps", "1", "--content-layers", "relu2_1",
                       "--style-layers", "relu1_1,relu2_1", "--out", tmp_path / "s.png",
                       "--no-progress")
    assert code == 2 and err.strip() == ("jaxviz stylize: error: style: image 2 of 2 (2x40 px) would be 2x32 px at "
                                         "the coarsest scale, below the network's minimum of 4 px; use a larger size "
                                         "or style_scale")
    assert not (tmp_path / "s.png").exists()


def test_top_patches_resumes_after_an_interruption(tiny, params, folder, tmp_path, capsys, monkeypatch):
    args = ["top-patches", folder, "--recursive", "--layer", "relu2_1", "--channels", "0,5", "--k", "3", "--size",
            "32", "--batch-size", "2", "--checkpoint-every", "1", "--tile", "24", "--weights", "random", "--no-progress"]
    code, text, _ = run(capsys, *args, "--out", tmp_path / "whole.png")
    assert code == 0 and "receptive field 8x8 px at stride 2; 6 images" in text
    whole = image.load(tmp_path / "whole.png")
    # the picture is the library's top patches of the folder (sorted, recursive; shortest side to 32, centre crop)
    from jaxviz.commands._outputs import iter_batches
    from jaxviz.featvis import patches as P

    paths = sorted(folder.rglob("*.png"))
    top = P.top_patches(NET, params, iter_batches(paths, 32, 2), layer="relu2_1", channels=[0, 5], k=3)
    np.testing.assert_allclose(_body(tmp_path / "whole.png"), P.patch_grid(top, tile=24, values=True), atol=0.6 / 255)
    assert "channel 5: best" in text and str(top.names[1][0]).endswith(text.split("channel 5: best ")[1].split()[-1])
    # the listing beside the picture: every patch's activation, file and box, best first per channel
    with open(tmp_path / "whole.csv", newline="") as f:
        listing = list(csv.DictReader(f))
    assert [(r["channel"], r["rank"]) for r in listing] == [(c, str(k)) for c in ("0", "5") for k in (1, 2, 3)]
    for r in listing:
        ci, k = (0, 5).index(int(r["channel"])), int(r["rank"]) - 1
        assert float(r["activation"]) == pytest.approx(float(top.values[ci, k]), rel=1e-5)
        assert r["file"] == str(top.names[ci][k])
        assert [int(r[b]) for b in ("top", "left", "bottom", "right")] == top.boxes[ci, k].tolist()
    assert "wrote " + str(tmp_path / "whole.csv") in text

    real = top_patches.iter_batches

    def interrupted(*a):
        for i, b in enumerate(real(*a)):
            if i == 2:
                raise KeyboardInterrupt
            yield b

    monkeypatch.setattr(top_patches, "iter_batches", interrupted)
    out = tmp_path / "parts.png"
    code, _, err = run(capsys, *args, "--out", out)
    assert code == 130 and not out.exists() and (tmp_path / "parts.png.topk.npz").exists()
    assert err.endswith("jaxviz: interrupted; run the same command again to resume\n")
    monkeypatch.setattr(top_patches, "iter_batches", real)
    code, _, err = run(capsys, *args, "--out", out)
    assert code == 0 and "resuming after 4 of 6 images" in err
    np.testing.assert_array_equal(image.load(out), whole)
    assert not (tmp_path / "parts.png.topk.npz").exists()

    # Ctrl-C while a batch's result is still being computed (JAX returns before it is): the interrupt lands on the
    # first read of the new state. The checkpoint must hold the state before that batch, with its count.
    real_update = P.top_patches_update
    calls = []

    class Pending:  # the interrupt comes once; later reads (a checkpoint of this state) get the value
        def __init__(self, value):
            self.value, self.interrupted = value, False

        def __array__(self, dtype=None, copy=None):
            if not self.interrupted:
                self.interrupted = True
                raise KeyboardInterrupt
            return np.asarray(self.value)

    def update(*a, **kw):
        new = real_update(*a, **kw)
        calls.append(1)
        return new._replace(index=Pending(new.index)) if len(calls) == 2 else new

    monkeypatch.setattr(P, "top_patches_update", update)
    out = tmp_path / "pending.png"
    code, _, _ = run(capsys, *args, "--out", out)
    assert code == 130 and np.load(tmp_path / "pending.png.topk.npz")["count"] == 2  # batch 2 not counted
    monkeypatch.setattr(P, "top_patches_update", real_update)
    code, text, err = run(capsys, *args, "--out", out)
    assert code == 0 and "resuming after 2 of 6 images" in err and "6 images" in text  # not 8: no batch twice
    np.testing.assert_array_equal(image.load(out), whole)


def test_neighbours_and_embed_share_a_resumable_feature_cache(tiny, params, folder, tmp_path, capsys, monkeypatch):
    common = ["--recursive", "--layer", "relu2_1", "--size", "32", "--batch-size", "2", "--checkpoint-every", "1",
              "--thumb", "16", "--weights", "random", "--no-progress"]
    out = tmp_path / "nn.png"
    code, text, _ = run(capsys, "neighbours", folder, *common, "--k", "2", "--queries", "3", "--out", out)
    assert code == 0
    rows = [ln for ln in text.splitlines() if ln.startswith(("a/", "b/"))]
    assert len(rows) == 3 and rows[0].startswith("a/0.png: ")
    assert _body(out)[None].shape == (1, 3 * 16 + 4 * 3, 3 * 16 + 4 * 3, 3)
    # the cached vectors are relu2_1 averaged over space (shortest side to 32, centre crop)
    saved = np.load(tmp_path / "nn.png.features.npz")
    names = [f"{os.path.basename(os.path.dirname(n))}/{os.path.basename(n)}" for n in saved["names"]]
    vec = np.asarray(saved["vectors"], np.float64)
    assert names == [f"{g}/{i}.png" for g in "ab" for i in range(3)]
    x = image.center_crop(image.load(folder / "b" / "2.png", 32, resize="shortest"), 32)
    np.testing.assert_allclose(vec[5], np.asarray(NET.apply(params, x, taps=("relu2_1",))["relu2_1"]).mean((0, 1, 2)),
                               rtol=1e-5, atol=1e-7)

    def expected(q, k, metric):
        d = {"cosine": 1 - vec @ vec[q] / np.linalg.norm(vec, axis=1) / np.linalg.norm(vec[q]),
             "l1": np.abs(vec - vec[q]).sum(1)}[metric]
        order = [j for j in np.argsort(d, kind="stable") if j != q][:k]
        return [names[j] for j in order], d[order]

    def parse(row):
        query, rest = row.split(": ")
        pairs = [p.rsplit(" (", 1) for p in rest.split(", ")]
        return query, [n for n, _ in pairs], np.array([float(v.rstrip(")")) for _, v in pairs])

    for q, row in enumerate(rows):  # the first 3 images, nearest first by cosine distance (the default)
        query, got, dist = parse(row)
        want, wd = expected(q, 2, "cosine")
        assert query == names[q] and got == want
        np.testing.assert_allclose(dist, wd, rtol=2e-3, atol=1e-6)  # printed with 3 significant digits
    # the picture: one row per query, the query then its neighbours nearest first (the cached thumbnails)
    from jaxviz import embed

    thumbs = saved["thumbnails"]
    order = [[names.index(n) for n in expected(q, 2, "cosine")[0]] for q in range(3)]
    with open(tmp_path / "nn.csv", newline="") as f:  # the listing beside the picture
        listing = list(csv.DictReader(f))
    assert [(r["query"], r["rank"]) for r in listing] == [(n, str(k)) for n in saved["names"][:3] for k in (1, 2)]
    for q in range(3):
        want, wd = expected(q, 2, "cosine")
        mine = listing[2 * q: 2 * q + 2]
        assert [r["neighbour"] for r in mine] == [str(saved["names"][names.index(n)]) for n in want]
        np.testing.assert_allclose([float(r["distance"]) for r in mine], wd, rtol=1e-4, atol=1e-6)
    dist = np.array([float(r["distance"]) for r in listing]).reshape(3, 2)
    np.testing.assert_allclose(_body(out), embed.neighbour_grid(thumbs, np.array(order), [0, 1, 2],
                                                                        distances=dist), atol=0.6 / 255)
    # a rerun with other display options reuses the cached features: the network never runs
    real_features = embed.features
    monkeypatch.setattr(embed, "features", lambda *a, **k: pytest.fail("features recomputed"))
    code, text, _ = run(capsys, "neighbours", folder, *common, "--k", "4", "--metric", "l1", "--out", out,
                        "--overwrite", "--query", folder / "b" / "1.png")
    assert code == 0 and text.splitlines()[1].startswith("b/1.png: ")
    query, got, dist = parse(text.splitlines()[1])
    want, wd = expected(4, 4, "l1")
    assert got == want
    np.testing.assert_allclose(dist, wd, rtol=2e-3)
    np.testing.assert_allclose(_body(out), embed.neighbour_grid(thumbs, np.array([[names.index(n) for n in want]]),
                                                                        [4], distances=dist[None]), atol=0.6 / 255)
    code, _, _ = run(capsys, "embed", folder, *common, "--method", "pca", "--plot-size", "3",
                     "--out", tmp_path / "nn.png", "--overwrite")
    assert code == 0 and image.load(out).shape == (1, 300, 300, 3)
    # the map: the cached vectors' PCA, thumbnails coloured by sub-folder, titled with the explained variance
    res = embed.pca(saved["vectors"], 2)
    ratio = np.asarray(res.explained_variance_ratio)
    title = f"PCA of relu2_1 (6 images; {ratio[0]:.0%} + {ratio[1]:.0%} of the variance)"
    full = image.read_text(out)["Title"]  # the picture's title, also in the PNG's text: + the model and weights
    assert full.startswith(title + " - ") and "random weights (seed 0)" in full
    want = embed.scatter_thumbnails(np.asarray(res.points), thumbs, labels=list("aaabbb"), title=full, size=3)
    np.testing.assert_allclose(image.load(out)[0], want, atol=0.6 / 255)
    # an image edited since (same name): the cache is stale and every vector is recomputed
    _picture(folder / "b" / "1.png", seed=99)
    monkeypatch.setattr(embed, "features", real_features)
    code, _, err = run(capsys, "neighbours", folder, *common, "--k", "2", "--queries", "3", "--out", out, "--overwrite")
    assert code == 0 and f"ignoring {tmp_path / 'nn.png.features.npz'}: it was made with other settings" in err
    fresh = np.load(tmp_path / "nn.png.features.npz")["vectors"]
    x = image.center_crop(image.load(folder / "b" / "1.png", 32, resize="shortest"), 32)
    np.testing.assert_allclose(fresh[4], np.asarray(NET.apply(params, x, taps=("relu2_1",))["relu2_1"]).mean((0, 1, 2)),
                               rtol=1e-5, atol=1e-7)
    assert np.abs(fresh[4] - vec[4]).max() > 1e-3 and np.allclose(fresh[:4], vec[:4], rtol=1e-5, atol=1e-7)


def test_folder_commands_skip_unreadable_files(tiny, params, folder, tmp_path, capsys, monkeypatch):
    """A corrupt file is one stderr line and counted, the results are those of the folder without it (as in
    ``attribute``), and a resume after a skipped file neither repeats nor loses images."""
    clean = tmp_path / "clean"
    import shutil

    shutil.copytree(folder, clean)
    (folder / "a" / "1.png").write_bytes(b"not a png")  # 2nd file of 6 (sorted, recursive)
    (folder / "b" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # 4th: truncated
    (clean / "a" / "1.png").unlink()
    (clean / "b" / "0.png").unlink()
    tp = ["--recursive", "--layer", "relu2_1", "--channels", "0,5", "--k", "3", "--size", "32", "--batch-size", "2",
          "--checkpoint-every", "1", "--tile", "24", "--weights", "random", "--no-progress"]
    code, text, err = run(capsys, "top-patches", folder, *tp, "--out", tmp_path / "t.png")
    assert code == 0 and "; 4 images; skipped 2 unreadable files" in text
    assert [ln[:ln.index(".png") + 4] for ln in err.splitlines() if "skipped" in ln] == [
        f"jaxviz top-patches: skipped {folder / 'a' / '1.png'}", f"jaxviz top-patches: skipped {folder / 'b' / '0.png'}"]
    code, _, _ = run(capsys, "top-patches", clean, *tp, "--out", tmp_path / "t_clean.png")
    assert code == 0
    np.testing.assert_array_equal(image.load(tmp_path / "t.png"), image.load(tmp_path / "t_clean.png"))

    # neighbours, interrupted in its third checkpoint part (parts of 2 files: both unreadable files were skipped
    # in the first two, which read 2 images)
    common = ["--recursive", "--layer", "relu2_1", "--size", "32", "--batch-size", "2", "--checkpoint-every", "1",
              "--thumb", "16", "--weights", "random", "--no-progress", "--k", "2", "--queries", "4"]
    from jaxviz import embed

    real = embed.features
    calls = []

    def once(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(embed, "features", once)
    code, _, err = run(capsys, "neighbours", folder, *common, "--out", tmp_path / "n.png")
    assert code == 130 and err.count("neighbours: skipped") == 2
    saved = np.load(tmp_path / "n.png.features.npz")
    assert len(saved["names"]) == 2 and int(saved["consumed"]) == 4
    monkeypatch.setattr(embed, "features", real)
    code, text, err = run(capsys, "neighbours", folder, *common, "--out", tmp_path / "n.png")
    assert code == 0 and "resuming after 4 of 6 images" in err and "skipped" not in err
    code, text_clean, _ = run(capsys, "neighbours", clean, *common, "--out", tmp_path / "n_clean.png")
    # the same neighbours (lines 1-4; lines 0 and 5 name the output files)
    assert code == 0 and text.splitlines()[1:5] == text_clean.splitlines()[1:5] and len(text.splitlines()) == 6
    np.testing.assert_array_equal(image.load(tmp_path / "n.png"), image.load(tmp_path / "n_clean.png"))
    saved = np.load(tmp_path / "n.png.features.npz")
    clean_saved = np.load(tmp_path / "n_clean.png.features.npz")
    # the same features to float32 round-off: the skipped files put other images side by side in a batch, and
    # XLA's convolutions may round differently by batch composition (an AMD EPYC differed by 7e-8 relative)
    np.testing.assert_allclose(saved["vectors"], clean_saved["vectors"], rtol=1e-6, atol=1e-7)

    # a folder of nothing readable is one error line
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"nope")
    for cmd, extra in (("top-patches", tp), ("embed", common[:-4])):
        code, _, err = run(capsys, cmd, bad, *extra, "--out", tmp_path / f"{cmd}.png")
        assert code == 2 and err.splitlines()[-1] == (
            f"jaxviz {cmd}: error: folder: none of the 1 files in {bad} could be read as an image")


def test_neighbours_checks_k_before_computing_features(tiny, folder, tmp_path, capsys, monkeypatch):
    from jaxviz import embed

    monkeypatch.setattr(embed, "features", lambda *a, **k: pytest.fail("features computed before --k was checked"))
    code, _, err = run(capsys, "neighbours", folder, "--recursive", "--k", "6", "--out", tmp_path / "n.png",
                       "--weights", "random")
    assert code == 2 and err.strip() == "jaxviz neighbours: error: --k: the folder has 6 images, so at most 5 " \
                                        "neighbours; got 6"


def test_pretrained_weights_missing_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("JAXVIZ_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("JAXVIZ_OFFLINE", "1")
    code, _, err = run(capsys, "filters", "--out", tmp_path / "f.png")
    assert code == 1
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("jaxviz filters: error: no pretrained weights for vgg19")


def test_bad_arguments(tiny, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["render", "--channels", "5-2", "--out", str(tmp_path / "x.png")])
    assert e.value.code == 2
    assert "expected channels like 0-7 or 3,5,9, got '5-2'" in capsys.readouterr().err
    code, _, err = run(capsys, "top-patches", tmp_path, "--layer", "fc7", "--out", tmp_path / "t.png",
                       "--weights", "random")
    assert code == 2 and err.startswith("jaxviz top-patches: error: folder: no images in")


def test_out_is_checked_before_any_work(tiny, tmp_path, capsys, monkeypatch):
    from jaxviz import dream

    monkeypatch.setattr(dream, "dream", lambda *a, **k: pytest.fail("worked before checking --out"))
    src = _picture(tmp_path / "in.png")
    (tmp_path / "a_file").write_text("x")
    cases = [
        (tmp_path, f"--out: expected a picture file, got the folder {str(tmp_path)!r}"),
        (tmp_path / "d.xyz", "--out: expected a file ending in .png, .jpg, .jpeg, .webp, .tif, .tiff, .bmp; got "),
        (tmp_path / "a_file" / "d.png", f"--out: cannot write in {str(tmp_path / 'a_file')!r}"),
    ]
    for out, message in cases:
        code, _, err = run(capsys, "dream", src, "--out", out, "--weights", "random", "--no-progress")
        assert code == 2 and err.startswith(f"jaxviz dream: error: {message}"), err
        assert len(err.strip().splitlines()) == 1
    # stylize checks it too, before loading anything
    code, _, err = run(capsys, "stylize", src, src, "--out", tmp_path / "s.xyz", "--weights", "random")
    assert code == 2 and err.startswith("jaxviz stylize: error: --out: expected a file ending in .png")
    assert not list(tmp_path.glob(".jaxviz-write-check-*"))


def test_an_interrupt_promises_a_resume_only_where_one_happens(tiny, tmp_path, capsys, monkeypatch):
    from jaxviz.featvis import maps

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(maps, "feature_maps", interrupted)  # featmaps keeps nothing: a rerun starts over
    code, _, err = run(capsys, "featmaps", _picture(tmp_path / "in.png"), "--out", tmp_path / "d.png", "--weights",
                       "random", "--no-progress")
    assert code == 130 and err == "jaxviz: interrupted\n"


def test_top_patches_refuses_a_tile_below_one_pixel(tiny, folder, tmp_path, capsys):
    for tile in ("0", "-3"):
        code, _, err = run(capsys, "top-patches", folder, "--recursive", "--layer", "relu2_1", "--tile", tile,
                           "--out", tmp_path / "t.png", "--weights", "random")
        assert code == 2 and err.strip() == f"jaxviz top-patches: error: --tile: expected a positive size in px, got {tile}"
    assert not (tmp_path / "t.png").exists()


def test_folder_commands_never_take_their_own_picture_as_an_image(tiny, tmp_path, capsys):
    root = tmp_path / "pics"
    root.mkdir()
    for i in range(4):
        _picture(root / f"{i}.png", seed=i)
    common = ["--layer", "relu2_1", "--size", "32", "--thumb", "16", "--weights", "random", "--no-progress"]
    out = root / "nn.png"  # inside the folder it reads
    for again in ((), ("--overwrite",)):
        code, text, _ = run(capsys, "neighbours", root, *common, "--k", "2", "--out", out, *again)
        assert code == 0
        names = [str(n) for n in np.load(root / "nn.png.features.npz")["names"]]
        assert sorted(os.path.basename(n) for n in names) == [f"{i}.png" for i in range(4)]  # not nn.png
        assert "nn.png: " not in text


def test_pictures_say_what_they_show(tiny, params, folder, tmp_path, capsys):
    """Layer, model and weights in the picture and in its PNG Title; top patches of fewer images than --k say
    so; t-SNE of a few images is a small plot, not a blank 1000 px canvas."""
    code, text, err = run(capsys, "featmaps", folder / "a" / "0.png", "--layer", "relu2_1", "--size", "48", "--limit",
                          "5", "--out", tmp_path / "f.png", "--weights", "random", "--seed", "4")
    assert code == 0, err
    title = image.read_text(tmp_path / "f.png")["Title"]
    assert title == "Feature maps of relu2_1 (16 channels, the 5 strongest; 0.png) - vgg19, random weights (seed 4)"
    titled.body(tmp_path / "f.png")  # and drawn above the grid
    code, text, err = run(capsys, "top-patches", folder, "--recursive", "--layer", "relu2_1", "--channels", "0",
                          "--k", "8", "--size", "32", "--out", tmp_path / "t.png", "--weights", "random",
                          "--no-progress")
    assert code == 0, err
    assert "note: --k 8 but the folder has 6 readable images: each row ends in 2 empty grey cells" in err
    assert image.read_text(tmp_path / "t.png")["Title"].startswith(
        "Top 8 patches per channel of relu2_1 over 6 images; only 6 images, so rows end in empty grey cells - ")
    code, text, err = run(capsys, "embed", folder, "--recursive", "--size", "32", "--method", "pca", "--out",
                          tmp_path / "e.png", "--weights", "random", "--no-progress")
    assert code == 0, err
    assert image.load(tmp_path / "e.png").shape[1:3] == (493, 493)  # 6 points: 1.2 * sqrt(6) + 2 = 4.94 inches at 100 dpi


def test_top_patches_projection_draws_the_librarys_projections(tiny, params, folder, tmp_path, capsys):
    """--projection deconvnet: each row is the k deconvnet projections, then the k patches, as the library's
    top_patches(projection="deconvnet") computes them (the command reads the chosen files again at the end)."""
    out = tmp_path / "zf.png"
    code, text, _ = run(capsys, "top-patches", folder, "--recursive", "--layer", "relu2_1", "--channels", "0,5",
                        "--k", "3", "--size", "32", "--batch-size", "2", "--tile", "24", "--projection", "deconvnet",
                        "--weights", "random", "--no-progress", "--out", out)
    assert code == 0, text
    from jaxviz.commands._outputs import iter_batches
    from jaxviz.featvis import patches as P

    paths = sorted(folder.rglob("*.png"))
    top = P.top_patches(NET, params, iter_batches(paths, 32, 2), layer="relu2_1", channels=[0, 5], k=3,
                        projection="deconvnet")
    np.testing.assert_allclose(_body(out), P.patch_grid(top, tile=24, values=True), atol=0.6 / 255)
    assert np.abs(top.projections).max() > 0
