"""Prompt generation with upside-down RL (SEEDS.md §3): a small GPT-2 that turns an intent into
prompts for search, recommendation or image generation, conditioned on the outcome wanted.

The vocabulary shared by the data, the model and the evaluation lives here.
"""

from __future__ import annotations

TASKS = ("search", "recommendation", "image")
LENGTHS = ("short", "medium", "long")
RELEVANCE = ("low", "medium", "high")
PRESETS = ("tiny", "small", "base")  # generator sizes (tandem.promptgen.train.preset_config)


def command(task: str, length: str, relevance: str) -> str:
    """The command tokens that condition the generator: what to write and which outcome is wanted."""
    checks = (("task", task, TASKS), ("length", length, LENGTHS), ("relevance", relevance, RELEVANCE))
    for name, value, allowed in checks:
        if value not in allowed:
            raise ValueError(f"{name} {value!r} is not one of {allowed}")
    return f"<task={task}> <len={length}> <rel={relevance}>"
