"""Test helper: the pictures the CLI writes carry a title band; compare what is under it."""

import numpy as np

from jaxviz import image, viz


def body(path):
    """The picture a command wrote without its title band, after checking the band: the PNG's Title, drawn."""
    pic = image.load(path)[0]
    title = image.read_text(path).get("Title")
    assert title, f"{path} has no title"
    band = viz.titled(np.zeros((1, pic.shape[1], 3), np.float32), title).shape[0] - 1
    assert pic[:band].min() < 0.5 and pic[:band].mean() > 0.8  # dark text on white
    return pic[band:]
