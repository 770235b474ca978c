"""Packed rows: a micro-batch's examples laid end to end in rows of at most `pack_length` tokens,
each example's attention kept inside itself.

    rows = pack([len(ids) for ids, _ in examples], 1024)   # [[2, 0], [1]]: example indices
    batch = collate_packed([[examples[i] for i in row] for row in rows], pad_id, "cpu")

A packed batch carries `position_ids` that restart at 0 for every example and no
`attention_mask`. transformers (5.x, `masking_utils.find_packed_sequence_indices`) reads
position ids that restart as example boundaries and builds a block-diagonal causal mask from
them for sdpa and eager attention (flash attention reads them as cumulative lengths), provided
no cache is built: token_loss_sum passes `use_cache=False`. Each example's first label is
-100, so the token before it (the previous example's last) predicts nothing across the seam:
a packed row's summed loss is the sum of its examples' unpacked losses
(tests/train/test_packing.py checks both, and that one example's tokens never reach another's
loss).

Why pack on a CPU, where length-sorted batches already pad little: memory, and the time that
memory costs. Activations grow with the tokens in one forward (fp32, LoRA dropout and the
attention weights keep ~3.5 MB a token for SmolLM2-135M): a padded batch of the demo's 8
longest examples (~3,100 tokens) grew the process by 10.7 GB, one row per forward at 512
tokens by 1.8 GB, and ran 1.7x faster (fresh pages cost kernel time to fault in). Rows of
1,024 held 3.2 GB: a packed row's attention is a full masked square (sdpa's math path on CPU,
its weights kept for backward), so rows longer than the examples (`max_seq_len`, 512) buy
nothing here; the default `pack_length` is 512.
"""

from __future__ import annotations

import torch

Encoded = tuple[list[int], list[int]]  # (input_ids, labels), labels -100 where no loss


def pack(lengths: list[int], pack_length: int) -> list[list[int]]:
    """Indices into `lengths` grouped into rows of at most `pack_length` tokens (first fit,
    longest first); an example longer than `pack_length` gets a row of its own. Deterministic."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(pack_length - lengths[i])
    return rows


def collate_packed(rows: list[list[Encoded]], pad_id: int, device: str) -> dict[str, torch.Tensor]:
    """Packed rows as tensors: input_ids, labels and position_ids (0.. per example). Rows of
    unequal length are padded at the end with a segment of their own (labels -100)."""
    width = max(sum(len(ids) for ids, _ in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for i, lab in row:
            n = len(i)
            ids[r, at : at + n] = torch.tensor(i)
            labels[r, at : at + n] = torch.tensor(lab)
            labels[r, at] = -100  # no loss across the seam: the previous token is another's
            positions[r, at : at + n] = torch.arange(n)
            at += n
        positions[r, at:] = torch.arange(width - at)
    return {"input_ids": ids.to(device), "position_ids": positions.to(device),
            "labels": labels.to(device)}
