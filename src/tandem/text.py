"""How catalogue rows become text for the two towers (one place, so train and serve agree)."""

from __future__ import annotations

import math
from collections.abc import Iterable

SEPARATOR = " | "


def _clean(text: object) -> str:
    """Collapse whitespace; None / NaN / non-strings become '' or their str()."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return ""
    return " ".join(str(text).split())


def item_text(title: str, topics: Iterable[str] | None, content: str) -> str:
    """'title | topic1, topic2 | content', leaving out the empty parts."""
    topic_part = ", ".join(t for t in (_clean(t) for t in (topics if topics is not None else ())) if t)
    parts = (_clean(title), topic_part, _clean(content))
    return SEPARATOR.join(p for p in parts if p)


def query_text(title: str) -> str:
    """The text the query tower sees: the (cleaned) title or the user's search text."""
    return _clean(title)
