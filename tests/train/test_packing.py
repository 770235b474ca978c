"""Packed training rows (train/packing.py): a packed row's loss is the sum of its examples'
unpacked losses, no example sees another's tokens, and the loop trains the same with or without
packing. On a tiny random Llama with the real SmolLM2 tokenizer."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ragtune.train.data import Example, encode
from ragtune.train.lora import TrainConfig, collate, rank_forwards, token_loss_sum, train
from ragtune.train.packing import collate_packed, pack

QA = [("What does the Pro plan cost?", "39 EUR a month, billed monthly."),
      ("Hi", "Hello! How can I help you today with your order or account?"),
      ("How long do I have to return a widget I bought?", "30 days from delivery.")]


def messages(q: str, a: str) -> list[dict]:
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


@pytest.fixture(params=["sdpa", "eager"])
def tiny(request, tiny_lm_dir):
    model = AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir),
                                                 attn_implementation=request.param)
    return model.eval(), AutoTokenizer.from_pretrained(str(tiny_lm_dir))


@torch.no_grad()
def loss_of(model, batch) -> float:
    return float(token_loss_sum(model, batch)[0])


def test_pack_first_fit_longest_first():
    assert pack([5, 3, 4, 2], 8) == [[0, 1], [2, 3]]
    assert pack([9, 2, 2], 8) == [[0], [1, 2]]  # too long: a row of its own
    rows = pack(list(range(1, 40)), 50)
    assert sorted(i for r in rows for i in r) == list(range(39))  # each example once
    assert all(sum(i + 1 for i in r) <= 50 for r in rows)
    assert len(rows) == -(-sum(range(1, 40)) // 50)  # no row wasted on this set
    assert pack([], 8) == []


def test_collate_packed_restarts_positions_and_masks_each_seam():
    a, b = ([1, 2, 3], [-100, 7, 8]), ([4, 5], [9, 10])
    out = collate_packed([[a, b], [b]], pad_id=0, device="cpu")
    assert out["input_ids"].tolist() == [[1, 2, 3, 4, 5], [4, 5, 0, 0, 0]]
    assert out["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]]
    # b's first label is dropped: its first token is never predicted from a's last
    assert out["labels"].tolist() == [[-100, 7, 8, -100, 10], [-100, 10, -100, -100, -100]]
    assert "attention_mask" not in out  # transformers reads packed rows only without one


def test_a_packed_row_loses_what_its_examples_lose_unpacked(tiny):
    model, tok = tiny
    rows = [encode(tok, messages(q, a)) for q, a in QA]
    unpacked = sum(loss_of(model, collate([r], tok.pad_token_id, "cpu")) for r in rows)
    packed = loss_of(model, collate_packed([rows], tok.pad_token_id, "cpu"))
    assert packed == pytest.approx(unpacked, rel=1e-5)
    # two rows of unequal length in one batch: the short row's padding is its own segment
    two = loss_of(model, collate_packed([rows[:2], rows[2:]], tok.pad_token_id, "cpu"))
    assert two == pytest.approx(unpacked, rel=1e-5)
    # the check has teeth: one causal sequence (no restart) is a different loss
    plain = collate_packed([rows], tok.pad_token_id, "cpu")
    plain["position_ids"] = torch.arange(plain["input_ids"].shape[1]).unsqueeze(0)
    assert abs(loss_of(model, plain) - unpacked) > 1e-3 * unpacked


def test_one_examples_tokens_never_reach_anothers_loss(tiny):
    model, tok = tiny
    first, *rest = [encode(tok, messages(q, a)) for q, a in QA]
    other = encode(tok, messages("Tell me something else entirely, please.", "No."))

    def rest_loss(head, restart: bool = True) -> float:
        """The loss of `rest` packed behind `head`, whose own tokens carry no label."""
        batch = collate_packed([[(head[0], [-100] * len(head[0])), *rest]], tok.pad_token_id,
                               "cpu")
        if not restart:
            batch["position_ids"] = torch.arange(batch["input_ids"].shape[1]).unsqueeze(0)
        return loss_of(model, batch)

    assert rest_loss(first) == pytest.approx(rest_loss(other), rel=1e-6)
    # without the per-example restart the same change does leak (the test can fail)
    assert rest_loss(first, restart=False) != pytest.approx(rest_loss(other, restart=False),
                                                            rel=1e-4)


def test_every_rank_runs_as_many_forwards_and_each_example_once():
    lengths = [300, 200, 900, 100, 50, 700, 650]
    for world in (1, 2, 3):
        per = rank_forwards(list(range(7)), lengths, 1024, world)
        assert len({len(p) for p in per}) == 1  # DDP: the same forwards on every rank
        seen = [i for p in per for fwd in p for i in fwd]
        assert sorted(seen) == list(range(7))
        assert all(sum(lengths[i] for i in fwd) <= 1024 for p in per for fwd in p)
    assert rank_forwards([0, 1, 2], lengths, 0, 2) == [[[0, 1]], [[2]]]  # unpacked: one batch


def test_the_loop_trains_the_same_packed_or_padded(tiny_lm_dir, tmp_path):
    examples = [Example(messages(f"{q} ({i})", a), i) for i in range(4) for q, a in QA]
    losses = {}
    for pack_length in (0, 160):  # rows of up to three examples
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir))
        tok = AutoTokenizer.from_pretrained(str(tiny_lm_dir))
        cfg = TrainConfig(epochs=1, batch_size=6, lr=1e-2, dropout=0.0, pack_length=pack_length)
        res = train(cfg, model, tok, examples, [], tmp_path / str(pack_length))
        losses[pack_length] = [r["loss"] for r in res.train_losses]
    assert len(losses[0]) == 2
    assert losses[160] == pytest.approx(losses[0], rel=1e-4)
