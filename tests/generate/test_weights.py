"""Served weights (generate/weights.py): the setting, the int8 layer's accuracy and batch
invariance, LoRA on top of int8 layers, and the engine reporting what it serves."""

from __future__ import annotations

import pytest
import torch

from ragtune.generate import weights
from ragtune.platform.errors import RagtuneError

pytestmark = pytest.mark.skipif(not weights.int8_available(),
                                reason="this torch build has no x86/fbgemm dynamic int8 linear")


def test_the_setting_resolves_per_device_and_refuses_what_cannot_run():
    assert weights.resolve("auto", "cpu") == "fp32"  # int8 is opt-in: slower on 2 threads
    assert weights.resolve("auto", "cuda") == "bf16"  # a GPU keeps bf16
    assert weights.resolve("fp32", "cpu") == "fp32"
    assert weights.resolve("bf16", "cpu") == "bf16"
    with pytest.raises(RagtuneError, match="int8 is for CPU serving"):
        weights.resolve("int8", "cuda")
    with pytest.raises(RagtuneError, match="RAGTUNE_WEIGHTS='fp8' is not one of"):
        weights.resolve("fp8", "cpu")


def _outlier_input(rows: int, width: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, width, generator=g)
    x[:, 3] *= 300  # an outlier channel, as SmolLM2's MLP inputs have
    return x


def test_an_int8_layer_is_close_to_fp32_and_smoothing_tames_outlier_channels():
    torch.manual_seed(0)
    lin = torch.nn.Linear(256, 64)
    x = _outlier_input(16, 256, 1)
    ref = lin(x)
    plain = weights.Int8Linear(lin)(x)
    smoothed = weights.Int8Linear(lin, act_peak=x.abs().amax(0))(x)

    def err(y):
        return float((y - ref).norm() / ref.norm())

    assert err(plain) < 0.05
    assert err(smoothed) < 0.01
    assert err(smoothed) < err(plain)


def test_a_rows_result_does_not_depend_on_the_rows_batched_with_it():
    torch.manual_seed(0)
    layer = weights.Int8Linear(torch.nn.Linear(128, 32), act_peak=torch.rand(128) * 10)
    x = _outlier_input(8, 128, 2)
    x[5] *= 1000  # one loud row must not change the rounding of the quiet ones
    together = layer(x)
    for i in range(len(x)):
        assert torch.equal(layer(x[i : i + 1])[0], together[i])


def test_quantize_replaces_every_linear_and_keeps_the_model_close(tiny_lm_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_lm_dir))
    ref = AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir), dtype=torch.float32).eval()
    model = AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir), dtype=torch.float32).eval()
    n = weights.quantize_int8(model, tok)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert n == len(linears) and all(isinstance(m, weights.Int8Linear) for m in linears)
    assert all(m.weight.dtype == torch.int8 for m in linears)
    ids = tok("The refund window is thirty days.", return_tensors="pt").input_ids
    with torch.no_grad():
        a, b = ref(input_ids=ids).logits, model(input_ids=ids).logits
    cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)
    assert cos > 0.99


def test_calibration_sees_the_heads_inputs_without_computing_logits(tiny_lm_dir):
    """The head's statistics come from the decoder's last hidden states (no logits computed):
    the same peaks a hook on the head sees in a full forward of the same text."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_lm_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir), dtype=torch.float32).eval()
    stats = weights.calibrate(model, tok)
    seen = {}
    head = model.get_output_embeddings()
    handle = head.register_forward_hook(
        lambda _m, inp, _o: seen.setdefault("x", inp[0].abs().reshape(-1, inp[0].shape[-1]).amax(0)))
    model.get_decoder = lambda: None  # no decoder: calibrate runs the whole model, hook fires
    try:
        full = weights.calibrate(model, tok)
    finally:
        handle.remove()
    assert set(stats) == set(full) and head in stats
    assert torch.allclose(stats[head], full[head]) and torch.allclose(stats[head], seen["x"])


def test_lora_adapters_apply_per_row_on_int8_layers(tiny_lm_dir):
    """peft wraps Int8Linear like any nn.Linear: a mixed batch equals each row run alone."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_lm_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir), dtype=torch.float32).eval()
    weights.quantize_int8(model, tok)
    torch.manual_seed(0)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(model, cfg, adapter_name="voice").eval()
    assert peft_model.base_model.model.model.layers[0].self_attn.q_proj.lora_A["voice"].weight.dtype \
        == torch.float32
    ids = tok(["Where is my order?", "Where is my order?"], return_tensors="pt").input_ids
    with torch.no_grad():
        mixed = peft_model(input_ids=ids, adapter_names=["voice", "__base__"]).logits
        with_adapter = peft_model(input_ids=ids[:1]).logits
        with peft_model.disable_adapter():
            base = peft_model(input_ids=ids[:1]).logits
    assert not torch.allclose(with_adapter, base)  # the adapter does something on int8 layers
    torch.testing.assert_close(mixed[0], with_adapter[0])
    torch.testing.assert_close(mixed[1], base[0])


@pytest.mark.parametrize("setting, expected", [("int8", "int8"), ("auto", "fp32")])
def test_the_engine_serves_and_reports_the_weights_setting(tiny_lm_dir, tmp_path, setting,
                                                            expected):
    from ragtune.generate.engine import Engine
    from ragtune.platform.settings import Settings
    from ragtune.platform.types import GenParams

    eng = Engine(Settings(home=tmp_path, generator=str(tiny_lm_dir), weights=setting), max_batch=2)
    try:
        assert eng.weights == expected
        int8_layers = [m for m in eng.pool.base.modules() if isinstance(m, weights.Int8Linear)]
        assert bool(int8_layers) == (expected == "int8")
        h = eng.submit(eng.prompt_ids([{"role": "user", "content": "hi"}]), GenParams(max_tokens=4))
        assert list(h.events())[-1].completion_tokens > 0
    finally:
        eng.close()
