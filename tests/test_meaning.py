"""Meaning, not only numbers: a small CNN trained here (seconds) on procedural shapes.

The attributions of the trained model must fall on the shape far more than on
the textured background, those of a randomly initialised copy must not, and
the cascading randomisation check must tell the two apart. ``jaxviz demo``
runs on the same cached model.
"""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxviz import attribution, cli, image, train, viz
from jaxviz.commands import demo as demo_cmd

# One worker runs this module under pytest-xdist (``--dist loadgroup``): its module fixture trains the demo's model.
pytestmark = pytest.mark.xdist_group("meaning")

OCCLUSION = {"window": 6, "stride": 2, "baseline": 0.5}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, runtime_env):
    """The demo's model (default Config), trained once for this module into a private cache.

    It is trained by ``small_cnn_run`` in a child process compiling at XLA's default level (``runtime_env``: the
    suite compiles at -O0, where these 600 training steps run ~3x slower), then loaded from that cache here."""
    cache = tmp_path_factory.mktemp("cache")
    code = "import sys; from jaxviz import train; train.small_cnn_run(train.Config(), cache=sys.argv[1], progress=False)"
    subprocess.run([sys.executable, "-c", code, str(cache)], env=runtime_env, check=True)
    run = train.small_cnn_run(train.Config(), cache=cache, progress=False)
    assert run.cached and run.path.parent.parent == cache  # trained by the child, not here
    test = run.test
    pred = train.predict(run.net, run.params, test.images).argmax(-1)
    idx = np.flatnonzero(pred == test.labels)[:16]
    return run, cache, test.images[idx], test.labels[idx], test.masks[idx]


