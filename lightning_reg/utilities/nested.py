"""Walking the nested lists, tuples and dicts that models and hooks return."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["leaves"]


def leaves(output: Any) -> Iterator[Any]:
    """Every object inside nested lists, tuples and mappings (a mapping's values), depth first;
    ``None`` is skipped.

    >>> list(leaves([1, (2, {"a": 3, "b": None}), {"c": [4]}]))
    [1, 2, 3, 4]
    """
    if isinstance(output, Mapping):
        for value in output.values():
            yield from leaves(value)
    elif isinstance(output, list | tuple):
        for value in output:
            yield from leaves(value)
    elif output is not None:
        yield output
