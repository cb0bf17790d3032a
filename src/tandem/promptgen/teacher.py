"""Teacher data for the prompt generator: intent -> prompt examples for each task.

Three sources, all giving the example table (intent, task, prompt, target_items, source):

- `hf_teacher`: any Hugging Face causal LM (id or local path) with a few-shot prompt per task,
  as in the paper (a Llama-3 8B teacher there).
- `read_teacher_jsonl`: teacher outputs produced elsewhere, one JSON object a line; bad rows
  are quarantined with their reason, as every loader in tandem does.
- `catalogue_teacher`: an OFFLINE DEMO teacher built from the catalogue with templates, for
  tests and smoke runs where no LLM is at hand. It is not an LLM and its prompts are not of
  teacher quality; it deliberately mixes lengths and writes a share of prompts from a *sibling*
  item (same first topic) and a share from an *unrelated* item, so that hindsight relabelling
  finds graded relevance (on-target, partial, off-target) as a real teacher's varying quality gives.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from tandem.promptgen import TASKS

COLUMNS = ["intent", "task", "prompt", "target_items", "source"]
CATALOGUE_SOURCE = "catalogue-teacher"

_INTENTS = {
    "search": (
        "I need something for {topic} like {title}",
        "looking for a {title}",
        "where can I find {topic} items such as {title}",
    ),
    "recommendation": (
        "show me more things like {title}",
        "I liked {title}, what else is there in {topic}",
        "suggest items similar to {title}",
    ),
    "image": (
        "draw me a {title}",
        "make a picture of {topic}: {title}",
        "I want an image of a {title}",
    ),
}

DEFAULT_FEW_SHOT: dict[str, list[tuple[str, str]]] = {
    "search": [
        ("I need running shoes for a marathon", "lightweight marathon running shoes"),
        ("looking for a quiet hotel near the beach in Lisbon", "quiet beach hotel Lisbon"),
    ],
    "recommendation": [
        ("I liked the red wool scarf, what else is there", "items like red wool scarf in winter accessories"),
        ("show me more hotels like the Grand Palace", "hotels similar to Grand Palace, luxury city centre"),
    ],
    "image": [
        ("draw me a cosy cabin", "a cosy wooden cabin in a snowy forest at dusk, warm light, detailed illustration"),
        ("picture of a blue mug", "a glossy blue ceramic mug on a wooden table, soft daylight, product photo"),
    ],
}
_TASK_WORDS = {
    "search": "a short web search query",
    "recommendation": "a recommendation request naming similar items",
    "image": "a descriptive text-to-image prompt",
}


def _as_list(value: object) -> list:
    """A catalogue list cell as a list; the house parser, imported here because tandem.models.base
    brings torch and this module should stay light to import."""
    from tandem.models.base import as_list as parse

    return parse(value)


def _item_words(row: pd.Series) -> tuple[str, str, str]:
    title = str(row.get("title", "") or "").strip()
    topics = [str(t) for t in _as_list(row.get("topics"))]
    content = str(row.get("content", "") or "").strip()
    return title, (topics[0] if topics else title), content


def item_prompt(task: str, row: pd.Series, style: int) -> str:
    """A prompt for `row`; style 0/1/2 writes a short/medium/long one (before relabelling measures it)."""
    title, topic, content = _item_words(row)
    topics = " ".join(str(t) for t in _as_list(row.get("topics")))
    tail = " ".join(title.split()[-3:])  # a title's last words name the kind of item: short prompts use them
    if task == "search":
        texts = (
            f"{topic} {title.split()[0] if title else ''}",
            f"{title} {topics}",
            f"best {title} for {topic} with {content}, compare prices and reviews near me",
        )
    elif task == "recommendation":
        texts = (
            f"more {tail}",
            f"items like {title} in {topic}",
            f"recommend items like {title} in {topic}, similar to {content}, same style and price range",
        )
    else:
        texts = (
            f"{tail}",
            f"a {title}, {topics}, photo",
            f"a detailed picture of a {title} ({content}), {topics}, studio lighting, sharp focus, high resolution",
        )
    return " ".join(texts[style].split())


def _other_index(catalog: pd.DataFrame, i: int, rng: np.random.Generator) -> int:
    """An item whose title shares no word with item i's where one exists: an off-target prompt source."""
    words = set(str(catalog.iloc[i].get("title", "")).lower().split())
    candidates = [
        j
        for j in range(len(catalog))
        if j != i and not words & set(str(catalog.iloc[j].get("title", "")).lower().split())
    ]
    if not candidates:
        candidates = [j for j in range(len(catalog)) if j != i]
    return int(rng.choice(candidates))