def _dilate(masks):
    """1-pixel dilation (3x3 square): a shape's outline is evidence on both sides of the edge."""
    m = np.pad(masks, ((0, 0), (1, 1), (1, 1)))
    h, w = masks.shape[1:]
    return np.any([m[:, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0)


def density_ratio(maps, masks):
    """Per image: attribution mass per pixel on the (dilated) shape / mass per pixel on the background."""
    m = _dilate(masks)
    maps = np.asarray(maps, np.float64)
    inside = (maps * m).sum((1, 2)) / m.sum((1, 2))
    outside = (maps * ~m).sum((1, 2)) / (~m).sum((1, 2))
    return inside / np.maximum(outside, 1e-30)


def _maps(net, params, x, y):
    sal = np.abs(np.asarray(attribution.saliency(net, params, x, y))).max(-1)
    occ = np.maximum(np.asarray(attribution.occlusion(net, params, x, y, **OCCLUSION)).mean(-1), 0)
    return sal, occ


def test_trained_model_is_accurate(trained):
    run, *_ = trained
    assert run.accuracy > 0.9  # held-out pictures, different seed from training
    assert run.history[-1] < run.history[0]


def test_attribution_mass_falls_on_the_object(trained):
    run, _, x, y, masks = trained
    sal, occ = _maps(run.net, run.params, x, y)
    rs, ro = density_ratio(sal, masks), density_ratio(occ, masks)
    # measured: saliency about 2.2x denser on the shape than on the background, occlusion about 4x
    assert np.mean(rs) > 1.8 and np.median(rs) > 1.6
    assert np.mean(ro) > 3.0 and np.median(ro) > 2.5
    # the same methods on the untrained network (same architecture, random init) do not localise
    random = run.net.init(jax.random.key(1), x[:1])
    rsal, rocc = _maps(run.net, random, x, y)
    rrs, rro = density_ratio(rsal, masks), density_ratio(rocc, masks)
    assert np.mean(rs) > 1.4 * np.mean(rrs)
    assert np.mean(ro) > 2.0 * np.mean(rro)
    # the top 10% most important pixels: mostly on the shape (whose dilated area is about 30% of the picture)
    top = [np.argsort(-o.ravel())[: o.size // 10] for o in occ]
    precision = np.mean([_dilate(masks)[i].ravel()[t].mean() for i, t in enumerate(top)])
    assert precision > 0.6


def test_randomisation_sanity_check_tells_models_apart(trained):
    run, _, x, y, masks = trained
    res = attribution.metrics.model_randomization(run.net, run.params, x[:8], y[:8], method="saliency",
                                                  return_maps=True)
    assert res.layers == ("fc", "conv3", "conv2", "conv1")  # cascading, from the output down
    rho = res.spearman.mean(1)
    # randomising the whole network leaves little rank correlation with the trained model's map ...
    assert rho[-1] < 0.35 and rho[-1] < rho[0]
    # ... and the fully randomised model's saliency no longer concentrates on the shape
    trained_maps = np.abs(np.asarray(attribution.saliency(run.net, run.params, x[:8], y[:8]))).max(-1)
    randomised = np.abs(res.maps[-1]).max(-1)
    assert np.mean(density_ratio(trained_maps, masks[:8])) > 1.3 * np.mean(density_ratio(randomised, masks[:8]))
    # control: a barely perturbed model keeps the map (rank correlation near 1)
    noisy = jax.tree.map(lambda a: a * (1 + 1e-3 * np.random.default_rng(0).standard_normal(a.shape)), run.params)
    again = np.abs(np.asarray(attribution.saliency(run.net, noisy, x[:8], y[:8]))).max(-1)
    assert np.mean(attribution.metrics.spearman(trained_maps, again)) > 0.95


def test_demo_writes_pictures_and_reuses_work(trained, tmp_path, monkeypatch, capsys):
    run, cache, *_ = trained
    monkeypatch.setenv("JAXVIZ_CACHE", str(cache))

    def no_training(*a, **k):
        raise AssertionError("the demo trained instead of reusing the cached model")

    monkeypatch.setattr(train, "fit", no_training)
    out = tmp_path / "demo"
    assert cli.main(["demo", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "held-out accuracy" in printed and str(out / "overview.png") in printed
    names = [n for n, _, _ in demo_cmd.METHODS]
    assert names == ["saliency", "guided_backprop", "grad_cam", "cam", "occlusion"]
    idx = demo_cmd._pick(run, 2)
    x = run.test.images[idx]
    assert np.array_equal(run.test.labels[idx], np.repeat(np.arange(4), 2))
    pred = train.predict(run.net, run.params, x).argmax(-1)
    probs = np.asarray(jax.nn.softmax(train.predict(run.net, run.params, x), -1))
    labels = [f"{run.test.classes[p]} {100 * probs[i, p]:.0f}%" for i, p in enumerate(pred)]
    cam_family = demo_cmd._cam_family()
    assert [n for n, _, _ in cam_family] == [n for n in attribution.CAM_METHODS if n != "grad_cam"] + ["full_grad"]
    assert [n for n, _, _ in demo_cmd._relevance_family()] == ["lrp", "deeplift"]
    family = cam_family + demo_cmd._relevance_family()
    for name, _, options in demo_cmd.METHODS + family:
        got = np.load(out / "maps" / f"{name}.npy")
        want = np.asarray(attribution.METHODS[name](run.net, run.params, x, pred, **options))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
        pic = image.load(out / f"{name}.png")
        assert pic.shape[1] > 200 and pic.shape[2] > 400  # 2 rows x 4 enlarged overlays
        # titled and labelled: it says what it is when opened on its own
        title = dict((n, t) for n, t, _ in demo_cmd.METHODS + family)[name]
        np.testing.assert_allclose(pic[0], viz.method_grid(x, viz.heat(name, want), title, labels),
                                   atol=1.5 / 255)
        assert pic[0, :28].min() < 0.3 and pic[0, :28].mean() > 0.9  # dark title text on a white band
    overview = image.load(out / "overview.png")
    assert overview.shape[1] > 8 * 128 and 6 * 128 < overview.shape[2] < 7 * 128  # 8 rows, input + 5 methods
    titles = {n: t for n, t, _ in demo_cmd.METHODS + family}
    for page, lead, members in (("cam_family", "grad_cam", cam_family),
                                ("relevance", "saliency", demo_cmd._relevance_family())):
        shown = {n: viz.heat(n, np.load(out / "maps" / f"{n}.npy")) for n in [lead, *(n for n, _, _ in members)]}
        np.testing.assert_allclose(image.load(out / f"{page}.png")[0],  # the lead method and the family, side by side
                                   viz.overview(x, shown, titles, labels), atol=1.5 / 255)
    names += [n for n, _, _ in family]
    html = (out / "index.html").read_text()
    assert all(f'src="{n}.png"' in html for n in names) and 'src="overview.png"' in html
    assert 'src="cam_family.png"' in html and 'src="relevance.png"' in html
    assert json.loads((out / "demo.json").read_text())["done"] == sorted(names)

    # a rerun computes nothing
    def no_attribution(*a, **k):
        raise AssertionError("recomputed a finished picture")

    monkeypatch.setattr(attribution, "METHODS", {n: no_attribution for n in names})
    before = (out / "saliency.png").stat().st_mtime_ns
    assert cli.main(["demo", str(out)]) == 0
    assert (out / "saliency.png").stat().st_mtime_ns == before
    for flag in ("--overwrite", "--force"):  # --force: the old spelling
        with pytest.raises(AssertionError, match="recomputed a finished picture"):
            cli.main(["demo", str(out), flag])


def test_demo_with_a_read_only_cache_draws_with_the_model_it_trained(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("JAXVIZ_CACHE", str(blocker / "cache"))  # cannot be created: as a read-only cache
    real_fit, real_run = train.fit, train.small_cnn_run
    runs = []
    # a short fit (64 pictures, one epoch) keeps the test fast; the model is still what the demo draws with
    monkeypatch.setattr(train, "fit", lambda net, x, y, **k: real_fit(net, x[:64], y[:64], **{**k, "epochs": 1}))
    monkeypatch.setattr(train, "small_cnn_run", lambda *a, **k: runs.append(real_run(*a, **k)) or runs[-1])

    # an OUT_DIR that cannot be written is refused before the training
    code = cli.main(["demo", str(blocker / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and not runs and err.splitlines()[-1].startswith(
        f"jaxviz demo: error: OUT_DIR: cannot write in {str(blocker / 'out')!r}")

    out = tmp_path / "demo"
    assert cli.main(["demo", str(out), "--per-class", "1", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert f"jaxviz demo: warning: could not cache the trained small CNN at {blocker / 'cache'}" in captured.err
    assert "not cached" in captured.out and "Traceback" not in captured.err
    (r,) = runs
    assert r.path is None and not r.cached
    x = r.test.images[demo_cmd._pick(r, 1)]
    pred = train.predict(r.net, r.params, x).argmax(-1)
    want = np.asarray(attribution.saliency(r.net, r.params, x, pred))
    np.testing.assert_allclose(np.load(out / "maps" / "saliency.npy"), want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    assert image.load(out / "overview.png").shape[1] > 4 * 128
