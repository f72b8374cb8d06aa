"""Command-line flags built from a segmenter's options dataclass.

Each field of a method's frozen options dataclass becomes ``--field-name`` with the
field's ``metadata["help"]`` as help text. Booleans get ``--x/--no-x``; tuples of numbers
take several values; a tuple of 3-tuples (world coordinates) is given by repeating the
flag: ``--seeds 10 -20 5 --seeds -10 -20 5``.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Sequence
from typing import Any

#: Flags the subcommands already own; a method field with one of these names is prefixed.
RESERVED = frozenset({"input", "output", "force", "method", "skullstripped", "volume", "series", "help", "quiet",
                      "structures"})  # fmt: skip


def method_from_argv(argv: Sequence[str], default: str | None) -> str | None:
    """Return the value of ``--method`` in ``argv`` (either ``--method X`` or ``--method=X``)."""
    for i, arg in enumerate(argv):
        if arg == "--method" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--method="):
            return arg.split("=", 1)[1]
    return default


def _flag(method: str, name: str) -> str:
    base = name.replace("_", "-")
    return f"--{method}-{base}" if name in RESERVED else f"--{base}"


def _scalar(tp: Any) -> Any:
    """Strip ``X | None`` to ``X``."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return args[0] if len(args) == 1 else str
    return tp


def _add_field(group: argparse._ArgumentGroup, method: str, f: dataclasses.Field[Any], tp: Any) -> None:
    help_text = str(f.metadata.get("help", ""))
    default = f.default if f.default is not dataclasses.MISSING else None
    flag, dest = _flag(method, f.name), f"opt__{f.name}"
    tp = _scalar(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is bool:
        group.add_argument(
            flag,
            dest=dest,
            action=argparse.BooleanOptionalAction,
            default=None,
            help=f"{help_text} (default: {default})",
        )
    elif origin is typing.Literal:
        group.add_argument(flag, dest=dest, choices=list(args), default=None, help=f"{help_text} (default: {default})")
    elif origin is tuple and args and typing.get_origin(args[0]) is tuple:
        inner = typing.get_args(args[0])
        group.add_argument(
            flag,
            dest=dest,
            action="append",
            nargs=len(inner),
            type=inner[0],
            default=None,
            metavar=tuple("XYZ"[: len(inner)]) if len(inner) <= 3 else None,
            help=f"{help_text} (repeat for several)",
        )
    elif origin is tuple:
        group.add_argument(
            flag, dest=dest, nargs="+", type=args[0], default=None, help=f"{help_text} (default: {default})"
        )
    else:
        group.add_argument(
            flag, dest=dest, type=tp, default=None, metavar=f.name.upper(), help=f"{help_text} (default: {default})"
        )


def add_method_options(parser: argparse.ArgumentParser, method: str, options_type: type[Any]) -> None:
    """Add one flag per field of ``options_type`` to ``parser`` in a group named after ``method``."""
    if not dataclasses.is_dataclass(options_type):
        return
    group = parser.add_argument_group(f"options of --method {method}")
    hints = typing.get_type_hints(options_type)
    for f in dataclasses.fields(options_type):
        _add_field(group, method, f, hints[f.name])


def options_from_args(args: argparse.Namespace, options_type: type[Any]) -> Any:
    """Build an ``options_type`` instance from the parsed flags (unset flags keep the defaults)."""
    if not dataclasses.is_dataclass(options_type):
        return options_type()
    given = {}
    for f in dataclasses.fields(options_type):
        value = getattr(args, f"opt__{f.name}", None)
        if value is not None:
            given[f.name] = (
                tuple(tuple(v) for v in value)
                if isinstance(value, list) and value and isinstance(value[0], list)
                else (tuple(value) if isinstance(value, list) else value)
            )
    return options_type(**given)
