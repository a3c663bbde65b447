"""The ``jaxviz`` command.

Subcommands live in :mod:`jaxviz.commands`: each module there has a
``register(subparsers)`` that adds its parser and sets ``func``. Errors the
user can fix print one line and exit non-zero (2 for bad input, 1 otherwise);
Ctrl-C exits 130 and says that a rerun resumes; SIGTERM is handled the same way
(temporary files removed, progress saved) and exits 143.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import pkgutil
import re
import signal
import sys

__all__ = ["main", "build_parser"]


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, like the commands' own (argparse prints its usage block first)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``jaxviz`` argument parser, one subparser per command (each sets ``func``)."""
    from . import __version__, commands

    parser = _Parser(
        prog="jaxviz", description="CNN visualisation in JAX: attribution, style transfer, feature visualisation."
    )
    parser.add_argument("--version", action="version", version=f"jaxviz {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    for command in sub.choices.values():
        # parameter name -> flag, so a library error about ``step_size`` reads as one about ``--step-size``
        # (and a command's ``_aliases``, e.g. learning_rate -> --lr, where the flag's name is not the parameter's)
        flags = {a.dest: max(a.option_strings, key=len) for a in command._actions
                 if a.option_strings and a.dest != "help"}
        command.set_defaults(_flags={**flags, **(command.get_default("_aliases") or {})})
    return parser


def _in_flags(message: str, flags: dict[str, str]) -> str:
    """``"step_size: expected ..."`` -> ``"--step-size: expected ..."`` when the command has that option."""
    m = re.match(r"([a-z][a-z0-9_]*):", message)
    if m and m.group(1) in flags:
        return flags[m.group(1)] + message[m.end(1):]
    return message


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, ``docker stop``, a batch scheduler), raised like Ctrl-C's KeyboardInterrupt so
    the same clean-up runs: temporary files removed, progress checkpointed."""


#: Set by the SIGTERM handler and kept until the command ends: an exception raised where Python cannot pass it on
#: (inside a finaliser, which prints "Exception ignored" and goes on) is raised again at the next batch, step or
#: octave boundary (:func:`check_terminated`), and a run that still completes exits 143, never 0.
_TERMINATED = {"flag": False}


def _terminate(signum, frame):
    _TERMINATED["flag"] = True
    raise Terminated


def check_terminated() -> None:
    """At a step/batch/octave boundary: raise :class:`Terminated` if a SIGTERM arrived (its first raise may have
    been swallowed)."""
    if _TERMINATED["flag"]:
        raise Terminated


@contextlib.contextmanager
def _sigterm_as_interrupt():
    _TERMINATED["flag"] = False
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread (main() called from a thread): leave SIGTERM alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``jaxviz`` console script; returns the exit code."""
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 (Linux allows any bytes) prints as \xNN
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")
    with _sigterm_as_interrupt():
        return _main(argv)


def _stopped(e: KeyboardInterrupt, again: str = "") -> int:
    """One line for Ctrl-C (exit 130) or SIGTERM (exit 143, 128 + the signal's number)."""
    if isinstance(e, Terminated):
        print(f"jaxviz: terminated{again}", file=sys.stderr)
        return 128 + int(signal.SIGTERM)
    print(f"jaxviz: interrupted{again}", file=sys.stderr)
    return 130


def _main(argv: list[str] | None) -> int:
    from .errors import InputError, JaxvizError

    try:
        parser = build_parser()
        args = parser.parse_args(argv)
    except KeyboardInterrupt as e:  # while importing the commands: nothing started yet
        return _stopped(e)
    try:
        if getattr(args, "compiles", True):
            from .commands._common import enable_compile_cache

            enable_compile_cache()  # a rerun (resuming, or the same command again) then skips compilation
        from .commands._common import settle_model_args

        settle_model_args(args)  # --arch/--preprocess from a --weights FILE's record, else the defaults
        code = int(args.func(args) or 0)
        check_terminated()  # a SIGTERM whose exception was swallowed: the run ends as terminated all the same
        return code
    except KeyboardInterrupt as e:
        # only the commands that keep their progress (checkpoints, finished files) promise a resume
        return _stopped(e, "; run the same command again to resume" if getattr(args, "resumable", False) else "")
    except MemoryError as e:  # e.g. numpy refusing a picture of --tile 100000
        print(f"jaxviz {args.command}: error: out of memory ({e or 'an allocation failed'}); "
              "try smaller sizes or batches", file=sys.stderr)
        return 1
    except (JaxvizError, OSError, ValueError) as e:
        code = 2 if isinstance(e, InputError) else 1
        print(f"jaxviz {args.command}: error: {_in_flags(str(e), getattr(args, '_flags', {}))}", file=sys.stderr)
        return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
