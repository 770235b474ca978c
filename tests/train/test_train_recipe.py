"""The whole `train` recipe on tiny stand-ins: data -> (context, facts guard) -> LoRA -> card ->
registry; plus the RAFT-style context builder and the fact guard on their own."""

from __future__ import annotations

import json

import pytest

from ragtune import Collection
from ragtune.train.context import NOT_IN_DOCS, with_context
from ragtune.train.data import Example
from ragtune.train.facts import find_facts


@pytest.fixture
def kb(tiny_settings, tmp_path):
    docs = tmp_path / "kb"
    docs.mkdir()
    (docs / "pricing.md").write_text("# Pricing\n\nThe Pro plan costs 39 EUR per month.\n")
    (docs / "shipping.md").write_text("# Shipping\n\nExpress delivery to Vienna takes 2 days.\n")
    (docs / "hours.md").write_text("# Hours\n\nSupport answers calls from 8:00 to 18:00.\n")
    col = Collection.open("kb", tiny_settings)
    col.add([docs])
    return col


def qa(q: str, answer: str, line: int, as_json: bool = True) -> Example:
    a = json.dumps({"answer": answer, "tone": "friendly"}) if as_json else answer
    return Example([{"role": "system", "content": "Reply in JSON."},
                    {"role": "user", "content": q}, {"role": "assistant", "content": a}], line)


def test_context_prompts_cite_the_supporting_chunk_and_teach_refusal(kb):
    examples = [qa("How much is the Pro plan?", "The Pro plan costs 39 EUR per month.", i)
                for i in range(20)]
    out, rep = with_context(examples, kb, "kb", 1, k=2, no_oracle_share=0.25, seed=0, mode="bm25")
    assert rep.with_oracle + rep.without_oracle == 20 and rep.without_oracle >= 2
    for ex in out:
        system = ex.messages[0]["content"]
        assert system.startswith("Reply in JSON.") and "<sources>" in system
        answer = json.loads(ex.messages[-1]["content"])["answer"]  # the format survives
        if answer == NOT_IN_DOCS:
            assert "39 EUR" not in system  # the supporting chunk was removed
        else:
            n = int(answer.rsplit("[", 1)[1].rstrip("]"))
            block = system.split(f"[{n}] (", 1)[1]
            assert block.startswith("pricing.md") and "39 EUR" in block.split("\n[", 1)[0]


def test_facts_guard_finds_index_facts_in_targets(kb):
    examples = [qa("Price?", "The Pro plan costs 39 EUR per month.", 3),
                qa("Delivery?", "Express delivery to Vienna is quick.", 4),
                qa("Tone?", "Always friendly and short.", 5)]
    rep = find_facts(examples, kb.chunks(), "kb")
    assert rep.facts == {"39 EUR": [3], "Pro": [3], "Vienna": [4]}  # Pro: a product name
    assert rep.where["39 EUR"] == "pricing.md"
    assert "also live in the index" in rep.summary()


def test_recipe_end_to_end_on_tiny_models(kb, tiny_lm_dir, tmp_path, tiny_settings):
    from ragtune.train import registry
    from ragtune.train.lora import TrainConfig
    from ragtune.train.recipe import TrainJob, run

    data = tmp_path / "data.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"Question {i} about the Pro plan?"},
                          {"role": "assistant", "content": json.dumps(
                              {"answer": "The Pro plan costs 39 EUR per month.", "tone": "friendly"})}]}
            for i in range(16)]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "required": ["answer", "tone"]}))
    job = TrainJob(data=data, name="voice", base=str(tiny_lm_dir), json_schema=schema,
                   with_context="kb", facts_collection="kb", strip_facts=True, eval_prompts=3,
                   max_new_tokens=8)
    lines = []
    card = run(tiny_settings, job, TrainConfig(epochs=2, batch_size=4, lr=1e-2), log=lines.append)
    assert card["version"] == "v1" and card["steps"] == 2 * 3  # 12 train, 4 held out
    assert card["context"]["collection"] == "kb" and card["context"]["with_oracle"] > 0
    assert card["facts"]["stripped"] and "39 EUR" in card["facts"]["facts"]
    assert set(card["facts"]["probe"]) == {"probes", "base_recalled", "adapter_recalled"}
    ev = card["eval"]
    assert {"json_valid", "schema_valid"} <= set(ev["adapter"]) and ev["targets_are_json"]
    assert ev["prompts"] == 3
    assert len(card["history"]) == 2
    version = registry.resolve(tiny_settings, "voice")
    meta = registry.read_meta(version)
    assert meta["collection"] == "kb" and meta["collection_generation"] == 1
    for f in ("adapter_model.safetensors", "adapter_config.json", "card.json", "README.md",
              "loss.png"):
        assert (version / f).exists(), f
    assert any("facts guard" in str(x) for x in lines)
    # the card names its weights, its own cost and the run's peak memory, which the run prints
    assert card["weights"] == "fp32" and "| weights (training and this card) | fp32 |" in (
        version / "README.md").read_text()
    assert 0 < card["card_seconds"] < card["run_seconds"]
    assert card["card_share"] == pytest.approx(card["card_seconds"] / card["run_seconds"], abs=0.01)
    assert card["peak_rss_mb"] > 100 and lines[-1] == f"peak memory: {card['peak_rss_mb']} MB resident"
    with pytest.warns(UserWarning, match="generation 1; it is now at 2"):
        registry.check_collection_drift(version, 2)
