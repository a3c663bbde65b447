"""Pictures of feature visualisation: feature-map and filter grids, top-patch grids, neighbour rows and
thumbnail scatter plots.

Part of :mod:`jaxviz.viz`; import from there. The techniques that compute what
these draw live in :mod:`jaxviz.featvis` (which re-exports these names too).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .. import _checks
from ..errors import InputError
from .colour import colormap
from .grids import channel_grid, grid, label

if TYPE_CHECKING:
    from ..featvis.patches import TopPatches


def feature_map_grid(
    maps,
    *,
    order: str | list[int] = "mean",
    limit: int | None = 64,
    cmap: str = "viridis",
    ncols: int | None = None,
    min_tile: int | None = None,
    pad: int = 2,
    image=None,
    labels: bool = False,
) -> np.ndarray:
    """One image's feature maps (h, w, C) as a grid picture of per-channel maps.

    Args:
      maps: (h, w, C), or (1, h, w, C).
      order: ``"mean"`` (strongest mean activation first), ``"index"`` (channel
        order), or an explicit list of channel indices.
      limit: show at most this many channels (None for all).
      cmap: Matplotlib colormap; each map is scaled to its own [min, max]
        (a constant map is drawn at the colormap's low end).
      ncols: grid columns (default about square).
      min_tile: small maps are enlarged (nearest neighbour, integer factor) to
        at least this many pixels so they are visible. None (default): it
        depends on the map, ``max(48, min(8 * side, 128))``: a deep layer's
        15x15 map gets 8 px per cell (a 120 px tile, not 60), a 7x7 one 56 px,
        and maps of 128 px or more are drawn as they are.
      pad: white gap between tiles in pixels.
      image: optionally the input image (H, W, 3) or (1, H, W, 3), shown
        as the first tile (resized to the tile size, framed in orange) so
        the maps can be read against it.
      labels: write each tile's channel index in its corner ("input" on the
        image's tile), so an ordering by mean still says which channel is which.

    Returns:
      (H, W, 3) float RGB in [0, 1].
    """
    m = np.asarray(maps, np.float32)
    if m.ndim == 4 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 3:
        raise InputError(f"maps: expected shape (h, w, C) of a convolutional tap, got {m.shape}")
    if isinstance(order, str):
        if order not in ("mean", "index"):
            raise InputError(f"order: expected 'mean', 'index' or a list of channels, got {order!r}")
        picked, channels = m, np.arange(m.shape[-1])
    else:
        idx = [int(c) for c in order]
        bad = [c for c in idx if not 0 <= c < m.shape[-1]]
        if bad:
            raise InputError(f"order: channels must be in [0, {m.shape[-1]}), got {bad}")
        picked, order, channels = m[..., idx], "index", np.asarray(idx)
    side = max(m.shape[0], m.shape[1])
    if min_tile is None:
        min_tile = max(48, min(8 * side, 128))
    factor = max(1, -(-_checks.positive_int(min_tile, "min_tile") // side))
    if factor > 1:
        picked = np.repeat(np.repeat(picked, factor, 0), factor, 1)
    if order == "mean":  # channel_grid's order, applied here so that each tile's channel is known
        rank = np.argsort(-picked.mean((0, 1)), kind="stable")
        picked, order, channels = picked[..., rank], "index", channels[rank]
    if limit is not None:
        channels = channels[:limit]
    if image is None and not labels:
        return channel_grid(picked, order=order, limit=limit, cmap=cmap, ncols=ncols, pad=pad)
    th, tw = picked.shape[:2]
    whole = channel_grid(picked, order=order, limit=limit, cmap=cmap, ncols=1, pad=0)
    tiles = [whole[i * th:(i + 1) * th] for i in range(whole.shape[0] // th)]
    if labels:
        tiles = [label(t, str(c)) for t, c in zip(tiles, channels)]
    if image is not None:
        img = np.asarray(image, np.float32)
        img = img[0] if img.ndim == 4 else img
        if img.ndim != 3 or img.shape[-1] != 3:
            raise InputError(f"image: expected shape (H, W, 3), got {img.shape}")
        import jax  # only here: the rest of jaxviz.viz is NumPy and Pillow

        small = np.array(jax.image.resize(jax.numpy.asarray(img), (th, tw, 3), "linear", antialias=True))
        edge = max(1, min(th, tw) // 40)
        small[:edge], small[-edge:], small[:, :edge], small[:, -edge:] = (1.0, 0.55, 0.0), (1.0, 0.55, 0.0), (
            1.0, 0.55, 0.0), (1.0, 0.55, 0.0)
        small = np.clip(small, 0, 1)
        tiles = [label(small, "input") if labels else small] + tiles
    return grid(tiles, ncols=ncols, pad=pad)


def filter_grid(params, layer: str | None = None, *, tile: int = 48, ncols: int | None = None,
                pad: int = 2, limit: int | None = None, bgr: bool = False) -> np.ndarray:
    """A layer's kernels as a grid of tiles.

    ``conv1_1``'s kernels (three input channels) are drawn in colour: RGB
    tile = 0.5 + 0.5 * kernel / max|all kernels|, so grey is zero and the
    strongest weight in the layer reaches black or white. Deeper layers have
    many input channels; each kernel is drawn as its input-channel mean
    through a diverging colormap on the same shared scale.

    Args:
      params: a params pytree.
      layer: the convolution's path in ``params``; default the first one
        (:func:`jaxviz.featvis.maps.filters`).
      tile: tile size in pixels (kernels are enlarged, nearest neighbour).
      ncols: grid columns (default 8 for 64 kernels, about square otherwise).
      pad: gap between tiles: white around RGB kernels (whose zero is grey),
        dark grey around the diverging-colour ones (whose zero is white, so
        a white gap would merge neighbouring tiles).
      limit: draw only the first ``limit`` kernels (the scale is theirs).
      bgr: the 3-channel kernels read B, G, R (Keras' and Caffe's VGG weights,
        ``VGG(preprocess="caffe")``): drawn with the channels reversed, so a
        kernel that responds to red shows red.

    Returns:
      (H, W, 3) float RGB in [0, 1].
    """
    from ..featvis.maps import filters  # the technique (this module only draws)

    k = filters(params, layer)
    if bgr and k.shape[-1] == 3:
        k = k[..., ::-1]
    if limit is not None:
        k = k[:_checks.positive_int(limit, "limit")]
    scale = np.abs(k).max()
    scale = scale if scale > 0 else 1.0
    if k.shape[-1] == 3:
        tiles = 0.5 + 0.5 * k / scale
    else:
        tiles = colormap(0.5 + 0.5 * k.mean(-1) / np.abs(k.mean(-1)).max(), "RdBu_r")
    factor = max(1, tile // max(k.shape[1], k.shape[2]))
    tiles = np.repeat(np.repeat(tiles, factor, 1), factor, 2)
    return grid(list(tiles), ncols=ncols, pad=pad, pad_value=1.0 if k.shape[-1] == 3 else 0.25)


def patch_grid(top: "TopPatches", *, tile: int = 64, pad: int = 2, labels: bool = True,
               values: bool = False, projections: bool | None = None) -> np.ndarray:
    """Top patches as a picture: one row per channel, best patch first.

    Args:
      top: from :func:`top_patches`.
      tile: small patches are enlarged (nearest neighbour, integer factor) to
        about this size; larger ones are shown as they are.
      pad: white gap between tiles.
      labels: write the channel index at the start of each row.
      values: write each patch's activation on its tile
        (:func:`jaxviz.viz.label`, 3 significant digits: ``4.53k``, ``0.12``).
      projections: draw ``top.projections`` (``top_patches(projection="deconvnet")``)
        as Zeiler & Fergus did: each row is the k projections (grey is zero,
        :func:`jaxviz.viz.gradient_image`), then the k patches. Default: when
        ``top`` has them.

    Returns:
      (H, W, 3) float RGB in [0, 1].
    """
    from .figures import gradient_image

    c, k, p = top.patches.shape[:3]
    if projections is None:
        projections = top.projections is not None
    if projections and top.projections is None:
        raise InputError("projections: top has none; call top_patches(..., projection='deconvnet')")
    factor = max(1, tile // p)
    empty = np.full((p * factor, p * factor, 3), 0.85, np.float32)
    tiles = []
    for ci in range(c):
        if projections:
            tiles += [gradient_image(top.projections[ci, j], size=p * factor) if top.index[ci, j] >= 0 else empty
                      for j in range(k)]
        for j in range(k):
            t = top.patches[ci, j] if top.index[ci, j] >= 0 else np.full((p, p, 3), 0.85, np.float32)
            t = np.repeat(np.repeat(t, factor, 0), factor, 1)
            if values and top.index[ci, j] >= 0:
                t = label(t, _compact(float(top.values[ci, j])))
            tiles.append(t)
    pic = grid(tiles, ncols=2 * k if projections else k, pad=pad)
    if not labels:
        return pic
    return _label_rows(pic, [f"{int(ch)}" for ch in top.channels], p * factor, pad)


def _compact(v: float) -> str:
    """3 significant digits in at most 6 characters, so a label fits a 40 px patch: ``4530`` -> ``4.53k``."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if 1e3 <= abs(v) / scale * 1e3 < 1e6 and abs(v) >= scale:
            return f"{v / scale:.3g}{suffix}"
    return f"{v:.3g}"


def _label_rows(pic: np.ndarray, texts: Sequence[str], cell: int, pad: int) -> np.ndarray:
    """Adds a left margin with one text label per grid row."""
    from PIL import Image, ImageDraw

    margin = 8 + 7 * max(len(t) for t in texts)
    canvas = Image.new("RGB", (pic.shape[1] + margin, pic.shape[0]), (255, 255, 255))
    canvas.paste(Image.fromarray(np.round(np.clip(pic, 0, 1) * 255).astype(np.uint8)), (margin, 0))
    draw = ImageDraw.Draw(canvas)
    for r, text in enumerate(texts):
        y = pad + r * (cell + pad) + cell // 2 - 6
        draw.text((4, y), text, fill=(0, 0, 0))
    return np.asarray(canvas, np.float32) / 255.0


def _frame(tile: np.ndarray, colour, width: int) -> np.ndarray:
    out = np.array(tile, np.float32)
    out[:width], out[-width:], out[:, :width], out[:, -width:] = colour, colour, colour, colour
    return out


def neighbour_grid(thumbs, indices, queries: Sequence[int] | None = None, *, pad: int = 3,
                   distances=None) -> np.ndarray:
    """Rows of ``query | its neighbours`` as one picture (the query framed in orange).

    Args:
      thumbs: (N, t, t, 3) thumbnails (e.g. ``features(..., thumbnail_size=64).thumbnails``).
      indices: (Q, k) neighbour indices from :func:`nearest_neighbours`.
      queries: the index of each row's query (default 0..Q-1, as when
        ``nearest_neighbours`` queried every vector and you pass ``idx[:Q]``).
      pad: white gap between tiles.
      distances: optional (Q, k) distances (from :func:`nearest_neighbours`),
        written on each neighbour's tile (:func:`jaxviz.viz.label`, 3
        significant digits).

    Returns:
      (H, W, 3) float RGB in [0, 1].

    Raises:
      InputError: wrong shapes, or an index outside the thumbnails.
    """
    t = np.asarray(thumbs, np.float32)
    idx = np.asarray(indices)
    if t.ndim != 4 or t.shape[-1] != 3:
        raise InputError(f"thumbs: expected shape (N, t, t, 3), got {t.shape}")
    if idx.ndim != 2:
        raise InputError(f"indices: expected shape (Q, k), got {idx.shape}")
    if not np.issubdtype(idx.dtype, np.integer) or (idx.size and (idx.min() < 0 or idx.max() >= len(t))):
        raise InputError(f"indices: expected integer indices into the {len(t)} thumbnails, got "
                         + (f"values {idx.min()}..{idx.max()}" if np.issubdtype(idx.dtype, np.number) and idx.size
                            else f"dtype {idx.dtype}"))
    queries = np.arange(idx.shape[0]) if queries is None else np.asarray(queries)
    if queries.shape != (idx.shape[0],) or not np.issubdtype(queries.dtype, np.integer) \
            or (queries.size and (queries.min() < 0 or queries.max() >= len(t))):
        raise InputError(f"queries: expected {idx.shape[0]} integer indices into the {len(t)} thumbnails "
                         f"(one per row of indices), got {queries.tolist()}")
    if distances is not None:
        distances = np.asarray(distances, np.float64)
        if distances.shape != idx.shape:
            raise InputError(f"distances: expected shape {idx.shape} (one per index), got {distances.shape}")
    width = max(2, t.shape[1] // 24)
    tiles = []
    for r, (q, row) in enumerate(zip(queries, idx)):
        tiles.append(_frame(t[q], (1.0, 0.55, 0.0), width))
        if distances is None:
            tiles.extend(t[j] for j in row)
        else:
            tiles.extend(label(t[j], f"{d:.3g}") for j, d in zip(row, distances[r]))
    return grid(tiles, ncols=idx.shape[1] + 1, pad=pad)


def scatter_thumbnails(
    points,
    thumbs=None,
    *,
    labels: Sequence[Any] | None = None,
    title: str | None = None,
    size: float = 9.0,
    dpi: int = 100,
    zoom: float | None = None,
    max_thumbnails: int = 2000,
) -> np.ndarray:
    """A 2-D map drawn as image thumbnails at their coordinates (matplotlib, Agg backend).

    Args:
      points: (N, 2) coordinates (from :func:`pca` or :func:`tsne`).
      thumbs: (N, t, t, 3) thumbnails, or None for dots only.
      labels: optional per-point labels: points are coloured by label and
        thumbnails framed in the label's colour, with a legend.
      title: plot title.
      size: figure size in inches (square).
      dpi: resolution.
      zoom: thumbnail scale in pixels: a t px thumbnail is drawn zoom * t px
        wide at any ``dpi`` (default: about 1/25 of the plot wide, smaller for
        large N).
      max_thumbnails: draw thumbnails for at most this many points (an even
        subsample); all points are drawn as dots.

    Returns:
      (H, W, 3) float RGB in [0, 1] (H = W = size * dpi).

    Raises:
      InputError: bad shapes, a non-positive or infinite ``size``/``dpi``/
        ``zoom``, or a picture under 1 px.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage
    from matplotlib import colormaps

    _checks.positive_number(size, "size", finite=True)
    _checks.positive_number(dpi, "dpi", finite=True)
    if zoom is not None:
        _checks.positive_number(zoom, "zoom", finite=True)
    if size * dpi < 1:
        raise InputError(f"size: expected a picture of at least 1 px, got {size} inches at {dpi} dpi")
    p = np.asarray(points, np.float64)
    if p.ndim != 2 or p.shape[1] != 2 or p.shape[0] == 0:
        raise InputError(f"points: expected shape (N, 2), got {p.shape}")
    n = p.shape[0]
    if thumbs is not None:
        thumbs = np.asarray(thumbs, np.float32)
        if thumbs.ndim != 4 or thumbs.shape[0] != n or thumbs.shape[-1] != 3:
            raise InputError(f"thumbs: expected shape ({n}, t, t, 3), got {thumbs.shape}")
    colours = None
    if labels is not None:
        if len(labels) != n:
            raise InputError(f"labels: expected {n} labels, got {len(labels)}")
        classes = list(dict.fromkeys(labels))
        cmap = colormaps["tab10" if len(classes) <= 10 else "tab20"]
        colours = [cmap(classes.index(lab) % cmap.N) for lab in labels]

    fig = Figure(figsize=(size, size), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0.06, 0.06, 0.9, 0.88) if title else (0.06, 0.06, 0.9, 0.9))
    ax.scatter(p[:, 0], p[:, 1], s=6, c=colours if colours is not None else "0.4", zorder=1)
    if thumbs is not None:
        t = thumbs.shape[1]
        if zoom is None:
            target = size * dpi / max(25.0, 4.0 * np.sqrt(n))  # pixels per thumbnail
            zoom = max(0.2, min(2.0, target / t))
        show = np.arange(n) if n <= max_thumbnails else np.linspace(0, n - 1, max_thumbnails).round().astype(int)
        for i in show:
            # dpi_cor=False: zoom in pixels (matplotlib's default scales it by dpi / 72, drawing a 24 px target
            # 33 px wide at 100 dpi)
            box = OffsetImage(np.clip(thumbs[i], 0, 1), zoom=zoom, dpi_cor=False)
            frame = dict(edgecolor=colours[i], linewidth=1.5) if colours is not None else dict(edgecolor="0.7", linewidth=0.5)
            ax.add_artist(AnnotationBbox(box, p[i], frameon=True, pad=0.1, bboxprops=frame, zorder=2))
    if colours is not None:
        for lab in dict.fromkeys(labels):
            ax.scatter([], [], c=[colours[list(labels).index(lab)]], label=str(lab))
        ax.legend(loc="best", fontsize=8, framealpha=0.8)
    pad_x = (p[:, 0].max() - p[:, 0].min()) * 0.06 or 1.0
    pad_y = (p[:, 1].max() - p[:, 1].min()) * 0.06 or 1.0
    ax.set_xlim(p[:, 0].min() - pad_x, p[:, 0].max() + pad_x)
    ax.set_ylim(p[:, 1].min() - pad_y, p[:, 1].max() + pad_y)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba(), np.float32) / 255.0
    return np.ascontiguousarray(rgba[..., :3])
