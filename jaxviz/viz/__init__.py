"""Pictures at the edge: colormaps, heatmap overlays and grids as float RGB arrays.

Library functions return arrays; these turn them into images a person would
rather look at than read. Every picture jaxviz draws is drawn here:

* :mod:`~jaxviz.viz.colour`: channel reductions, robust scaling, colormaps,
  heatmaps, colour bars;
* :mod:`~jaxviz.viz.blend`: heatmaps over the images they explain;
* :mod:`~jaxviz.viz.grids`: grids of tiles, labels;
* :mod:`~jaxviz.viz.figures`: attribution figures (the overview, one method's
  grid, overlays with their colour scale);
* :mod:`~jaxviz.viz.features`: feature-map and filter grids, top-patch grids,
  neighbour rows, thumbnail scatter plots.

 Everything here takes and returns NumPy arrays,
float RGB in [0, 1] with the channel last; save them with
:func:`jaxviz.image.save`.

Example:
    >>> import numpy as np
    >>> from jaxviz import viz, image
    >>> img = image.load("cat.jpg", 64)[0]               # (48, 64, 3)
    >>> attr = np.random.default_rng(0).normal(size=img.shape)   # e.g. a saliency map, (H, W, 3)
    >>> pic = viz.overlay(img, attr)                     # |attr| summed over channels, over the image
    >>> pic.shape
    (48, 64, 3)
    >>> image.save(pic, "saliency.png")
    PosixPath('saliency.png')
"""

from __future__ import annotations

from .colour import COLORBAR_HEIGHT, colorbar, colormap, heatmap, normalize, reduce_channels, value_range, with_colorbar
from .features import feature_map_grid, filter_grid, neighbour_grid, patch_grid, scatter_thumbnails
from .figures import GRADIENT_METHODS, METHOD_TITLES, gradient_image, heat, heat_title, method_grid, overlay_and_range, overlays, overview
from .grids import channel_grid, corner_mark, grid, label, titled
from .blend import overlay, upsample_nearest

__all__ = [
    "reduce_channels",
    "normalize",
    "colormap",
    "heatmap",
    "overlay",
    "grid",
    "channel_grid",
    "upsample_nearest",
    "label",
    "METHOD_TITLES",
    "corner_mark",
    "value_range",
    "colorbar",
    "with_colorbar",
    "COLORBAR_HEIGHT",
    "feature_map_grid",
    "filter_grid",
    "patch_grid",
    "neighbour_grid",
    "scatter_thumbnails",
    "heat",
    "heat_title",
    "overlay_and_range",
    "overlays",
    "overview",
    "method_grid",
    "gradient_image",
    "titled",
    "GRADIENT_METHODS",
]
