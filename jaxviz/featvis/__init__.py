"""Feature visualisation: feature maps, filters, activation maximisation, top-activating patches.

Submodules:

* :mod:`jaxviz.featvis.maps`: a tap's activations as per-channel pictures;
  first-layer filters as RGB tiles.
* :mod:`jaxviz.featvis.render`: activation maximisation (composable
  objectives, Fourier / decorrelated-colour parameterisations, random
  transforms, batched rendering with ``vmap``).
* :mod:`jaxviz.featvis.patches`: top-activating patches over a folder
  (Zeiler & Fergus), streamed with bounded memory.

* :mod:`jaxviz.featvis.dream`: DeepDream (octaves, tiles, guides), with
  checkpoints (also importable as :mod:`jaxviz.dream`).
* :mod:`jaxviz.featvis.embed`: feature vectors, nearest neighbours, PCA and
  t-SNE (also importable as :mod:`jaxviz.embed`).
"""

from . import dream, embed, maps, patches, render
from .maps import feature_maps, feature_map_grid, filter_grid, filters
from .patches import ReceptiveField, TopPatches, patch_grid, receptive_field, top_patches
from .render import (
    Objective,
    channel,
    class_logit,
    direction,
    diversity,
    fourier,
    l2,
    neuron,
    pixel,
    render_channels,
    render_each,
    standard_transforms,
    total_variation,
)
from .render import render as render_image

__all__ = [
    "dream",
    "embed",
    "maps",
    "patches",
    "render",
    "feature_maps",
    "feature_map_grid",
    "filters",
    "filter_grid",
    "ReceptiveField",
    "TopPatches",
    "receptive_field",
    "top_patches",
    "patch_grid",
    "Objective",
    "channel",
    "neuron",
    "class_logit",
    "direction",
    "diversity",
    "total_variation",
    "l2",
    "pixel",
    "fourier",
    "standard_transforms",
    "render_image",
    "render_each",
    "render_channels",
]
