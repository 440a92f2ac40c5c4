"""docs/cli.md, the reference of every `sddpm` command, written from the parser itself (`make docs` runs it;
tests/test_docs_links.py checks that the page is current).

Usage: python -m toolchain.cli_reference [PATH] (default docs/cli.md)."""
from __future__ import annotations

import argparse
import sys

from toolchain.parser import build_parser, subcommands

WIDTH = 110  # fixed, so that the page does not depend on the terminal it is written from
HEADER = ("# The `sddpm` command: reference\n\n"
          "Written by `python -m toolchain.cli_reference` from the parser (`make docs`); every command's `--help` "
          "prints the same. How the commands fit together: [commands.md](commands.md).\n")


def reference() -> str:
    parser = build_parser()
    commands = subcommands(parser)
    for p in (parser, *commands.values()):
        p.formatter_class = lambda prog: argparse.HelpFormatter(prog, width=WIDTH)
    parts = [HEADER, "```text\n" + parser.format_help().rstrip() + "\n```\n"]
    for name, command in commands.items():
        parts.append(f"## sddpm {name}\n\n```text\n{command.format_help().rstrip()}\n```\n")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    from durableio import atomic_write

    path = (argv if argv is not None else sys.argv[1:] or ["docs/cli.md"])[0]
    with atomic_write(path, "w") as f:
        f.write(reference())
    print(f"cli reference -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
