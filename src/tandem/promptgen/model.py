"""The prompt generator: a GPT-2 conditioned on command tokens (upside-down RL, SEEDS.md §3).

Each training sequence is `<task=..> <len=..> <rel=..> <intent> intent tokens <prompt> prompt tokens <eos>`,
with the command taken from the example's hindsight labels (task, length, relevance). The loss covers the
prompt tokens and `<eos>` only, so the model learns to write the prompt, not to predict the intent or the
command. At inference the caller asks for the outcome it wants (e.g. `relevance="high"`).

The byte-level BPE tokenizer is trained on the training texts at fit time (no download) and wrapped as a
`PreTrainedTokenizerFast` so HF `generate` (KV cache, batching, sampling) works unchanged.
torch / transformers / tokenizers are imported inside functions: importing this module stays light.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tandem.promptgen import LENGTHS, RELEVANCE, TASKS, command
from tandem.promptgen.tensors import CopyBias, pad_left, pad_right

INTENT, PROMPT, EOS, PAD = "<intent>", "<prompt>", "<eos>", "<pad>"
CONFIG_FILE = "generator.json"
REQUIRED_COLUMNS = ("intent", "task", "prompt", "length", "relevance")


def command_tokens() -> list[str]:
    """Every command token, e.g. `<task=search>`, `<len=short>`, `<rel=high>` (the same spelling as `command`)."""
    return [f"<task={t}>" for t in TASKS] + [f"<len={x}>" for x in LENGTHS] + [f"<rel={r}>" for r in RELEVANCE]


def special_tokens() -> list[str]:
    return [PAD, EOS, INTENT, PROMPT, *command_tokens()]


@dataclass(frozen=True)
class GeneratorConfig:
    n_layer: int = field(default=12, metadata={"help": "transformer blocks"})
    n_head: int = field(default=12, metadata={"help": "attention heads per block (must divide n_embd)"})
    n_embd: int = field(default=768, metadata={"help": "hidden width"})
    n_positions: int = field(default=256, metadata={"help": "longest sequence (command + intent + prompt + 3)"})
    vocab_size: int = field(default=24000, metadata={"help": "byte-level BPE vocabulary size (incl. specials)"})
    max_intent_tokens: int = field(default=64, metadata={"help": "intent tokens kept (longer intents are cut)"})
    max_prompt_tokens: int = field(default=96, metadata={"help": "prompt tokens kept in training; generation cap"})
    dropout: float = field(default=0.1, metadata={"help": "dropout on embeddings, attention and residuals"})

    def __post_init__(self):
        for name in ("n_layer", "n_head", "n_embd", "max_intent_tokens", "max_prompt_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"generator.{name} must be >= 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"generator.n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        floor = 256 + len(special_tokens())  # byte alphabet + specials
        if self.vocab_size < floor:
            raise ValueError(f"generator.vocab_size must be >= {floor} (bytes + special tokens), got {self.vocab_size}")
        need = 3 + 1 + self.max_intent_tokens + 1 + self.max_prompt_tokens + 1
        if self.n_positions < need:
            raise ValueError(
                f"generator.n_positions ({self.n_positions}) must be >= {need}: "
                "raise it or lower max_intent_tokens / max_prompt_tokens"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"generator.dropout must be in [0, 1), got {self.dropout}")

    @classmethod
    def base(cls) -> GeneratorConfig:
        """GPT-2 small shape: 12 x 12 heads x 768, ~104M parameters with a 24k vocabulary (paper: ~100M)."""
        return cls()

    @classmethod
    def small(cls) -> GeneratorConfig:
        """For CPU runs and demos: 4 layers x 4 heads x 256, ~3.9M parameters (trains in minutes)."""
        return cls(
            n_layer=4, n_head=4, n_embd=256, n_positions=128, vocab_size=4000, max_intent_tokens=32,
            max_prompt_tokens=48,
        )  # fmt: skip

    @classmethod
    def tiny(cls) -> GeneratorConfig:
        """For tests: 2 layers, 2 heads, 64 wide."""
        return cls(
            n_layer=2, n_head=2, n_embd=64, n_positions=64, vocab_size=400, max_intent_tokens=16,
            max_prompt_tokens=24, dropout=0.0,
        )  # fmt: skip


@dataclass(frozen=True)
class GeneratorTrainConfig:
    epochs: int = field(default=3, metadata={"help": "passes over the examples"})
    lr: float = field(default=5e-4, metadata={"help": "AdamW peak learning rate"})
    batch_size: int = field(default=32, metadata={"help": "sequences per optimiser step"})
    seed: int = field(default=0, metadata={"help": "seed for init, shuffling and dropout"})
    warmup_ratio: float = field(default=0.05, metadata={"help": "share of steps with linear warm-up, then cosine"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    grad_clip: float = field(default=1.0, metadata={"help": "max gradient L2 norm (0 = no clipping)"})
    device: str = field(default="", metadata={"help": "torch device to train on; '' = cuda when available, else cpu"})
    bf16: bool = field(default=True, metadata={"help": "bf16 autocast on a GPU that supports it (never on CPU)"})

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("generator train epochs and batch_size must be >= 1")
        if self.lr <= 0:
            raise ValueError(f"generator train lr must be > 0, got {self.lr}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"generator train warmup_ratio must be in [0, 1), got {self.warmup_ratio}")


def gpt2_config(cfg: GeneratorConfig, vocab_size: int, eos_id: int, pad_id: int):
    """The transformers GPT2Config for `cfg` (vocab_size = the trained tokenizer's real size)."""
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=vocab_size, n_positions=cfg.n_positions, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
        n_head=cfg.n_head, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
        bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=pad_id,
    )  # fmt: skip


