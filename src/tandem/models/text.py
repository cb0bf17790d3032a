"""How catalogue rows become text for the two towers (one place, so train and serve agree)."""

from __future__ import annotations

import math
from collections.abc import Iterable

SEPARATOR = " | "


def clean(text: object) -> str:
    """Collapse whitespace; None / NaN / non-strings become '' or their str()."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return ""
    return " ".join(str(text).split())


def item_text(title: str, topics: Iterable[str] | None, content: str) -> str:
    """'title | topic1, topic2 | content', leaving out the empty parts."""
    topic_part = ", ".join(t for t in (clean(t) for t in (topics if topics is not None else ())) if t)
    parts = (clean(title), topic_part, clean(content))
    return SEPARATOR.join(p for p in parts if p)


def query_text(title: str) -> str:
    """The text the query tower sees: the (cleaned) title or the user's search text."""
    return clean(title)


def geography(city: object, country: object) -> str:
    """'city, country', leaving out the empty parts ('' when neither is known)."""
    return ", ".join(p for p in (clean(city), clean(country)) if p)


def item_text_with_geography(
    title: str, topics: Iterable[str] | None, content: str, city: object = None, country: object = None
) -> tuple[str, list[tuple[int, int]]]:
    """HotelMatch's item text: 'title | city, country | topics | content', and the character
    spans [start, end) of the city and of the country in it (the masked-LM targets).

    The geography goes right after the title, not at the end, so that truncating a long
    description does not cut it. Without geography the text is `item_text`'s.
    """
    head, city, country = clean(title), clean(city), clean(country)
    geo = geography(city, country)
    text = SEPARATOR.join(p for p in (head, geo, item_text("", topics, content)) if p)
    start = len(head) + len(SEPARATOR) if head and geo else 0
    spans = []
    if city:
        spans.append((start, start + len(city)))
        start += len(city) + len(", ")
    if country:
        spans.append((start, start + len(country)))
    return text, spans
