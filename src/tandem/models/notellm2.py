"""NoteLLM-2 (SEEDS.md §1): item-to-item embeddings from a decoder LLM that reads the image.

An item (a "note") becomes one prompt. Its first readable image goes through a frozen CLIP
ViT; every last-layer token (CLS + patches) goes to a connector — a small Q-Former whose
`num_queries` learnable queries cross-attend to them, or (connector='mlp') a LLaVA-style
MLP applied to each token — and the connector's visual embeddings replace the `<IMG>`
placeholder of the prompt. Position ids run contiguously over the expanded sequence.

- prompt='basic': `Note content: {'image': <IMG>, 'title': '…', 'topic': '…', 'content': '…'}.
  Compress this note into one word:"` → n_m = last hidden state.
- prompt='micl': `Note content: {'image': <IMG>}, Compress this note into one word: "<IMG_EMB>".
  Note content: {'title': …}. Compress this note into one word: "` → n_v = hidden state just
  before the learned `<IMG_EMB>` embedding (causal attention: it has seen the image only),
  n_m = last hidden state.
- late fusion: v = Linear(CLS feature of the vision tower), z = sigmoid(W [v, n]) (no bias, as
  in the authors' code), n̂ = z ⊙ v + (1 − z) ⊙ n, one gate shared by n_v and n_m; then an
  optional linear reduction to `output_dim` and L2 normalisation.

Choices of ours, where the paper is silent or the setting differs:
- One image per item (the first readable one), as NoteLLM-2 uses one image per note.
- An item without a readable image has an empty `<IMG>` slot (no visual tokens) and skips
  late fusion (n̂ = n): there is no CLS feature to mix in, and a zero v would only shrink n.
- The LLM is any Hugging Face base model (no LM head) that takes `inputs_embeds`,
  `position_ids` and `attention_mask` (GPT-2, Qwen, Llama, ...). The default, all-MiniLM-L6-v2,
  is a bidirectional BERT: it is loaded with `is_decoder=True`, which makes it attend
  causally. It is the only pretrained text model available offline and stands in for a
  decoder LLM on a CPU; an encoder config that offers `is_decoder` is always loaded that way,
  and an LLM that still does not attend causally is refused (n_v would see the text).
- Item text: title cut to `max_title_chars`, content to `max_content_chars`, at most
  `max_topics` topics; when the prompt's text tokens exceed `max_prompt_tokens`, the content
  is cut first, then the topics, then the title — never the fixed template.
- Text search (`embed_queries`): a query is embedded as an item whose title is the query
  (not cut to `max_title_chars`: search texts are not note titles), with no image.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from tandem.core.config import ModelConfig, TrainConfig
from tandem.models.base import (
    Encoder,
    PairExample,
    as_list,
    bundled_minilm,
    drop_pooler,
    embed_in_batches,
    from_pretrained,
    last_pool,
    position_offset,
    read_meta,
)
from tandem.models.images import load_images
from tandem.models.losses import NoteLLM2Loss
from tandem.models.notellm2_prompts import BASIC, FIELDS, IMG, IMG_EMB, MICL, truncate
from tandem.models.text import clean
from tandem.models.towers import attends_causally, load_llm
from tandem.models.vision import build_vision, freeze, vision_from_config

FORMAT = "tandem.NoteLLM2"
FORMAT_VERSION = 1


class NoteLLM2(Encoder):
    """Frozen vision tower → connector → LLM prompt (basic or mICL) → late fusion → unit vectors."""

    family = "notellm2"
    symmetric = True

    def __init__(self, cfg: ModelConfig, llm: nn.Module, vision: nn.Module, tokenizer: Any):
        super().__init__()
        self.cfg = cfg
        self.llm = drop_pooler(llm)
        self.vision = freeze(vision)
        self.tokenizer = tokenizer
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

        hidden = self.llm.config.hidden_size
        width = self.vision.config.hidden_size
        if cfg.connector == "qformer":
            from transformers import Blip2QFormerConfig, Blip2QFormerModel

            if width % cfg.qformer_heads:
                raise ValueError(f"model.qformer_heads ({cfg.qformer_heads}) must divide the vision width ({width})")
            qconfig = Blip2QFormerConfig(
                vocab_size=1,  # the Q-Former reads only query embeddings: no vocabulary
                hidden_size=width,
                num_hidden_layers=cfg.qformer_layers,
                num_attention_heads=cfg.qformer_heads,
                intermediate_size=4 * width,
                encoder_hidden_size=width,
                cross_attention_frequency=1,
            )
            self.qformer = Blip2QFormerModel(qconfig)
            self.query_tokens = nn.Parameter(torch.randn(1, cfg.num_queries, width) * qconfig.initializer_range)
            self.num_visual = cfg.num_queries
        else:
            self.qformer = None
            self.query_tokens = None
            self.num_visual = 1 + (self.vision.config.image_size // self.vision.config.patch_size) ** 2
        self.projector = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, hidden))

        # a new special token starts at the mean input embedding
        mean_word = self.llm.get_input_embeddings().weight.detach().float().mean(0)
        self.img_emb = nn.Parameter(mean_word.clone()) if cfg.prompt == "micl" else None
        self.fusion_proj = nn.Linear(width, hidden) if cfg.late_fusion else None
        self.gate = nn.Linear(2 * hidden, hidden, bias=False) if cfg.late_fusion else None
        self.reduce = nn.Linear(hidden, cfg.output_dim) if cfg.output_dim > 0 else None

        self._template = MICL if cfg.prompt == "micl" else BASIC
        self._prefix = self._special_prefix()
        self._pieces = {p: self._tokenize([p])[0] for p in self._template if isinstance(p, str) and p not in FIELDS}
        self._fixed_tokens = len(self._prefix) + sum(
            len(self._pieces[p]) if isinstance(p, str) else 1 for p in self._template if p != IMG and p not in FIELDS
        )
        self._check_llm()

    # ------------------------------------------------------------------------------ checks
    def _special_prefix(self) -> list[int]:
        """The special tokens the tokenizer puts before a text ([CLS], <s>, or none)."""
        with_special = self.tokenizer("x")["input_ids"]
        plain = self.tokenizer("x", add_special_tokens=False)["input_ids"]
        for start in range(len(with_special) - len(plain) + 1):
            if with_special[start : start + len(plain)] == plain:
                return list(with_special[:start])
        return []

    def _check_llm(self) -> None:
        accepted = set(inspect.signature(self.llm.forward).parameters)
        if not {"inputs_embeds", "position_ids", "attention_mask"} <= accepted:
            raise ValueError(
                "model.llm must accept inputs_embeds, position_ids and attention_mask (a Hugging Face base model)"
            )
        self._llm_kwargs = {"use_cache": False} if "use_cache" in accepted else {}
        if not attends_causally(self.llm):
            raise ValueError(
                f"model.llm ({self.cfg.llm or 'all-MiniLM-L6-v2'}) does not attend causally, so n_v would see the "
                "text; give a decoder LLM (or a BERT-like model, which is loaded with is_decoder=True)"
            )
        self.position_offset = position_offset(self.llm)
        if self._fixed_tokens >= self.cfg.max_prompt_tokens:
            raise ValueError(
                f"model.max_prompt_tokens ({self.cfg.max_prompt_tokens}) leaves no room for the item text: the "
                f"{self.cfg.prompt} template alone takes {self._fixed_tokens} tokens; raise it"
            )
        needed = self.position_offset + self.cfg.max_prompt_tokens + self.num_visual
        available = getattr(self.llm.config, "max_position_embeddings", None)
        if available is not None and needed > available:
            raise ValueError(
                f"max_prompt_tokens + {self.num_visual} visual tokens need {needed} positions but the LLM has "
                f"{available}; lower model.max_prompt_tokens or num_queries (or use connector='qformer')"
            )

    @property
    def dim(self) -> int:
        return self.cfg.output_dim if self.reduce is not None else self.llm.config.hidden_size

    # ------------------------------------------------------------------------------ inputs
    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        return [list(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def note_fields(self, row: Mapping, title_chars: int | None = None) -> dict[str, str]:
        """Title, topics and content of a catalogue row, cleaned and cut as NoteLLM-2 does."""
        cfg = self.cfg
        title_chars = cfg.max_title_chars if title_chars is None else title_chars
        topics = [t for t in (clean(t) for t in as_list(row.get("topics"))) if t][: cfg.max_topics]
        return {
            "title": clean(row.get("title"))[:title_chars],
            "topic": ", ".join(topics),
            "content": clean(row.get("content"))[: cfg.max_content_chars],
        }

    def prepare(self, rows: Sequence[Mapping], title_chars: int | None = None) -> dict[str, torch.Tensor]:
        """CPU tensors for `forward` from catalogue rows: prompt ids with IMG / IMG_EMB
        placeholders (IMG only for items with an image), right padded, and their images."""
        size = self.cfg.image_size
        images = [load_images(as_list(r.get("images")), size, 1) for r in rows]
        notes = [self.note_fields(r, title_chars) for r in rows]
        values = {f: self._tokenize([n[f] for n in notes]) for f in FIELDS}
        budget = self.cfg.max_prompt_tokens - self._fixed_tokens
        sequences = []
        for i, image in enumerate(images):
            own = truncate({f: values[f][i] for f in FIELDS}, budget)
            ids = list(self._prefix)
            for piece in self._template:
                if piece == IMG:
                    ids += [IMG] if len(image) else []
                elif piece == IMG_EMB:
                    ids.append(IMG_EMB)
                else:
                    ids += own[piece] if piece in FIELDS else self._pieces[piece]
            sequences.append(torch.tensor(ids, dtype=torch.long))
        input_ids = pad_sequence(sequences, batch_first=True, padding_value=self.pad_id)
        lengths = torch.tensor([len(s) for s in sequences])
        attention_mask = (torch.arange(input_ids.shape[1])[None] < lengths[:, None]).long()
        pixels = torch.cat(images) if any(len(x) for x in images) else torch.zeros((0, 3, size, size))
        return {"input_ids": input_ids, "attention_mask": attention_mask, "pixels": pixels}

    def collate(self, examples: Sequence[PairExample]) -> dict[str, Any]:
        """2B items: the B query items, then the B related items (row i's partner is (i + B) mod 2B)."""
        batch = self.prepare([e.query_item for e in examples] + [e.item for e in examples])
        keys = [e.query_key for e in examples] + [e.item_key for e in examples]
        batch["keys"] = torch.tensor(keys, dtype=torch.long)
        return batch

    # ----------------------------------------------------------------------------- model
    def connect(self, tokens: torch.Tensor) -> torch.Tensor:
        """Vision tokens (M, P, D) → visual embeddings (M, num_visual, H) for the LLM."""
        if self.qformer is not None:
            queries = self.query_tokens.expand(tokens.shape[0], -1, -1)
            tokens = self.qformer(query_embeds=queries, encoder_hidden_states=tokens).last_hidden_state
        return self.projector(tokens)

    def llm_inputs(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The expanded LLM input: inputs_embeds (N, L, H) with visual embeddings in the <IMG>
        slots, attention_mask, contiguous position_ids, and per row `v_index` (the position
        just before <IMG_EMB>, -1 without mICL), `has_image` and the vision CLS features `cls`
        (M, D) of the rows that have an image."""
        device = self.device
        ids = batch["input_ids"].to(device)
        mask = batch["attention_mask"].to(device)
        pixels = batch["pixels"].to(device)
        has_image = (ids == IMG).any(1)
        if int(has_image.sum()) != pixels.shape[0]:
            raise ValueError(f"batch has {pixels.shape[0]} images for {int(has_image.sum())} <IMG> slots")
        text = self.llm.get_input_embeddings()(ids.clamp(min=0))
        if self.img_emb is not None:
            text = torch.where((ids == IMG_EMB)[..., None], self.img_emb.to(text.dtype), text)
        cls = visual = None
        if pixels.shape[0]:
            with torch.no_grad():  # frozen tower
                out = self.vision(pixel_values=pixels)
            cls = out.pooler_output
            visual = self.connect(out.last_hidden_state).to(text.dtype)

        lengths = mask.sum(1).tolist()
        img_pos = (ids == IMG).long().argmax(1).tolist()
        emb_pos = (ids == IMG_EMB).long().argmax(1).tolist()
        rows, v_index, j = [], [], 0
        for i, (n, image) in enumerate(zip(lengths, has_image.tolist())):
            shift = 0
            if image:
                p = img_pos[i]
                rows.append(torch.cat([text[i, :p], visual[j], text[i, p + 1 : n]]))
                shift, j = self.num_visual - 1, j + 1
            else:
                rows.append(text[i, :n])
            v_index.append(emb_pos[i] + shift - 1 if self.img_emb is not None else -1)
        embeds = pad_sequence(rows, batch_first=True)
        new_lengths = torch.tensor([len(r) for r in rows], device=device)
        steps = torch.arange(embeds.shape[1], device=device)
        return {
            "inputs_embeds": embeds,
            "attention_mask": (steps[None] < new_lengths[:, None]).long(),
            "position_ids": (steps + self.position_offset)[None].expand(len(rows), -1),
            "v_index": torch.tensor(v_index, device=device),
            "has_image": has_image,
            "cls": cls,
        }

    def fuse(self, v: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """The late-fusion gate: z = sigmoid(W [v, n]), z ⊙ v + (1 − z) ⊙ n (before normalisation)."""
        z = torch.sigmoid(self.gate(torch.cat([v, n], dim=-1)))
        return z * v + (1 - z) * n

    def _finish(self, n: torch.Tensor, v: torch.Tensor | None, has_image: torch.Tensor) -> torch.Tensor:
        if v is not None:
            n = torch.where(has_image[:, None], self.fuse(v.to(n.dtype), n), n)
        if self.reduce is not None:
            n = self.reduce(n)
        return F.normalize(n.float(), dim=-1)  # float32 for the loss's logits, also under bf16 autocast

    def encode(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{'n_m': (N, dim) unit vectors, 'n_v' (mICL only)} for prepared items."""
        inputs = self.llm_inputs(batch)
        hidden = self.llm(
            inputs_embeds=inputs["inputs_embeds"],
            attention_mask=inputs["attention_mask"],
            position_ids=inputs["position_ids"],
            **self._llm_kwargs,
        ).last_hidden_state
        has_image = inputs["has_image"]
        v = None
        if self.fusion_proj is not None and inputs["cls"] is not None:
            v = hidden.new_zeros((hidden.shape[0], hidden.shape[2]))
            v[has_image] = self.fusion_proj(inputs["cls"]).to(hidden.dtype)
        out = {"n_m": self._finish(last_pool(hidden, inputs["attention_mask"]), v, has_image)}
        if self.img_emb is not None:
            rows = torch.arange(hidden.shape[0], device=hidden.device)
            out["n_v"] = self._finish(hidden[rows, inputs["v_index"]], v, has_image)
        return out

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        out = self.encode(batch)
        out["keys"] = batch["keys"].to(self.device)
        return out

    def param_groups(self, cfg: TrainConfig) -> list[dict]:
        """'item': the LLM (lr_item); 'new': connector, <IMG_EMB>, fusion, reduction (lr_new).
        The frozen vision tower is in no group."""
        item = [p for p in self.llm.parameters() if p.requires_grad]
        new = [p for name, p in self.named_parameters() if p.requires_grad and not name.startswith(("llm.", "vision."))]
        return [
            {"name": "item", "params": item, "lr": cfg.lr_item, "weight_decay": cfg.weight_decay},
            {"name": "new", "params": new, "lr": cfg.lr_new, "weight_decay": cfg.weight_decay},
        ]

    # --------------------------------------------------------------------------- inference
    def embed_items(
        self, catalog: pd.DataFrame, batch_size: int = 128, progress: bool = True, part: str = "m"
    ) -> np.ndarray:
        """float32 (n, dim) fused n̂_m per catalogue row, in row order; part='v': the image-only
        n̂_v of the mICL prompt (the visual-neglect diagnostic)."""
        if part not in ("m", "v"):
            raise ValueError(f"part must be 'm' (multimodal) or 'v' (image only), got {part!r}")
        if part == "v" and self.img_emb is None:
            raise ValueError("part='v' needs the mICL prompt (model.prompt='micl'); this model uses the basic prompt")
        rows = catalog.to_dict("records")
        lengths = [len(clean(r.get("title"))) + len(clean(r.get("content"))) for r in rows]
        encode = lambda chunk: self.encode(self.prepare(chunk))[f"n_{part}"]  # noqa: E731
        vecs = embed_in_batches(self, rows, lengths, encode, self.dim, batch_size, progress, "items")
        return self.with_item_term(vecs, catalog) if part == "m" else vecs

    def embed_queries(self, texts: Sequence[str], batch_size: int = 256, progress: bool = True) -> np.ndarray:
        """float32 (n, dim): each text embedded as an item with that title (uncut) and nothing else."""
        rows = [{"title": t} for t in texts]
        encode = lambda chunk: self.encode(self.prepare(chunk, title_chars=10**9))["n_m"]  # noqa: E731
        vecs = embed_in_batches(self, rows, [len(t) for t in texts], encode, self.dim, batch_size, progress, "queries")
        return self.with_query_term(vecs)

    # ------------------------------------------------------------------------- persistence
    def save(self, directory: str | Path) -> Path:
        """config.json, the LLM / vision configs, the tokenizer and one model.safetensors."""
        pretrained = {"llm": self.llm.config, "vision": self.vision.config, "tokenizer": self.tokenizer}
        return self.save_files(
            directory,
            FORMAT,
            FORMAT_VERSION,
            pretrained,
            dim=self.dim,
            llm_hidden_size=self.llm.config.hidden_size,
            num_visual_tokens=self.num_visual,
        )

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> NoteLLM2:
        from transformers import AutoConfig, AutoModel, AutoTokenizer, CLIPVisionConfig

        directory = Path(directory)
        _, cfg = read_meta(directory, FORMAT, FORMAT_VERSION, "NoteLLM-2")
        llm = AutoModel.from_config(AutoConfig.from_pretrained(directory / "llm"), dtype=torch.float32)
        vision = vision_from_config(CLIPVisionConfig.from_pretrained(directory / "vision"))
        tokenizer = AutoTokenizer.from_pretrained(directory / "tokenizer")
        return cls(cfg, llm, vision, tokenizer).load_weights(directory, device)


def build(cfg: ModelConfig, catalog: pd.DataFrame | None = None) -> NoteLLM2:
    """A new NoteLLM-2: pretrained LLM and vision tower, fresh connector / fusion / reduction."""
    from transformers import AutoTokenizer

    spec = cfg.llm or bundled_minilm()
    llm = load_llm(spec)
    tokenizer = from_pretrained(AutoTokenizer, spec, "llm")
    return NoteLLM2(cfg, llm, build_vision(cfg), tokenizer)


def build_loss(cfg: ModelConfig, train: TrainConfig) -> NoteLLM2Loss:
    return NoteLLM2Loss(alpha=cfg.alpha, init_scale=train.init_scale)


load = NoteLLM2.load