def train_tokenizer(texts: Sequence[str], vocab_size: int):
    """A byte-level BPE trained on `texts`, with every special token, wrapped for HF (left padding)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens(),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=EOS,
        additional_special_tokens=[INTENT, PROMPT, *command_tokens()],
        padding_side="left",
    )


class PromptGenerator:
    """GPT-2 + BPE tokenizer. `fit(examples)`, then `generate(intents, task, length, relevance)`; `save` / `load`."""

    def __init__(self, config: GeneratorConfig | None = None):
        self.config = config or GeneratorConfig()
        self.tokenizer = None
        self.model = None

    # -- encoding -----------------------------------------------------------------------------

    def _ids(self, text: str, cap: int) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"][:cap]

    def encode_context(self, intent: str, task: str, length: str, relevance: str) -> list[int]:
        """Token ids of `command <intent> intent <prompt>`: what the model sees before writing."""
        cmd = command(task, length, relevance).split()
        conv = self.tokenizer.convert_tokens_to_ids
        return [*conv(cmd), conv(INTENT), *self._ids(intent, self.config.max_intent_tokens), conv(PROMPT)]

    def encode_example(self, intent: str, task: str, length: str, relevance: str, prompt: str):
        """(input_ids, labels): labels are -100 everywhere except the prompt tokens and `<eos>`."""
        context = self.encode_context(intent, task, length, relevance)
        target = [*self._ids(prompt, self.config.max_prompt_tokens), self.tokenizer.eos_token_id]
        return context + target, [-100] * len(context) + target

    # -- training -----------------------------------------------------------------------------

    def fit(
        self,
        examples,
        train_config: GeneratorTrainConfig | None = None,
        progress: bool | Callable[[dict], None] = False,
    ) -> dict:
        """Train tokenizer and model from scratch on relabelled examples; returns loss curve and timings."""
        import torch
        from transformers import GPT2LMHeadModel

        tc = train_config or GeneratorTrainConfig()
        missing = [c for c in REQUIRED_COLUMNS if c not in examples.columns]
        if missing:
            raise ValueError(f"examples lack columns {missing}: relabel them first (task, length, relevance)")
        if len(examples) == 0:
            raise ValueError("examples is empty: nothing to train on")
        rows = examples[list(REQUIRED_COLUMNS)].astype(str).to_dict("records")
        for r in rows:
            command(r["task"], r["length"], r["relevance"])  # ValueError names the bad column value

        device = torch.device(tc.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"generator train device {tc.device!r}: no CUDA device here; use '' or 'cpu'")
        # bf16 autocast keeps fp32 master weights; the GPU only speeds the matmuls up
        bf16 = tc.bf16 and device.type == "cuda" and torch.cuda.is_bf16_supported()
        torch.manual_seed(tc.seed)
        cfg = self.config
        self.tokenizer = train_tokenizer([r["intent"] for r in rows] + [r["prompt"] for r in rows], cfg.vocab_size)
        tok = self.tokenizer
        self.model = GPT2LMHeadModel(gpt2_config(cfg, len(tok), tok.eos_token_id, tok.pad_token_id)).to(device)
        encoded = [self.encode_example(r["intent"], r["task"], r["length"], r["relevance"], r["prompt"]) for r in rows]

        steps_per_epoch = math.ceil(len(encoded) / tc.batch_size)
        total = steps_per_epoch * tc.epochs
        warmup = int(tc.warmup_ratio * total)

        def schedule(step: int) -> float:  # linear warm-up, cosine decay to 0
            if step < warmup:
                return (step + 1) / (warmup + 1)
            return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

        opt = torch.optim.AdamW(self.model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        gen = torch.Generator().manual_seed(tc.seed)
        losses, start = [], time.perf_counter()
        self.model.train()
        for epoch in range(tc.epochs):
            order = torch.randperm(len(encoded), generator=gen).tolist()
            epoch_loss = 0.0
            for s in range(steps_per_epoch):
                batch = [encoded[i] for i in order[s * tc.batch_size : (s + 1) * tc.batch_size]]
                ids, labels, mask = (t.to(device) for t in pad_right(batch, tok.pad_token_id))
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    loss = self.model(input_ids=ids, attention_mask=mask, labels=labels).loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if tc.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
                opt.step()
                sched.step()
                epoch_loss += loss.item()
            losses.append(epoch_loss / steps_per_epoch)
            if callable(progress):
                progress({"epoch": epoch, "loss": losses[-1]})
            elif progress:
                print(f"generator epoch {epoch + 1}/{tc.epochs} loss {losses[-1]:.4f}")
        self.model.eval()
        return {
            "epoch_loss": losses,
            "steps": total,
            "examples": len(encoded),
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "vocab_size": len(tok),
            "device": str(device),
            "bf16": bf16,
            "seconds": time.perf_counter() - start,
        }

    # -- generation ---------------------------------------------------------------------------

    def generate(
        self,
        intents: Sequence[str],
        task: str,
        length: str = "medium",
        relevance: str = "high",
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        do_sample: bool = True,
        max_new_tokens: int | None = None,
        batch_size: int = 32,
        seed: int | None = None,
        use_cache: bool = True,
        copy_bias: float = 0.0,
    ) -> list[list[str]]:
        """`n` prompts per intent (one list per intent), via HF generate with left padding, stopping at `<eos>`.

        copy_bias is added to the logits of the row's own intent tokens it has not written yet: > 0 makes
        the prompt reuse the intent's words (a small model trained on few examples copies names it never
        saw poorly), < 0 steers away from them; 0 = plain sampling."""
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        if self.model is None:
            raise ValueError("the generator is not fitted: call fit() or PromptGenerator.load(dir) first")
        if isinstance(intents, str) or len(intents) == 0:
            raise ValueError("intents must be a non-empty list of strings")
        if n < 1 or batch_size < 1:
            raise ValueError(f"n and batch_size must be >= 1, got n={n}, batch_size={batch_size}")
        if do_sample and (temperature <= 0 or not 0 < top_p <= 1 or top_k < 0):
            raise ValueError("sampling needs temperature > 0, 0 < top_p <= 1 and top_k >= 0")
        command(task, length, relevance)  # validate before any work
        if seed is not None:
            torch.manual_seed(seed)
        tok = self.tokenizer
        per_call = n if do_sample else 1  # greedy gives one answer; repeated n times below
        gen_cfg = GenerationConfig(
            max_new_tokens=max_new_tokens or self.config.max_prompt_tokens + 1,
            do_sample=do_sample,
            temperature=temperature if do_sample else None,
            top_p=top_p if do_sample else None,
            top_k=top_k if do_sample else None,
            num_return_sequences=per_call,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            use_cache=use_cache,
        )
        out: list[list[str]] = []
        for b in range(0, len(intents), batch_size):
            contexts = [self.encode_context(str(i), task, length, relevance) for i in intents[b : b + batch_size]]
            ids, mask = (t.to(self.model.device) for t in pad_left(contexts, tok.pad_token_id))
            extra = LogitsProcessorList()
            if copy_bias:
                extra.append(CopyBias(ids, mask, per_call, copy_bias, set(tok.all_special_ids), len(tok)))
            with torch.no_grad():
                seqs = self.model.generate(
                    input_ids=ids, attention_mask=mask, generation_config=gen_cfg, logits_processor=extra
                )
            texts = [self._decode(row) for row in seqs[:, ids.shape[1] :].tolist()]
            for j in range(len(contexts)):
                mine = texts[j * per_call : (j + 1) * per_call]
                out.append(mine if do_sample else mine * n)
        return out

    def _decode(self, ids: list[int]) -> str:
        eos = self.tokenizer.eos_token_id
        if eos in ids:
            ids = ids[: ids.index(eos)]
        # a prompt is one line: newlines and runs of spaces a sampled byte sequence may hold become one space
        return " ".join(self.tokenizer.decode(ids, skip_special_tokens=True).split())

    # -- persistence --------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """config.json + model.safetensors + tokenizer.json (HF layout) + generator.json (our config)."""
        if self.model is None:
            raise ValueError("nothing to save: the generator is not fitted")
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(d, safe_serialization=True)
        self.tokenizer.save_pretrained(d)
        (d / CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=2))
        return d

    @classmethod
    def load(cls, directory: str | Path) -> PromptGenerator:
        from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

        d = Path(directory)
        if not (d / CONFIG_FILE).exists():
            raise ValueError(f"{d} holds no {CONFIG_FILE}: not a directory written by PromptGenerator.save")
        gen = cls(GeneratorConfig(**json.loads((d / CONFIG_FILE).read_text())))
        gen.tokenizer = PreTrainedTokenizerFast.from_pretrained(d)
        gen.tokenizer.padding_side = "left"
        gen.model = GPT2LMHeadModel.from_pretrained(d).eval()
        return gen