def _sibling_index(catalog: pd.DataFrame, i: int, rng: np.random.Generator, first_topics: list[str]) -> int:
    """Another item with item i's first topic (same kind, different product) where one exists: a
    partially relevant prompt source; else an unrelated item."""
    candidates = [j for j, t in enumerate(first_topics) if j != i and t == first_topics[i]]
    return int(rng.choice(candidates)) if candidates else _other_index(catalog, i, rng)


def catalogue_teacher(
    catalog: pd.DataFrame, n: int, seed: int = 0, off_target: float = 0.3, partial: float = 0.3
) -> pd.DataFrame:
    """`n` OFFLINE DEMO examples from catalogue templates (see the module docstring): tasks in turn,
    lengths drawn at random; a share `partial` of prompts is written from a sibling item (same first
    topic) and a share `off_target` from an unrelated item, while target_items stays the intent's own
    item, so those examples score lower on relevance."""
    if "item_id" not in catalog.columns or "title" not in catalog.columns:
        raise ValueError("catalog needs the columns item_id and title (catalogue contract); pass a loaded catalogue")
    if len(catalog) < 2:
        raise ValueError(f"catalog has {len(catalog)} items; catalogue_teacher needs at least 2")
    if n < 1:
        raise ValueError(f"n={n}; ask for at least 1 example")
    if not (0.0 <= off_target <= 1.0 and 0.0 <= partial <= 1.0 and off_target + partial <= 1.0):
        raise ValueError(f"off_target={off_target}, partial={partial}; use shares in [0, 1] whose sum is <= 1")
    catalog = catalog.reset_index(drop=True)
    first_topics = [_item_words(row)[1] for _, row in catalog.iterrows()]
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(n):
        task = TASKS[k % len(TASKS)]
        i = int(rng.integers(len(catalog)))
        title, topic, _ = _item_words(catalog.iloc[i])
        templates = _INTENTS[task]
        intent = templates[int(rng.integers(len(templates)))].format(title=title, topic=topic)
        draw = rng.random()
        if draw < off_target:
            source_row = catalog.iloc[_other_index(catalog, i, rng)]
        elif draw < off_target + partial:
            source_row = catalog.iloc[_sibling_index(catalog, i, rng, first_topics)]
        else:
            source_row = catalog.iloc[i]
        prompt = item_prompt(task, source_row, int(rng.integers(3)))
        rows.append((intent, task, prompt, [str(catalog.iloc[i]["item_id"])], CATALOGUE_SOURCE))
    return pd.DataFrame(rows, columns=COLUMNS)


def few_shot_text(task: str, intent: str, few_shot: dict[str, list[tuple[str, str]]]) -> str:
    """The few-shot prompt a teacher LM continues: examples of the task, then the intent."""
    lines = [f"Write {_TASK_WORDS[task]} for each intent.", ""]
    for ex_intent, ex_prompt in few_shot.get(task, []):
        lines += [f"Intent: {ex_intent}", f"Prompt: {ex_prompt}", ""]
    lines += [f"Intent: {intent}", "Prompt:"]
    return "\n".join(lines)


