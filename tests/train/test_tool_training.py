"""Training data in OpenAI's format with tools trains an adapter that calls them: on a tiny
random model, the base never starts a call in `auto` mode, the adapter trained on a small
tool-use set does, and its calls parse and validate (constrained decoding)."""

from __future__ import annotations

import json

import jsonschema

from ragtune.generate.engine import Engine
from ragtune.platform.settings import Settings
from ragtune.platform.tools import grammar_spec, parse_calls, plain_messages
from ragtune.platform.types import GenParams
from ragtune.train import recipe
from ragtune.train.args import TrainArgs

CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "the forecast",
                                           "parameters": CITY}}]
CITIES = ["Paris", "Rome", "Oslo", "Lima", "Cairo", "Tokyo", "Delhi", "Quito", "Accra", "Dakar",
          "Hanoi", "Sofia", "Riga", "Bern", "Kyiv", "Baku"]


def test_an_adapter_trained_on_tool_use_calls_the_tool(tmp_path, tiny_lm_dir):
    data = tmp_path / "tools.jsonl"
    data.write_text("".join(json.dumps({"tools": TOOLS, "messages": [
        {"role": "user", "content": f"What is the weather in {c}?"},
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {
            "name": "get_weather", "arguments": json.dumps({"city": c})}}]}]}) + "\n"
        for c in CITIES))
    settings = Settings(home=tmp_path / "home", generator=str(tiny_lm_dir))
    args = TrainArgs.from_options({"data": str(data), "name": "caller", "base": str(tiny_lm_dir),
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
                msgs = plain_messages([{"role": "user", "content": f"What is the weather in "
                                                                   f"{city}?"}], TOOLS, "auto")
                params = GenParams(max_tokens=80, response_format="tools",
                                   tool_grammar=grammar_spec(TOOLS, "auto"))
                text, _ = engine.generate(msgs, params, model=model)
                made[model] += parse_calls(text)[1]
    finally:
        engine.close()
    assert made["base"] == []  # a random model never starts a call on its own
    assert len(made["caller"]) >= 3
    for call in made["caller"]:
        assert call["function"]["name"] == "get_weather"
        jsonschema.validate(json.loads(call["function"]["arguments"]), CITY)
