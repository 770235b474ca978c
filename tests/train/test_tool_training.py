"""Training data in OpenAI's format with tools trains an adapter that calls them: on a tiny
random model, the base never starts a call in `auto` mode, the adapter trained on a small
tool-use set does, and its calls parse and validate (constrained decoding). Both with the
fallback format (SmolLM2's template has no tools) and with a template's own (tests/
tool_templates.py): training renders the examples as the server renders the conversation."""

from __future__ import annotations

import json

import jsonschema
import pytest
from transformers import AutoTokenizer

from ragtune.generate.engine import Engine
from ragtune.platform.settings import Settings
from ragtune.platform.tools import tool_format
from ragtune.platform.types import GenParams
from ragtune.train import recipe
from ragtune.train.args import TrainArgs
from tests.tool_templates import with_template

CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "the forecast",
                                           "parameters": CITY}}]
CITIES = ["Paris", "Rome", "Oslo", "Lima", "Cairo", "Tokyo", "Delhi", "Quito", "Accra", "Dakar",
          "Hanoi", "Sofia", "Riga", "Bern", "Kyiv", "Baku"]


@pytest.mark.parametrize("native", [False, True], ids=["fallback", "template"])
def test_an_adapter_trained_on_tool_use_calls_the_tool(tmp_path, tiny_lm_dir, native):
    base = with_template(tiny_lm_dir, tmp_path / "tiny-qwen-style") if native else tiny_lm_dir
    fmt = tool_format(AutoTokenizer.from_pretrained(str(base)))
    assert fmt.native is native
    data = tmp_path / "tools.jsonl"
    data.write_text("".join(json.dumps({"tools": TOOLS, "messages": [
        {"role": "user", "content": f"What is the weather in {c}?"},
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {
            "name": "get_weather", "arguments": json.dumps({"city": c})}}]}]}) + "\n"
        for c in CITIES))
    settings = Settings(home=tmp_path / "home", generator=str(base))
    args = TrainArgs.from_options({"data": str(data), "name": "caller", "base": str(base),
                                   "epochs": 30, "lr": 0.01, "batch_size": 4, "rank": 8,
                                   "eval_prompts": 2, "max_new_tokens": 8})
    card = recipe.run(settings, args.job, args.config, log=lambda *a: None)
    assert card["data"]["formats"] == {"chat-tools": 16}
    engine = Engine(settings, max_batch=4, queue_size=8)
    try:
        made = {}
        for model in ("base", "caller"):
            made[model] = []
            for city in ("Madrid", "Berlin", "Lisbon", "Vienna"):
                msgs, listed = fmt.messages([{"role": "user", "content": f"What is the weather "
                                                                         f"in {city}?"}],
                                            TOOLS, "auto")
                params = GenParams(max_tokens=80, response_format="tools",
                                   tool_grammar=fmt.grammar(TOOLS, "auto"))
                text, _ = engine.generate(msgs, params, model=model, tools=listed)
                made[model] += fmt.parse(text)[1]
    finally:
        engine.close()
    assert made["base"] == []  # a random model never starts a call on its own
    assert len(made["caller"]) >= 3
    for call in made["caller"]:
        assert call["function"]["name"] == "get_weather"
        jsonschema.validate(json.loads(call["function"]["arguments"]), CITY)
