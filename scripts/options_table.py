"""The README's table of every command-line option, generated from the parser (defaults read from the options
dataclasses, as --help shows them).

    .venv/bin/python scripts/options_table.py            # print the tables
    .venv/bin/python scripts/options_table.py --write    # replace them in README.md between the markers
"""
import argparse
import re
import sys
from pathlib import Path

from greenprune.cli import build_parser

BEGIN, END = "<!-- options:begin -->", "<!-- options:end -->"


def subcommands(ap: argparse.ArgumentParser) -> dict:
    return next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction)).choices


def tables() -> str:
    out = []
    for name, p in subcommands(build_parser()).items():
        out += [f"`greenprune {name}`", "", "| option | default | meaning |", "|---|---|---|"]
        for a in p._actions:
            if not a.option_strings or a.dest == "help":
                continue
            text = (a.help or "").replace("|", "\\|").replace("%%", "%")
            m = re.search(r"\s*\((?:default: )([^()]*(?:\([^()]*\)[^()]*)*)\)\s*$", text)
            default = "required" if a.required else (m.group(1) if m else "")
            what = text[: m.start()] if m else re.sub(r"\s*\(default: [^)]*\)", "", text)
            if a.choices:
                what += f" ({' / '.join(map(str, a.choices))})"
            out.append(f"| `{', '.join(a.option_strings)}` | {default.replace('|', chr(92) + '|')} | {what.strip()} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args()
    if not a.write:
        sys.stdout.write(tables())
        return
    readme = Path(__file__).resolve().parents[1] / "README.md"
    s = readme.read_text()
    head, rest = s.split(BEGIN, 1)
    readme.write_text(head + BEGIN + "\n" + tables() + END + rest.split(END, 1)[1])


if __name__ == "__main__":
    main()
