"""Griffe extensions that render the package's docstrings as they read at run time and in a terminal.

The docstrings are written for ``help()`` and doctest: Sphinx roles (``:class:`Regularizer```), bare
``>>>`` examples, ``Example::`` blocks and an ``@options@`` line that
:func:`lightning_reg.options.document_options` fills in at import. Griffe reads the source, so these
extensions make the same docstrings read well in the API reference; the source stays as it is.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

from lightning_reg.options import OPTIONS_PLACEHOLDER, options_section

#: ``:class:`~a.b.C``` and friends; the ``~`` form shows the last name only, as Sphinx does.
ROLE = re.compile(r":(?:class|func|meth|attr|mod|data|exc|obj):`(~?)([^`]+)`")
#: A line that reST ends with ``::`` before a literal block; ``Example::`` opens an examples section.
LITERAL_INTRO = re.compile(r"^(\s*)(.*[^:])::\s*$")
EXAMPLES_TITLE = {"Example", "Examples"}


def indent_of(line: str) -> int:
    return len(line) - len(line.lstrip())


def role_as_code(match: re.Match[str]) -> str:
    short, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


def fence_examples(lines: list[str]) -> list[str]:
    """Fence each run of ``>>>`` lines and their output (up to a blank line) outside an examples section.

    A run under an ``Examples:`` title is left alone: griffe's Google parser reads those itself.
    """
    out: list[str] = []
    in_examples = False
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.strip() and indent_of(line) == 0:
            in_examples = line.strip() == "Examples:"
        if in_examples or not line.lstrip().startswith(">>>"):
            out.append(line)
            index += 1
            continue
        margin = indent_of(line)
        run: list[str] = []
        while index < len(lines) and lines[index].strip():
            run.append(lines[index][margin:])
            index += 1
        out += ["```pycon", *run, "```"]
    return out


def readable(text: str) -> str:
    """The docstring ``text`` with roles as code, ``::`` intros as ``:`` and examples fenced."""
    expanded = "\n".join(
        options_section(line[: indent_of(line)]) if line.strip() == OPTIONS_PLACEHOLDER else line
        for line in text.splitlines()
    )
    lines = []
    for line in ROLE.sub(role_as_code, expanded).splitlines():
        intro = LITERAL_INTRO.match(line)
        if intro is not None:
            indent, words = intro.groups()
            line = f"{indent}Examples:" if words.strip() in EXAMPLES_TITLE else f"{indent}{words}:"
        lines.append(line)
    return "\n".join(fence_examples(lines))


class ReadableDocstrings(griffe.Extension):
    """Rewrite each loaded docstring with :func:`readable`; parsing happens later, on the result."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = readable(obj.docstring.value)