def hf_teacher(
    model: str,
    intents: Sequence[str],
    tasks: Sequence[str],
    target_items: Sequence[Sequence[str]] | None = None,
    few_shot: dict[str, list[tuple[str, str]]] | None = None,
    max_new_tokens: int = 48,
    batch_size: int = 8,
    temperature: float = 0.7,
    seed: int = 0,
    device: str = "",
    dtype: str = "",
) -> pd.DataFrame:
    """Teacher examples from a Hugging Face causal LM (`model`: hub id or local path): one prompt
    per (intent, task), generated from a few-shot prompt; only the new tokens are decoded and cut
    at the first newline. temperature 0 decodes greedily. dtype: float32, bfloat16 or float16; '' =
    bfloat16 on a GPU, float32 on CPU."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tandem.models.hub import load_pretrained

    if len(intents) != len(tasks):
        raise ValueError(f"intents ({len(intents)}) and tasks ({len(tasks)}) must have the same length")
    if target_items is not None and len(target_items) != len(intents):
        raise ValueError(f"target_items ({len(target_items)}) must have one list per intent ({len(intents)})")
    bad = sorted({t for t in tasks if t not in TASKS})
    if bad:
        raise ValueError(f"tasks {bad} are not in {TASKS}")
    if batch_size < 1 or max_new_tokens < 1 or temperature < 0:
        raise ValueError("batch_size and max_new_tokens must be >= 1 and temperature >= 0")
    if dtype not in ("", "float32", "bfloat16", "float16"):
        raise ValueError(f"dtype {dtype!r} is not float32, bfloat16 or float16 ('' picks by device)")
    few_shot = DEFAULT_FEW_SHOT if few_shot is None else few_shot
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tok = load_pretrained(AutoTokenizer, model, "teacher model")
    tok.padding_side = "left"  # generation continues from the right end of every row
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    # bf16 on a GPU halves an 8B teacher's memory (~16 GB instead of ~32 GB); CPU kernels want fp32
    dtype = dtype or ("bfloat16" if str(dev).startswith("cuda") else "float32")
    lm = load_pretrained(AutoModelForCausalLM, model, "teacher model", dtype=getattr(torch, dtype)).to(dev).eval()
    torch.manual_seed(seed)
    texts = [few_shot_text(t, i, few_shot) for i, t in zip(intents, tasks, strict=True)]
    prompts: list[str] = []
    for start in range(0, len(texts), batch_size):
        enc = tok(texts[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(dev) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        with torch.inference_mode():
            out = lm.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id, **sampling)
        new = out[:, enc["input_ids"].shape[1] :]
        for text in tok.batch_decode(new, skip_special_tokens=True):
            prompts.append(text.strip().split("\n", 1)[0].strip())
    targets = [list(map(str, t)) for t in target_items] if target_items is not None else [[] for _ in intents]
    return pd.DataFrame(
        {"intent": list(intents), "task": list(tasks), "prompt": prompts, "target_items": targets, "source": model}
    )


def read_teacher_jsonl(path: str | Path, prompts: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Teacher outputs from JSONL (keys intent, task, prompt; optional target_items, source):
    (kept examples, quarantined rows with `line`, `raw` and `reason`). With `prompts=False` the file
    holds intents for a teacher to write prompts for: `prompt` is neither required nor kept (the
    kept table then has the columns intent, task, target_items)."""
    path = Path(path)
    what = "teacher JSONL" if prompts else "intents JSONL"
    if not path.is_file():
        raise ValueError(f"{what} {path} does not exist; pass a file with one JSON object a line")
    required = ("intent", "task", "prompt") if prompts else ("intent", "task")
    kept, bad = [], []
    with path.open(encoding="utf-8") as f:
        for n, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            reason = None
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as e:
                row, reason = None, f"bad JSON: {e.msg}"
            if reason is None and not isinstance(row, dict):
                reason = "not a JSON object"
            if reason is None:
                missing = [k for k in required if k not in row]
                targets = row.get("target_items", [])
                if missing:
                    reason = f"missing key {missing[0]!r}"
                elif row["task"] not in TASKS:
                    reason = f"unknown task {row['task']!r} (use one of {TASKS})"
                elif prompts and not str(row["prompt"] or "").strip():
                    reason = "empty prompt"
                elif not str(row["intent"] or "").strip():
                    reason = "empty intent"
                elif not isinstance(targets, list):
                    reason = "target_items is not a list"
            if reason is not None:
                bad.append({"line": n, "raw": raw.rstrip("\n"), "reason": reason})
                continue
            kept.append(
                {
                    "intent": str(row["intent"]).strip(),
                    "task": row["task"],
                    "prompt": str(row["prompt"]).strip() if prompts else None,
                    "target_items": [str(t) for t in targets],
                    "source": str(row.get("source", f"jsonl:{path.name}")),
                }
            )
    columns = COLUMNS if prompts else ["intent", "task", "target_items"]
    return pd.DataFrame(kept, columns=columns), pd.DataFrame(bad, columns=["line", "raw", "reason"])
