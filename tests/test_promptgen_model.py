"""The prompt generator: prompt-only loss, upside-down length control, KV cache, batching, save/load."""

import random

import pandas as pd
import pytest

pytest.importorskip("tokenizers")

from tandem.promptgen.model import (  # noqa: E402
    GeneratorConfig,
    GeneratorTrainConfig,
    PromptGenerator,
    gpt2_config,
    special_tokens,
)

WORDS = "red blue green shoe bag lamp chair table soft warm cool bright dark small large wooden".split()
FILLER = "with free fast delivery today".split()


def _examples(n_intents: int = 24, seed: int = 0) -> pd.DataFrame:
    """The length bucket decides the output: short -> 2 words, long -> 8 words, both built from the intent."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n_intents):
        words = rng.sample(WORDS, 3)
        intent = " ".join(words)
        for length, prompt in (("short", words[:2]), ("long", words + FILLER)):
            rows.append(
                {"intent": intent, "task": "search", "prompt": " ".join(prompt), "length": length, "relevance": "high"}
            )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def fitted():
    df = _examples()
    gen = PromptGenerator(GeneratorConfig.tiny())
    stats = gen.fit(df, GeneratorTrainConfig(epochs=40, lr=3e-3, batch_size=16, seed=0))
    return gen, df, stats


def test_labels_cover_only_prompt_and_eos():
    gen = PromptGenerator(GeneratorConfig.tiny())
    gen.fit(_examples(2), GeneratorTrainConfig(epochs=1, batch_size=4))
    ids, labels = gen.encode_example("red shoe", "image", "long", "low", "a red shoe on white")
    tok = gen.tokenizer
    context = gen.encode_context("red shoe", "image", "long", "low")
    assert ids[: len(context)] == context
    assert tok.convert_ids_to_tokens(context[:4]) == ["<task=image>", "<len=long>", "<rel=low>", "<intent>"]
    assert tok.convert_ids_to_tokens(context[-1]) == "<prompt>"
    assert all(x == -100 for x in labels[: len(context)])
    assert labels[len(context) :] == ids[len(context) :]
    assert labels[-1] == tok.eos_token_id
    assert tok.decode(labels[len(context) : -1]).strip() == "a red shoe on white"


def test_every_special_token_is_one_token():
    gen = PromptGenerator(GeneratorConfig.tiny())
    gen.fit(_examples(2), GeneratorTrainConfig(epochs=1, batch_size=4))
    for t in special_tokens():
        ids = gen.tokenizer(t, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and gen.tokenizer.convert_ids_to_tokens(ids[0]) == t


def test_loss_goes_down(fitted):
    _, _, stats = fitted
    assert stats["epoch_loss"][-1] < 0.5 * stats["epoch_loss"][0]


def test_length_command_controls_output(fitted):
    gen, df, _ = fitted
    intents = sorted(set(df["intent"]))
    short = gen.generate(intents, "search", "short", "high", do_sample=False)
    long = gen.generate(intents, "search", "long", "high", do_sample=False)
    short_ok = sum(len(p[0].split()) == 2 for p in short)
    long_ok = sum(len(p[0].split()) == 8 for p in long)
    assert short_ok >= 0.9 * len(intents), short
    assert long_ok >= 0.9 * len(intents), long


def test_kv_cache_matches_no_cache(fitted):
    gen, df, _ = fitted
    intents = sorted(set(df["intent"]))[:6] + ["an unseen lamp"]
    cached = gen.generate(intents, "search", "long", do_sample=False, use_cache=True)
    plain = gen.generate(intents, "search", "long", do_sample=False, use_cache=False)
    assert cached == plain


def test_batched_matches_one_by_one(fitted):
    gen, df, _ = fitted
    intents = ["red shoe", "a large wooden table for the kitchen", "lamp"] + sorted(set(df["intent"]))[:4]
    batched = gen.generate(intents, "search", "long", do_sample=False, batch_size=len(intents))
    single = [gen.generate([i], "search", "long", do_sample=False)[0] for i in intents]
    assert batched == single


def test_sampling_shape_and_seed(fitted):
    gen, _, _ = fitted
    a = gen.generate(["red shoe", "blue bag"], "search", "long", n=3, temperature=1.5, top_k=20, seed=1)
    b = gen.generate(["red shoe", "blue bag"], "search", "long", n=3, temperature=1.5, top_k=20, seed=1)
    assert len(a) == 2 and all(len(p) == 3 for p in a)
    assert a == b


def test_train_device_is_reported_and_a_missing_gpu_is_a_clear_error(fitted):
    import torch

    _, df, stats = fitted
    assert stats["device"].split(":")[0] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert stats["bf16"] is False or torch.cuda.is_available()
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            PromptGenerator(GeneratorConfig.tiny()).fit(df.head(4), GeneratorTrainConfig(epochs=1, device="cuda"))


def test_save_load_round_trip(fitted, tmp_path):
    gen, df, _ = fitted
    gen.save(tmp_path)
    assert {"config.json", "model.safetensors", "tokenizer.json", "generator.json"} <= {
        p.name for p in tmp_path.iterdir()
    }
    loaded = PromptGenerator.load(tmp_path)
    assert loaded.config == gen.config
    intents = sorted(set(df["intent"]))[:5] + ["something new"]
    assert loaded.generate(intents, "search", "short", do_sample=False) == gen.generate(
        intents, "search", "short", do_sample=False
    )


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"task": "chat"}, "task"),
        ({"task": "search", "length": "huge"}, "length"),
        ({"task": "search", "relevance": "top"}, "relevance"),
    ],
)
def test_unknown_command_value_is_a_clear_error(fitted, kwargs, field):
    gen, _, _ = fitted
    with pytest.raises(ValueError, match=field):
        gen.generate(["red shoe"], **kwargs)


def test_empty_intents_and_bad_examples_are_errors(fitted):
    gen, df, _ = fitted
    with pytest.raises(ValueError, match="intents"):
        gen.generate([], "search")
    with pytest.raises(ValueError, match="relabel"):
        PromptGenerator(GeneratorConfig.tiny()).fit(df.drop(columns=["length"]))
    with pytest.raises(ValueError, match="length"):
        PromptGenerator(GeneratorConfig.tiny()).fit(df.assign(length="huge"))


def test_config_validation_and_base_size():
    with pytest.raises(ValueError, match="n_positions"):
        GeneratorConfig(n_positions=32)
    with pytest.raises(ValueError, match="n_head"):
        GeneratorConfig(n_embd=100, n_head=12)
    base = GeneratorConfig.base()
    assert (base.n_layer, base.n_head, base.n_embd) == (12, 12, 768)
    import torch
    from transformers import GPT2LMHeadModel

    with torch.device("meta"):  # count parameters without allocating them
        model = GPT2LMHeadModel(gpt2_config(base, base.vocab_size, 1, 0))
    assert 90e6 < sum(p.numel() for p in model.parameters()) < 130e6


def test_copy_bias_pulls_tokens_from_the_own_intent(fitted):
    gen, _, _ = fitted
    tok = gen.tokenizer
    intents = ["lamp chair table", "red blue green"]  # one batch: each row must be biased to its own intent
    special = set(tok.all_special_ids)
    own = [set(tok(i, add_special_tokens=False)["input_ids"]) for i in intents]

    def ids(prompt: str) -> list[int]:
        return [t for t in tok(prompt, add_special_tokens=False)["input_ids"] if t not in special]

    def share_own(outs) -> float:
        pairs = [(t, k) for k, group in enumerate(outs) for p in group for t in ids(p)]
        return sum(t in own[k] for t, k in pairs) / max(1, len(pairs))

    plain = gen.generate(intents, "search", "long", n=8, temperature=2.0, seed=0)
    pulled = gen.generate(intents, "search", "long", n=8, temperature=2.0, seed=0, copy_bias=30.0)
    pushed = gen.generate(intents, "search", "long", n=8, temperature=2.0, seed=0, copy_bias=-30.0)
    assert share_own(pulled) > share_own(plain) > share_own(pushed)
    assert share_own(pushed) < 0.05
    for k, group in enumerate(pulled):  # a +30 bias writes every intent token before anything else
        for prompt in group:
            assert set(ids(prompt)[: len(own[k])]) == own[k], prompt


def test_copy_bias_drops_for_tokens_already_written():
    import torch

    from tandem.promptgen.tensors import CopyBias

    ids = torch.tensor([[0, 5, 6, 7], [0, 0, 8, 9]])  # left-padded contexts; 0 = pad, 9 = a special token
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    proc = CopyBias(ids, mask, per_call=2, bias=2.0, special={0, 9}, vocab=12)
    scores = torch.zeros((4, 12))
    first = proc(ids.repeat_interleave(2, dim=0), scores)  # nothing written yet
    assert first[0].nonzero().flatten().tolist() == [5, 6, 7] and first[1].equal(first[0])
    assert first[2].nonzero().flatten().tolist() == [8]
    written = torch.cat([ids.repeat_interleave(2, dim=0), torch.tensor([[6], [3], [8], [3]])], dim=1)
    after = proc(written, scores)
    assert after[0].nonzero().flatten().tolist() == [5, 7]  # row 0 wrote 6: no push to repeat it
    assert after[1].nonzero().flatten().tolist() == [5, 6, 7]
    assert after[2].abs().sum() == 0 and after[3][8] == 2.0
