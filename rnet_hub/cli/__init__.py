"""``rnet-hub``: small typed commands over the package.

One module per command or command group (:mod:`.demo`, :mod:`.sample`, :mod:`.convert`,
:mod:`.push`, :mod:`.embed`, :mod:`.clean`), each with an ``add_parser(sub)`` that adds its command(s);
each command is one function taking the parsed arguments and returning the exit status.

Errors are mapped to exit statuses here, and only here: an
:class:`~rnet_hub.errors.RnetHubError` is printed as one ``error:`` line naming the fix,
with its ``exit_code`` (2 for bad input or environment, 1 for failed checks such as parity);
Ctrl-C gives 130, and SIGTERM or SIGHUP, handled like Ctrl-C (:class:`~rnet_hub.interrupts.Terminated`),
143 or 129: either way the temporary folders are removed first (see :mod:`rnet_hub.interrupts`). Any
other exception is a bug and keeps its traceback. ``--debug`` (or ``RNET_HUB_DEBUG=1``) shows
the traceback of known errors too.

Importing this package (and building the parser) imports neither torch nor timm.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from ..errors import RnetHubError
from ..interrupts import Terminated, check, handled
from ..version import __version__
from . import app, clean, convert, demo, embed, finetune, push, sample, study
from ._shared import SubParsers

__all__ = ["Terminated", "build_parser", "main", "run"]

#: The command modules' ``add_parser`` functions, in the order ``--help`` lists the commands.
_COMMANDS: list[Callable[[SubParsers], None]] = [
    demo.add_parser,  # demo
    sample.add_parser,  # sample-archive
    convert.add_parser,  # convert, verify
    push.add_parser,  # push, publish-all
    embed.add_parser,  # embed
    finetune.add_parser,  # finetune
    clean.add_parser,  # clean
    app.add_parser,  # app
    study.add_parser,  # study
]

#: Set to anything but empty, 0, false, no or off: known errors show their traceback (like ``--debug``).
DEBUG_ENV = "RNET_HUB_DEBUG"


def build_parser() -> argparse.ArgumentParser:
    """The ``rnet-hub`` argument parser with every command."""
    parser = argparse.ArgumentParser(
        prog="rnet-hub",
        description="RadiologyNET foundation models for timm, transformers and the Hugging Face Hub.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    parser.add_argument("--version", action="version", version=f"rnet-hub {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help=f"show the traceback of known errors too (or set {DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _COMMANDS:
        add(sub)
    return parser


def _debug_from_env() -> bool:
    """Whether ``RNET_HUB_DEBUG`` asks for tracebacks."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def _one_line(error: BaseException) -> str:
    """The error's message on one line (its name when it has none)."""
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``rnet-hub`` with ``argv`` (default ``sys.argv[1:]``) and return the exit status.

    Raises every exception that is not an :class:`~rnet_hub.errors.RnetHubError` (a bug), and
    those too with ``--debug`` or ``RNET_HUB_DEBUG=1``.
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        with handled():
            code = args.func(args)
            check()  # a signal that the command's code swallowed still ends in 130 or 143
            return code
    except RnetHubError as exc:
        if args.debug or _debug_from_env():
            raise
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        if isinstance(exc, Terminated):
            print(f"terminated ({exc.signal_name}); nothing was left half-written", file=sys.stderr)
            return exc.exit_status
        print("interrupted; nothing was left half-written", file=sys.stderr)
        return 130


def run() -> None:
    """The ``rnet-hub`` console script: :func:`main`, then exit without interpreter teardown.

    A process that imported torch and timm spends 1.5-2 s at a normal exit tearing down about
    2,700 modules. Every command has closed its files and removed its temporary folders by the
    time :func:`main` returns, so ``run`` flushes the output streams and logging and leaves
    with ``os._exit``. Call :func:`main` to use the CLI from Python. An exception that
    :func:`main` raises (a bug, or any error with ``--debug``) leaves the normal way, with
    its traceback and exit status 1.
    """
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
