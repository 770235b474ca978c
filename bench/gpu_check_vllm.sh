#!/usr/bin/env bash
# The vLLM backend on a real GPU: the check issue 9 asks for, prepared, NOT run without one.
#
#   bash bench/gpu_check_vllm.sh          # from the repository root, venv built (make install)
#
# Needs: an NVIDIA GPU, the `vllm` package in .venv (or on PATH), the embedded SmolLM2 imported
# (`ragtune models import`, done below). No network: nothing is downloaded from a hub.
# 1. end to end: a LoRA adapter (random weights, rank 8) on SmolLM2-135M, served by
#    `ragtune serve --backend vllm --vllm-start`; plain, streamed, adapter, json_schema and RAG
#    requests through the openai client; the adapter registered once with vLLM.
# 2. bench/serve.py --backend vllm: the transformers backend vs the vLLM backend, one run.
# Results: bench/results/gpu_check_vllm.json, serve_vllm.json, serve_vllm.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export RAGTUNE_HOME=${RAGTUNE_HOME:-$(mktemp -d)/home}
export PATH="$(dirname "$PY"):$PATH"   # the venv's `vllm` executable, for --vllm-start

nvidia-smi -L || { echo "no NVIDIA GPU: this check cannot run here" >&2; exit 3; }
"$PY" -c "import vllm; print('vllm', vllm.__version__)" || {
  echo "vllm is not installed: $PY -m pip install vllm (its CUDA build), then rerun" >&2; exit 3; }
command -v vllm >/dev/null || { echo "no vllm executable on PATH" >&2; exit 3; }

"$PY" -m ragtune.cli models import
"$PY" -m ragtune.cli ingest samples/acme -c acme >/dev/null

mkdir -p bench/results
PORT=${PORT:-8765}
"$PY" - <<'EOF'
# a rank-8 random LoRA on the imported base, registered as `gpucheck` (what `ragtune train` writes)
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from ragtune.platform.models import resolve_generator
from ragtune.platform.settings import get_settings
from ragtune.train import registry

s = get_settings()
base = resolve_generator(s.generator, s)
torch.manual_seed(0)
m = get_peft_model(AutoModelForCausalLM.from_pretrained(str(base)),
                   LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False))
out = s.home / "gpucheck-raw"
m.save_pretrained(out)
print(registry.register(s, "gpucheck", out, {"base_model": str(base),
                                             "base_fingerprint": registry.model_fingerprint(base)}))
EOF

export RAGTUNE_VLLM_URL=http://127.0.0.1:8766
"$PY" -m ragtune.cli serve --port "$PORT" --backend vllm --vllm-start > "$RAGTUNE_HOME/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT

"$PY" - "$PORT" <<'EOF'
import json, sys, time
import openai

port = sys.argv[1]
c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=300)
t0 = time.time()
while True:  # vLLM loads, compiles and captures graphs: minutes
    try:
        c.models.list(); break
    except openai.APIConnectionError:
        if time.time() - t0 > 900: sys.exit("ragtune serve --backend vllm did not start")
        time.sleep(2)
out = {"startup_s": round(time.time() - t0, 1)}
q = [{"role": "user", "content": "How much does the Pro plan cost per month?"}]
r = c.chat.completions.create(model="base", messages=q, max_tokens=32)
out["plain"] = r.choices[0].message.content
out["stream"] = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
    model="base", messages=q, max_tokens=32, stream=True) if ch.choices)
for _ in range(2):
    r = c.chat.completions.create(model="gpucheck", messages=q, max_tokens=32)
out["adapter"] = {"text": r.choices[0].message.content, "used": r.model_extra["ragtune"]["adapter"]}
schema = {"type": "object", "properties": {"price_eur": {"type": "number"}},
          "required": ["price_eur"], "additionalProperties": False}
r = c.chat.completions.create(model="gpucheck", messages=q, max_tokens=48, response_format={
    "type": "json_schema", "json_schema": {"name": "p", "schema": schema}})
import jsonschema
jsonschema.validate(json.loads(r.choices[0].message.content), schema)
out["json_schema"] = r.choices[0].message.content
r = c.chat.completions.create(model="base", messages=q, max_tokens=48,
                              extra_body={"rag": {"collection": "acme", "k": 3}})
out["rag"] = {"text": r.choices[0].message.content,
              "sources": [x["source"] for x in r.model_extra["citations"]]}
assert out["adapter"]["used"] and out["rag"]["sources"]
json.dump(out, open("bench/results/gpu_check_vllm.json", "w"), indent=2)
print(json.dumps(out, indent=2))
EOF
kill $SERVER; wait $SERVER 2>/dev/null || true
trap - EXIT

"$PY" bench/serve.py --backend vllm --reps 2 --rag 10
