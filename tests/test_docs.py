"""The documentation's code runs: every ```python block of the README and of docs/, page by page.

A page's ```python blocks run in order in one namespace, as a reader would paste them, in a temporary
folder. Fragments that need the reader's own code (``MyLitNet``) are fenced ```py instead: highlighted
the same, not run.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)


def blocks_of(page: Path) -> list[str]:
    """The ```python blocks of a page, in order."""
    return BLOCK.findall(page.read_text())


def test_blocks_are_found() -> None:
    text = "a\n```python\nx = 1\n```\n```py\nnot run\n```\n```python\ny = x\n```\n"
    assert BLOCK.findall(text) == ["x = 1\n", "y = x\n"]


@pytest.mark.parametrize("page", [p for p in PAGES if blocks_of(p)], ids=lambda p: str(p.relative_to(ROOT)))
def test_the_code_of_a_page_runs(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for number, block in enumerate(blocks_of(page), start=1):
        code = compile(block, f"{page.relative_to(ROOT)} (block {number})", "exec")
        exec(code, namespace)


def test_docstrings_are_rendered_as_they_read_at_run_time() -> None:
    """The API reference's griffe extension: roles become code, ``@options@`` the options, examples fenced."""
    import importlib.util

    from lightning_reg.options import OPTION_DOCS

    spec = importlib.util.spec_from_file_location("griffe_docstrings", ROOT / "docs" / "griffe_docstrings.py")
    assert spec is not None
    assert spec.loader is not None
    extension = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(extension)
    text = (
        "See :class:`~a.b.Thing` and :func:`f`.\n\nArgs:\n    @options@\n\nA loop::\n\n    >>> 1 + 1\n    2\n"
    )
    lines = extension.readable(text).splitlines()
    assert lines[:3] == ["See `Thing` and `f`.", "", "Args:"]
    assert lines[-6:] == ["A loop:", "", "```pycon", ">>> 1 + 1", "2", "```"]
    entries = [
        line.split(":")[0].strip() for line in lines[3:-7] if line.startswith("    ") and line[4] != " "
    ]
    assert entries == list(OPTION_DOCS)
