"""Attribution figures: a method's maps as display heat, overlays with their colour scale, the overview
(input plus one column per method) and one method's titled grid.

Part of :mod:`jaxviz.viz`; import from there. ``jaxviz demo`` and
``jaxviz attribute`` draw with these.
"""

from __future__ import annotations

import numpy as np

from .colour import value_range
from .grids import grid
from .blend import overlay

TILE = 128  #: pixels per picture in the figures
#: Methods whose output is drawn by default as the signed RGB gradient around grey (:func:`gradient_image`), the
#: way Springenberg et al. and Zeiler & Fergus show them, rather than as heat over the image.
GRADIENT_METHODS = ("guided_backprop", "deconvnet", "guided_grad_cam")
OVERLAY_PERCENTILE = 99.0  #: the map's value drawn at the colour scale's top (the top 1% clip to it)


def heat(name: str, attr: np.ndarray) -> np.ndarray:
    """A method's output -> non-negative (N, H, W) maps for display.

    Saliency: max |gradient| over channels (Simonyan et al.); guided
    backprop: sum of |gradient| over channels; occlusion: the score drop
    (positive part; all channels carry the same value); LRP and DeepLIFT: the
    evidence for the target, the positive part of the channel sum (their
    relevance sums to the score); CAM and Grad-CAM are already (N, H, W) and
    non-negative after their ReLU (CAM's is applied here).
    """
    a = np.asarray(attr, np.float32)
    if a.ndim == 3:
        return np.maximum(a, 0)
    if name in ("occlusion", "feature_ablation"):
        return np.maximum(a.mean(-1), 0)
    if name == "saliency":
        return np.abs(a).max(-1)
    if name in ("lrp", "deeplift", "deeplift_shap"):
        return np.maximum(a.sum(-1), 0)
    return np.abs(a).sum(-1)


#: how pictures title each attribution method
METHOD_TITLES = {
    "saliency": "Saliency", "input_x_gradient": "Input x gradient", "integrated_gradients": "Integrated gradients",
    "smoothgrad": "SmoothGrad", "guided_backprop": "Guided backprop", "deconvnet": "Deconvnet",
    "grad_cam": "Grad-CAM", "cam": "CAM", "guided_grad_cam": "Guided Grad-CAM", "occlusion": "Occlusion",
    "grad_cam_plus_plus": "Grad-CAM++", "xgrad_cam": "XGrad-CAM", "hires_cam": "HiResCAM",
    "grad_cam_elementwise": "Grad-CAM (element-wise)", "layer_cam": "LayerCAM", "eigen_cam": "Eigen-CAM",
    "eigen_grad_cam": "Eigen-Grad-CAM", "score_cam": "Score-CAM", "ablation_cam": "Ablation-CAM",
    "full_grad": "FullGrad", "rise": "RISE", "feature_ablation": "Feature ablation",
    "gradient_shap": "GradientSHAP", "kernel_shap": "KernelSHAP", "lime": "LIME", "lrp": "LRP", "deeplift": "DeepLIFT", "deeplift_shap": "DeepLIFT-SHAP",
}


_LAYER_MAPS = {"grad_cam", "cam", "grad_cam_plus_plus", "xgrad_cam", "hires_cam", "grad_cam_elementwise", "layer_cam",
               "eigen_cam", "eigen_grad_cam", "score_cam", "ablation_cam", "full_grad", "rise"}


def heat_title(name: str) -> str:
    """What :func:`heat`'s values are for method ``name``, for a colour bar's title."""
    if name in ("saliency", "occlusion", "feature_ablation"):
        return {"saliency": "max |grad|", "occlusion": "score drop", "feature_ablation": "score drop"}[name]
    if name in _LAYER_MAPS:  # the map itself, named
        return METHOD_TITLES[name]
    return "sum |attr|"


def _upscale(img: np.ndarray, size: int, *, smooth: bool) -> np.ndarray:
    """``img`` (H, W) or (H, W, C) with its longest side resized to ``size`` (a square to size x size)."""
    from PIL import Image

    a = np.asarray(img, np.float32)
    h, w = a.shape[:2]
    shape = (size, size) if h == w else (max(1, round(w * size / max(h, w))), max(1, round(h * size / max(h, w))))
    if a.ndim == 2:
        im = Image.fromarray(a, mode="F").resize(shape, Image.BILINEAR if smooth else Image.NEAREST)
        return np.asarray(im, np.float32)
    chans = [np.asarray(Image.fromarray(np.ascontiguousarray(a[..., c]), mode="F").resize(
        shape, Image.BILINEAR if smooth else Image.NEAREST), np.float32) for c in range(a.shape[-1])]
    return np.stack(chans, -1)


