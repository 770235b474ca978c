# ruff: noqa: E501  (a chat template: its lines are the template's own)
"""Chat templates with tool support, for tests of the native tool format (platform/tools.py)
on the tiny model: the shape of Qwen2.5's template (Hermes-style `<tool_call>` calls, results as
`<tool_response>` in a user turn), written for ChatML tokens as SmolLM2's tokenizer has them."""

from __future__ import annotations

from pathlib import Path

QWEN_STYLE = """\

{%- if tools %}
{{- '<|im_start|>system\\n' }}
{%- if messages[0].role == 'system' %}{{- messages[0].content }}{%- else %}{{- 'You are a helpful assistant.' }}{%- endif %}
{{- '\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n<tools>' }}
{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}
{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{"name": <function-name>, "arguments": <args-json-object>}\\n</tool_call><|im_end|>\\n' }}
{%- elif messages[0].role == 'system' %}
{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
{%- if message.role == 'user' or (message.role == 'system' and not loop.first) or (message.role == 'assistant' and not message.tool_calls) %}
{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
{%- elif message.role == 'assistant' %}
{{- '<|im_start|>' + message.role }}
{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}
{%- for tool_call in message.tool_calls %}
{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}
{{- '\\n<tool_call>\\n{"name": "' }}{{- tool_call.name }}{{- '", "arguments": ' }}{{- tool_call.arguments | tojson }}{{- '}\\n</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\\n' }}
{%- elif message.role == 'tool' %}
{%- if loop.index0 == 0 or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}
{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}
{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}
"""


def with_template(model_dir: Path, out: Path, template: str = QWEN_STYLE) -> Path:
    """A copy of `model_dir` (its weights linked) whose tokenizer has `template`."""
    from transformers import AutoTokenizer

    out.mkdir(parents=True, exist_ok=True)
    for f in Path(model_dir).iterdir():
        if f.is_file() and not f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            (out / f.name).symlink_to(f.resolve())
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    tok.chat_template = template
    tok.save_pretrained(out)
    return out

# Qwen3's habit: an empty think block before the last assistant turn
THINKING_STYLE = QWEN_STYLE.replace(
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}",
    "{{- '<|im_start|>' + message.role + '\\n' + ('<think>\\n\\n</think>\\n\\n' if message.role =="
    " 'assistant' and loop.last else '') + message.content + '<|im_end|>\\n' }}").replace(
    "{{- '<|im_start|>' + message.role }}\n{%- if message.content %}",
    "{{- '<|im_start|>' + message.role }}{%- if loop.last %}{{- '\\n<think>\\n\\n</think>\\n' }}"
    "{%- endif %}\n{%- if message.content %}")
# Hermes-3's tool template: a result's end written one way when it ends the prompt, another
# when an answer follows (not prefix-stable: cannot be trained on)
UNSTABLE_STYLE = QWEN_STYLE.replace(
    "'\\n</tool_response>' }}", "'\\n</tool_response>' + ('' if loop.last else '\\n') }}")
