"""Subcommands of the ``jaxviz`` CLI, one module each, discovered by :mod:`jaxviz.cli`."""
