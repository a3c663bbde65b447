"""Not a Python package: this folder holds jaxviz's weight manifest and notes.

It is imported only by mistake, when Python runs in the folder that *holds* a jaxviz clone: ``import jaxviz`` then
finds the clone's root folder (a namespace package, no ``__init__.py``) instead of the package inside it, and
``jaxviz.weights`` is this folder. Say so instead of failing later with an AttributeError.
"""

if __name__.endswith("weights") and __name__ != "weights":
    raise ImportError(
        "jaxviz was imported from the folder that holds the jaxviz clone, not from the package: "
        f"{__name__} resolved to the clone's data folder {__path__[0]!r}. Run Python from another folder "
        "(or from inside the clone), or install it with `pip install -e <clone>`."
    )