def _overlay(img: np.ndarray, m: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One image's heatmap overlay (jet) at ``size`` pixels, and the upscaled map it drew."""
    up = _upscale(m, size, smooth=True)
    return overlay(_upscale(img, size, smooth=False), up, alpha=0.6, cmap="jet", percentile=OVERLAY_PERCENTILE), up


def overlay_and_range(img: np.ndarray, m: np.ndarray, size: int = TILE) -> tuple[np.ndarray, tuple[float, float]]:
    """One image's overlay (see :func:`overlays`) and the map's values at its colour scale's two ends (for
    :func:`colorbar`)."""
    pic, up = _overlay(img, m, size)
    return pic, value_range(up, percentile=OVERLAY_PERCENTILE)


def overlays(images: np.ndarray, maps: np.ndarray, size: int = TILE) -> list[np.ndarray]:
    """Heatmap overlays (jet) of ``maps`` (N, H, W) on ``images``, upscaled to ``size`` pixels."""
    return [_overlay(img, m, size)[0] for img, m in zip(images, maps)]


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _annotated(body: np.ndarray, heads: list[tuple[int, str]], labels: list[tuple[int, int, str]],
               head: int = 28) -> np.ndarray:
    """``body`` below a white band of ``head`` px with centred titles (x, text), and labels (x, y, text) on a
    white box at tile corners (y in ``body``'s coordinates)."""
    from PIL import Image, ImageDraw

    canvas = Image.new("RGB", (body.shape[1], body.shape[0] + head), "white")
    canvas.paste(Image.fromarray(np.round(body * 255).astype(np.uint8)), (0, head))
    draw = ImageDraw.Draw(canvas)
    font, small = _font(15), _font(12)
    for x, title in heads:
        draw.text((x, head // 2), title, fill="black", font=font, anchor="mm")
    for x, y, text in labels:
        draw.rectangle((x, head + y, x + draw.textlength(text, font=small) + 6, head + y + 16), fill="white")
        draw.text((x + 3, head + y + 1), text, fill="black", font=small)
    return np.asarray(canvas, np.float32) / 255


def overview(images: np.ndarray, maps: dict[str, np.ndarray], titles: dict[str, str],
                    labels: list[str], size: int = TILE) -> np.ndarray:
    """One row per picture: the input, then each method's overlay; titled columns, labelled rows."""
    pad = 4
    cols = ["Input"] + [titles[k] for k in maps]
    rows = []
    for i, img in enumerate(images):
        row = [_upscale(img, size, smooth=False)] + [overlays(img[None], maps[k][i : i + 1], size)[0] for k in maps]
        rows.extend(row)
    body = grid(rows, ncols=len(cols), pad=pad)
    heads = [(pad + j * (size + pad) + size // 2, title) for j, title in enumerate(cols)]
    return _annotated(body, heads, [(pad, pad + i * (size + pad), text) for i, text in enumerate(labels)])


def method_grid(images: np.ndarray, maps: np.ndarray, title: str, labels: list[str],
                  size: int = TILE) -> np.ndarray:
    """One method's overlays in a grid (two rows for more than 4 pictures), titled, each tile labelled with the
    model's prediction: a picture that says what it is when opened on its own."""
    pad = 4
    ncols = len(images) // 2 if len(images) > 4 else len(images)
    body = grid(overlays(images, maps, size), ncols=ncols, pad=pad)
    where = [(pad + (i % ncols) * (size + pad), pad + (i // ncols) * (size + pad)) for i in range(len(images))]
    heading = f"{title} (red: most important for the predicted class)"
    return _annotated(body, [(body.shape[1] // 2, heading)], [(x, y, t) for (x, y), t in zip(where, labels)])


def gradient_image(attr: np.ndarray, size: int | None = None) -> np.ndarray:
    """An RGB attribution (H, W, 3) as the coloured picture the guided-backprop and deconvnet papers show:
    standardised, scaled by 0.1 and centred on grey (pytorch-grad-cam's ``deprocess_image``), so grey is zero
    and the sign of each colour channel shows. ``size``: enlarged to that many pixels (nearest neighbour).

    Returns:
      (H, W, 3) float RGB in [0, 1].
    """
    a = np.asarray(attr, np.float64)
    if a.ndim != 3 or a.shape[-1] != 3:
        from ..errors import InputError

        raise InputError(f"attr: expected an RGB attribution (H, W, 3), got shape {a.shape}")
    a = (a - a.mean()) / (a.std() + 1e-5) * 0.1 + 0.5
    pic = np.clip(a, 0.0, 1.0).astype(np.float32)
    return pic if size is None else _upscale(pic, size, smooth=False)
