"""NoteLLM-2's prompts (SEEDS.md §1): the templates as pieces (fixed text, placeholders, the note's fields)
and how a note's fields give way when a prompt is too long."""

from __future__ import annotations

# Placeholder ids in collated `input_ids` (never real token ids): `forward` replaces IMG by the
# connector's visual embeddings and IMG_EMB by the learned <IMG_EMB> embedding.
IMG = -1
IMG_EMB = -2

# Prompt templates (SEEDS.md §1) as pieces: fixed text, placeholders and the item's fields.
BASIC = (
    "Note content: {'image': ",
    IMG,
    ", 'title': '",
    "title",
    "', 'topic': '",
    "topic",
    "', 'content': '",
    "content",
    "'}. Compress this note into one word:\"",
)
MICL = (
    "Note content: {'image': ",
    IMG,
    '}, Compress this note into one word: "',
    IMG_EMB,
    "\". Note content: {'title': '",
    "title",
    "', 'topic': '",
    "topic",
    "', 'content': '",
    "content",
    "'}. Compress this note into one word: \"",
)
FIELDS = ("title", "topic", "content")
CUT_ORDER = ("content", "topic", "title")  # what gives way first when the prompt is too long


def truncate(values: dict[str, list[int]], budget: int) -> dict[str, list[int]]:
    over = sum(len(v) for v in values.values()) - budget
    for name in CUT_ORDER:
        if over <= 0:
            break
        cut = min(over, len(values[name]))
        values[name] = values[name][: len(values[name]) - cut]
        over -= cut
    return values
