"""The argparse types of ``lightning-reg``: the checks of :mod:`lightning_reg.utilities.checks`, on
command-line text.

:func:`argument_type` turns a check into an argparse ``type``: the text is parsed, the check runs, and a
refused value becomes argparse's error for the flag, with the check's own ``expected`` phrase:
``argument --epochs: invalid value '0' (expected an integer >= 1)``.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from lightning_reg.utilities.checks import InvalidArgumentError, check_integer, check_number

__all__ = [
    "argument_type",
    "check_png_path",
    "parse_png_path",
    "parse_positive_int",
    "parse_seed",
    "parse_strength",
]

_Value = TypeVar("_Value")


def argument_type(
    check: Callable[[str, object], _Value], parse: Callable[[str], object] = float
) -> Callable[[str], _Value]:
    """An argparse ``type`` that parses the text with ``parse`` and checks the value with ``check``.

    Text that ``parse`` refuses goes to the check as it is, which refuses it in turn.

    Args:
        check: a check of :mod:`lightning_reg.utilities.checks`, called as ``check(name, value)``.
        parse: turns the text into the value to check (``float``, ``int``, ``str``).

    >>> parse_epochs = argument_type(functools.partial(check_integer, minimum=1), int)
    >>> parse_epochs("3")
    3
    >>> parse_epochs("ten")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: invalid value 'ten' (expected an integer >= 1)
    """

    def convert(text: str) -> _Value:
        try:
            value = parse(text)
        except ValueError:
            value = text
        try:
            return check("value", value)
        except InvalidArgumentError as error:
            raise argparse.ArgumentTypeError(f"invalid value {text!r} (expected {error.expected})") from None

    return convert


def check_png_path(name: str, value: object) -> Path:
    """``value`` as a path whose directory exists, so that a figure can be written there at the end.

    >>> check_png_path("plot", "/no/such/dir/demo.png")
    Traceback (most recent call last):
    ...
    lightning_reg.InvalidArgumentError: Invalid plot: '/no/such/dir/demo.png' (expected a path in ...)
    """
    if not isinstance(value, (str, Path)) or not str(value) or not Path(value).parent.is_dir():
        raise InvalidArgumentError(name, value, "a path in an existing directory")
    return Path(value)


#: A strength: a finite number >= 0.
parse_strength = argument_type(check_number)
#: A count of epochs or trials: an integer >= 1.
parse_positive_int = argument_type(functools.partial(check_integer, minimum=1), int)
#: A seed: an integer from 0 to 2**32 - 1.
parse_seed = argument_type(functools.partial(check_integer, minimum=0, maximum=2**32 - 1), int)
#: Where to write a figure: a path in an existing directory.
parse_png_path = argument_type(check_png_path, str)
