"""The prompt generator's batches as tensors (right-padded for training, left-padded for generation) and
the copy-bias logits processor. torch is imported inside functions: importing this module stays light."""

from __future__ import annotations


class CopyBias:
    """Logits processor: + `bias` on the tokens of each row's own context (its intent; special tokens
    excluded) that the row has not written yet, so a copied word is not pushed again (a flat bias makes
    the prompt repeat the intent's words). HF repeats each input row `per_call` times in a row for
    num_return_sequences."""

    def __init__(self, ids, mask, per_call: int, bias: float, special: set[int], vocab: int):
        import torch

        table = torch.zeros((ids.shape[0], vocab), dtype=torch.float32, device=ids.device)
        for r in range(ids.shape[0]):
            words = [t for t in ids[r][mask[r].bool()].tolist() if t not in special]
            table[r, torch.tensor(sorted(set(words)), dtype=torch.long, device=ids.device)] = bias
        self.table = table.repeat_interleave(per_call, dim=0)
        self.start = ids.shape[1]  # generated tokens begin here

    def __call__(self, input_ids, scores):
        table = self.table[:, : scores.shape[1]]
        written = input_ids[:, self.start :]
        if written.numel():
            table = table.scatter(1, written.clamp(max=table.shape[1] - 1), 0.0)
        return scores + table.to(scores.dtype)


def pad_right(batch, pad_id: int):
    """Training batch: (input_ids, labels, attention_mask), right-padded (labels -100 on padding)."""
    import torch

    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, (x, y) in enumerate(batch):
        ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
        mask[i, : len(x)] = 1
    return ids, labels, mask


def pad_left(contexts: list[list[int]], pad_id: int):
    """Generation batch: (input_ids, attention_mask), left-padded so every row ends where generation starts."""
    import torch

    width = max(len(c) for c in contexts)
    ids = torch.full((len(contexts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(contexts), width), dtype=torch.long)
    for i, c in enumerate(contexts):
        ids[i, width - len(c) :] = torch.tensor(c)
        mask[i, width - len(c) :] = 1
    return ids, mask
