"""The ``mmstream`` command. Each subcommand lives in its own module and registers
itself through ``register(subparsers)``."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ..errors import MmstreamError

# subcommand modules, in --help order
COMMANDS = ["inspect", "cache", "finalize", "verify", "bench"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmstream",
        description="Stream raw videos + JSON annotations into video-LLM finetuning: decode and "
                    "sample frames in DataLoader workers, convert to the model's format, filter by "
                    "length, and optionally cache to WebDataset shards.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except MmstreamError as exc:
        print(f"mmstream {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
