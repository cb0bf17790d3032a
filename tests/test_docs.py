"""Every relative link in README.md and docs/*.md points at a file that exists (anchors are not checked)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def relative_links(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code blocks hold no links
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # URLs, mailto:, anchors within the page
        yield target.split("#", 1)[0]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    missing = [t for t in relative_links(page) if not (page.parent / t).exists()]
    assert not missing, f"{page.relative_to(ROOT)} links to missing files: {missing}"


def test_readme_is_short_and_links_every_docs_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    pages = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert pages and all(f"(docs/{name})" in readme for name in pages), pages


def test_every_reliability_row_names_a_test_that_exists():
    """docs/reliability.md: the last cell of each table row names its tests (`test_x`, `tests/f.py`,
    `tests/f.py::test_x`), and each one exists, so a row cannot outlive the test behind it."""
    sources = {p.relative_to(ROOT).as_posix(): p.read_text() for p in (ROOT / "tests").glob("*.py")}
    rows = [ln for ln in (ROOT / "docs" / "reliability.md").read_text().splitlines() if ln.startswith("| ")]
    body = [ln for ln in rows if not ln.startswith(("| input tried", "| kill point"))]
    assert body, "no table rows"
    for row in body:
        names = re.findall(r"`([^`]+)`", row.rstrip(" |").rsplit("|", 1)[-1])
        assert names, f"row names no test: {row[:80]}"
        for name in names:
            path, _, func = (
                name.rpartition("::") if "::" in name else ((name, "", "") if ".py" in name else ("", "", name))
            )
            where = {path: sources.get(path, "")} if path else sources
            assert path == "" or path in sources, f"{name}: no such test file"
            assert not func or any(f"def {func}(" in text for text in where.values()), f"{name}: no such test"
