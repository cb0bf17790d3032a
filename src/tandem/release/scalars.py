"""The items' scalar fields in Milvus (title, category, city, ...): their values as stored, and the
filter expressions searches use on them."""

from __future__ import annotations

MAX_BYTES = 1024  # VARCHAR max_length of a scalar field (Milvus counts bytes)


def quote(value: str) -> str:
    """A Milvus string literal: backslashes, quotes and line breaks escaped."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t") + '"'


def filter_expression(filters: dict[str, str | list[str]], allowed: tuple[str, ...]) -> str:
    """A Milvus boolean expression from {field: value or list of values} (AND of the fields;
    a list matches any of its values); values are quoted, so no input can change the expression."""
    parts = []
    for name, value in filters.items():
        if name not in allowed:
            raise ValueError(f"filter field {name!r} is unknown; filter on one of: {', '.join(allowed)}")
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, (list, tuple)) or not values or not all(isinstance(v, str) for v in values):
            raise ValueError(f"filter {name!r}: give a string or a non-empty list of strings, got {value!r}")
        if len(values) == 1:
            parts.append(f"{name} == {quote(values[0])}")
        else:
            parts.append(f"{name} in [{', '.join(quote(v) for v in values)}]")
    return " and ".join(parts)


def clip(value) -> str:
    """A scalar value as stored: '' for missing, cut to MAX_BYTES of UTF-8 on a character boundary."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return str(value).encode()[:MAX_BYTES].decode(errors="ignore")


def catalog_scalars(catalog, fields: tuple[str, ...]) -> dict[str, list[str]]:
    """The scalar columns of a normalised catalogue: `category` is its first topic; a field the
    catalogue lacks (e.g. city) is "" for every item."""

    def first(topics) -> str:
        return clip(topics[0]) if topics is not None and len(topics) else ""

    out = {}
    for field in fields:
        if field == "category" and "category" not in catalog and "topics" in catalog:
            out[field] = [first(t) for t in catalog["topics"]]
        elif field in catalog:
            out[field] = [clip(v) for v in catalog[field]]
        else:
            out[field] = [""] * len(catalog)
    return out
