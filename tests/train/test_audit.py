"""The knowledge-boundary audit: on a tiny model made to memorise some facts (and never shown
others), the closed-book audit labels the memorised ones known and the others unknown, and
`--drop-unknown` / `--mask-unknown` change what trains."""

from __future__ import annotations

import json

import pytest
import torch

from ragtune.platform.settings import Settings
from ragtune.train import recipe
from ragtune.train.args import TrainArgs
from ragtune.train.audit import audit, closed_book
from ragtune.train.data import Example, encode

SYSTEM = "You answer with door codes."
KNOWN = {"red": "4471", "green": "9035", "white": "2718"}
UNKNOWN = {"blue": "8812", "black": "6604", "grey": "1357"}


def talk(colour: str, code: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"What is the code of the {colour} door?"},
            {"role": "assistant", "content": f"The {colour} door code is {code}."}]


@pytest.fixture(scope="module")
def memoriser(tmp_path_factory, tiny_lm_dir):
    """The tiny model, trained (all weights) until it recites the KNOWN codes."""
    import shutil

    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("memoriser")
    tok = AutoTokenizer.from_pretrained(str(tiny_lm_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir))
    rows = [encode(tok, talk(c, k)) for c, k in KNOWN.items()]
    width = max(len(ids) for ids, _ in rows)
    ids = torch.tensor([i + [tok.pad_token_id] * (width - len(i)) for i, _ in rows])
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows])
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(100):  # ~4 s; recites all three from ~60 steps
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(out)
    for f in tiny_lm_dir.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy2(f, out / f.name)
    return out


def test_memorised_facts_are_known_and_unseen_ones_unknown(memoriser):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(memoriser))
    model = AutoModelForCausalLM.from_pretrained(str(memoriser))
    examples = [Example(talk(c, k), i) for i, (c, k) in
                enumerate(list(KNOWN.items()) + list(UNKNOWN.items()), 1)]
    report = audit(model, tok, examples, samples=2,
                   chunk_texts=[("/kb/doors.md", "The black door code is 6604.")])
    assert {f: report.facts[f] for f in KNOWN.values()} == dict.fromkeys(KNOWN.values(), "known")
    assert {f: report.facts[f] for f in UNKNOWN.values()} == dict.fromkeys(UNKNOWN.values(),
                                                                          "unknown")
    assert (report.examples, report.known, report.unknown) == (6, 3, 3)
    assert report.unknown_lines == {"8812": [4], "6604": [5], "1357": [6]}
    assert report.in_collection == {"6604": "doors.md"}  # it belongs in the index
    assert "3 of 6 examples (50%)" in report.summary()


def test_closed_book_leaves_the_retrieved_sources_out():
    from ragtune.platform.prompt import build_messages

    with_sources = build_messages([{"role": "user", "content": "q"}], context=[],
                                  system="Be brief.")
    asked = closed_book(with_sources + [{"role": "assistant", "content": "a"}])
    assert asked == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "q"}]


@pytest.mark.parametrize("flag, trained, action", [("drop_unknown", 3, "dropped"),
                                                   ("mask_unknown", 6, "masked")])
def test_drop_and_mask_unknown_change_what_trains(tmp_path, memoriser, flag, trained, action):
    data, held = tmp_path / "d.jsonl", tmp_path / "v.jsonl"
    data.write_text("".join(json.dumps({"messages": talk(c, k)}) + "\n"
                            for c, k in list(KNOWN.items()) + list(UNKNOWN.items())))
    held.write_text("".join(json.dumps({"messages": talk(c, k)}) + "\n"
                            for c, k in (("pink", "1111"), ("gold", "2222"))))
    settings = Settings(home=tmp_path / "home", generator=str(memoriser))
    args = TrainArgs.from_options({"data": str(data), "val_data": str(held), "name": "doors",
                                   "base": str(memoriser), "epochs": 1, "batch_size": 2,
                                   "eval_prompts": 1, "max_new_tokens": 4, "audit_samples": 1,
                                   flag: True})
    card = recipe.run(settings, args.job, args.config, log=lambda *a: None)
    assert card["audit"]["action"] == action and card["audit"]["trained"] == trained
    assert card["audit"]["unknown"] == 3 and card["audit"]["unknown_share"] == 0.5
