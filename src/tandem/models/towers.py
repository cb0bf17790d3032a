"""Pretrained text towers, for every family: encoder or decoder, pooling, a truncated copy, the
tokenizer's padding, and loading an LLM's base model."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from tandem.core.config import ModelConfig
from tandem.models.base import drop_pooler, from_pretrained


def is_decoder(config) -> bool:
    """Whether a Hugging Face config describes a decoder LLM (pooled at its last token).

    Rule: `config.is_decoder` is set, or transformers knows the config class as a causal LM
    but not as a masked LM. GPT-2, Llama, Qwen2, Mistral, ... are decoders; BERT and RoBERTa
    have both heads (their causal one is a fine-tuning variant) and count as encoders.
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_MASKED_LM_MAPPING

    if getattr(config, "is_decoder", False):
        return True
    kind = type(config)
    return kind in MODEL_FOR_CAUSAL_LM_MAPPING and kind not in MODEL_FOR_MASKED_LM_MAPPING


def item_pooling(cfg: ModelConfig, config) -> str:
    """'mean' or 'last' for the item tower: `cfg.item_pooling`, with 'auto' decided by `is_decoder`."""
    if cfg.item_pooling != "auto":
        return cfg.item_pooling
    return "last" if is_decoder(config) else "mean"


def truncated_copy(encoder: nn.Module, layers: int) -> nn.Module:
    """A fresh encoder with the first `layers` layers of `encoder` and a copy of its weights."""
    total = encoder.config.num_hidden_layers
    if not 1 <= layers <= total:
        raise ValueError(f"model.query_layers must be between 1 and {total} (the item encoder's layers), got {layers}")
    from transformers import AutoModel

    config = copy.deepcopy(encoder.config)
    config.num_hidden_layers = layers
    query = drop_pooler(AutoModel.from_config(config)).to(next(encoder.parameters()).dtype)
    target = query.state_dict()
    state = {k: v.clone() for k, v in encoder.state_dict().items() if k in target}
    result = query.load_state_dict(state, strict=False)
    assert not result.missing_keys, f"truncated copy lacks weights for {result.missing_keys}"
    return query


def prepare_tokenizer(tokenizer, what: str):
    """Right padding; a tokenizer without a pad token (most LLMs) pads with its eos token."""
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(
                f"model.{what}: the tokenizer has neither a pad nor an eos token; give one with a pad token"
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def last_attended(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last position where `mask` (B, L) is 1 (masked visual tokens may come first)."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), positions, -1).amax(1).clamp(min=0)


def attends_causally(llm: nn.Module) -> bool:
    """Whether changing the last token leaves the hidden states before it unchanged."""
    was_training = llm.training
    llm.eval()
    vocab = llm.get_input_embeddings().num_embeddings
    ids = torch.tensor([[1, 2, 3], [1, 2, 4]]) % vocab
    try:
        with torch.no_grad():
            hidden = llm(input_ids=ids.to(next(llm.parameters()).device)).last_hidden_state.float()
    finally:
        llm.train(was_training)
    return torch.allclose(hidden[0, :2], hidden[1, :2], atol=1e-4, rtol=1e-3)


def load_llm(spec: str) -> nn.Module:
    """The base model (no LM head) at `spec`, in float32, attending causally."""
    from transformers import AutoConfig, AutoModel

    config = from_pretrained(AutoConfig, spec, "llm")
    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if getattr(config, "is_decoder", None) is False:  # a BERT-like encoder: run it as a decoder
        kwargs["is_decoder"] = True
    return drop_pooler(from_pretrained(AutoModel, spec, "llm", **kwargs))
