"""The CLI reference (``docs/cli.md``), generated from the ``eofm`` argument parser itself.

Regenerate with ``python -m eofm.cli.reference docs/cli.md``; a test fails when the file is
out of date. The tables are built from the parser's actions, not from ``--help`` text, so
they do not depend on the Python version's help formatting.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

HEADER = """\
# CLI reference

Generated from the code by `python -m eofm.cli.reference docs/cli.md`; do not edit by hand.
Every command also prints this with `--help`. Errors are one line starting `eofm: error:`
(exit status 2); an interrupted command exits with status 130.
"""


def _subcommands(
    parser: argparse.ArgumentParser, prefix: str
) -> Iterator[tuple[str, argparse.ArgumentParser, str]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                full = f"{prefix} {name}"
                yield full, sub, helps.get(name, "")
                yield from _subcommands(sub, full)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _option_row(action: argparse.Action) -> str | None:
    if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
        return None
    if action.help == argparse.SUPPRESS:
        return None
    if action.option_strings:
        name = ", ".join(f"`{o}`" for o in action.option_strings)
        takes_value = action.nargs != 0
        if takes_value:
            metavar = action.metavar or action.dest.upper()
            name += f" `{metavar}`" if isinstance(metavar, str) else ""
    else:
        name = f"`{action.metavar or action.dest}`"
    help_text = _cell(action.help or "")
    if action.choices and not isinstance(action.choices, dict):
        help_text += f" (one of: {', '.join(str(c) for c in action.choices)})"
    default = action.default
    shown = ""
    if action.option_strings and action.nargs != 0 and default not in (None, argparse.SUPPRESS):
        shown = f"`{default}`"
    if action.required and action.option_strings:
        shown = "required"
    return f"| {name} | {help_text} | {shown} |"


def _command_section(name: str, parser: argparse.ArgumentParser, summary: str) -> list[str]:
    lines = [f"## `{name}`", ""]
    text = parser.description or summary
    if text:
        lines += [_cell(text), ""]
    rows = [r for r in (_option_row(a) for a in parser._actions) if r]
    has_sub = any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)
    if rows:
        lines += ["| argument | meaning | default |", "|---|---|---|", *rows, ""]
    elif has_sub:
        lines += ["Sub-commands below.", ""]
    if parser.epilog:
        lines += ["```text", parser.epilog.rstrip(), "```", ""]
    return lines


def cli_reference() -> str:
    """The markdown CLI reference of every ``eofm`` command."""
    from eofm.cli.main import build_parser

    parser = build_parser()
    lines = [HEADER, "| command | what it does |", "|---|---|"]
    commands = list(_subcommands(parser, "eofm"))
    for name, sub, summary in commands:
        anchor = name.replace(" ", "-")
        lines.append(f"| [`{name}`](#{anchor}) | {_cell(summary or sub.description or '')} |")
    lines.append("")
    for name, sub, summary in commands:
        lines += _command_section(name, sub, summary)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the reference to the path given (stdout when none)."""
    args = sys.argv[1:] if argv is None else argv
    text = cli_reference()
    if args:
        Path(args[0]).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
