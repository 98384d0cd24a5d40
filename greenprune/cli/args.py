"""Command-line options whose defaults come from the options dataclasses (each default lives there once), and
say their default in --help."""
from __future__ import annotations

import argparse


def _shown(value) -> str:
    if isinstance(value, (tuple, list)):
        return ", ".join(map(str, value)) or "none"
    return "none" if value is None else str(value)


def option(p: argparse.ArgumentParser, flag: str, default, help: str, **kw) -> None:
    """An option with the given default (read from an options dataclass by the caller), shown in its help."""
    p.add_argument(flag, default=default, help=f"{help} (default: {_shown(default)})", **kw)


def switch(p: argparse.ArgumentParser, flag: str, help: str, dest: str = None, default: bool = False) -> None:
    """A flag that turns something on (or, named --no-..., off): the default is the other state."""
    kw = {"dest": dest} if dest else {}
    p.add_argument(flag, action="store_true", default=default, help=f"{help} (default: off)", **kw)


def tri_state(p: argparse.ArgumentParser, name: str, dest: str, help: str, auto: str) -> None:
    """--NAME / --no-NAME with a third, automatic state (None) when neither is given, explained by `auto`."""
    p.add_argument(f"--{name}", dest=dest, action="store_true", default=None, help=f"{help} (default: {auto})")
    p.add_argument(f"--no-{name}", dest=dest, action="store_false", help=f"turn {name.replace('-', ' ')} off")


def ints(s: str) -> list[int]:
    try:
        return [int(x) for x in s.replace(",", " ").split()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected integers, got {s!r}") from e
