"""The base model's weight format for serving: `RAGTUNE_WEIGHTS=auto|fp32|bf16|int8`.

`auto` (the default) is fp32 on CPU and bf16 on a GPU; int8 is opt-in. Decoding one token reads
every weight once, so on CPU its speed should be the memory bandwidth divided by the bytes per
weight, and int8 reads a quarter of fp32's bytes. Measured through the API on the 135M model (2
cores, bench/serve.py), it is not faster: fbgemm's dynamic int8 linear at one row reaches ~4 GB/s
of weights (not the machine's ~9 GB/s read bandwidth) and gains nothing from a second thread,
while fp32 does: per token, one thread fp32 108 ms vs int8 77 ms (1.4x), two threads fp32 63 ms
vs int8 69 ms (0.92x); 8 concurrent streams 53 vs 42 tokens/s. Hence fp32 stays the CPU default,
and int8 is for a single-threaded server. Only the base model's linear layers (and its
vocabulary head) change;
LoRA adapters stay in floating point on top of them, still applied per request and mixed in one
batch by peft, because `Int8Linear` is an `nn.Linear` to peft.

Why this kernel: torch's own dynamic int8 linear (`quantized::linear_dynamic` with weights
prepacked by fbgemm/x86, per-output-channel symmetric int8 weights, activations quantised per
call) measured 3.8x faster than fp32 on the 135M model's MLP shapes and 6.5x on its 49k-wide
vocabulary head on one core (AVX-512 VNNI), with the weights in cache. The alternatives measured
worse on the same shapes: torchao 0.18's `Int8WeightOnlyConfig` (eager) 2.6x *slower* than fp32
at one row, its `Int8DynamicActivationInt8WeightConfig` 2x slower on the MLP shapes (both want
`torch.compile`), torch's `_weight_int8pack_mm` 2-4x slower; the eager
`torch.ao.quantization.quantize_dynamic` wrapper is deprecated and turns each layer into a
module peft cannot put LoRA on. So the layer below calls the two aten ops directly
(`quantized::linear_prepack`, `quantized::linear_dynamic`). torch marks its quantized tensor
types deprecated: `int8_available` probes the ops, and a torch without them refuses `int8` with
a clear error.

Quality, perplexity on general text (Python's reference docs): fp32 16.02; per-call activation
scales 25.2 (SmolLM2's MLP inputs have channels at 4,000x their median); per-row scales 16.90;
per-row scales after SmoothQuant smoothing from one calibration pass 16.16 (what is used). The
demo's evaluation table (52 questions, 5 arms) with int8 is within 2 points of fp32 on every
metric but one: base+rag citation correctness 88% vs 91% (one answer of 33); int8 is ahead on
others (adapter format validity 75% vs 69%).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from ragtune.platform.errors import RagtuneError

CHOICES = ("auto", "fp32", "bf16", "int8")
_ENGINES = ("x86", "fbgemm")  # quantized engines with the prepacked dynamic int8 linear


_PROBE: list[bool] = []


def int8_available() -> bool:
    """Whether this torch build can prepack and run a dynamic int8 linear (probed once)."""
    if not _PROBE:
        try:
            if not any(e in torch.backends.quantized.supported_engines for e in _ENGINES):
                raise RuntimeError("no x86/fbgemm quantized engine")
            _select_engine()
            Int8Linear(torch.nn.Linear(8, 4))(torch.ones(2, 8))
            _PROBE.append(True)
        except Exception:  # noqa: BLE001 - any failure means: not on this build
            _PROBE.append(False)
    return _PROBE[0]


def _select_engine() -> None:
    if torch.backends.quantized.engine not in _ENGINES:
        torch.backends.quantized.engine = next(e for e in _ENGINES
                                               if e in torch.backends.quantized.supported_engines)


def resolve(requested: str, device: str) -> str:
    """The weight format for `requested` (a CHOICES value) on `device`; errors name the fix."""
    if requested not in CHOICES:
        raise RagtuneError(f"RAGTUNE_WEIGHTS={requested!r} is not one of {', '.join(CHOICES)}")
    gpu = device.startswith("cuda")
    if requested == "auto":
        return "bf16" if gpu else "fp32"  # int8: see the module's measurements
    if requested == "int8" and gpu:
        raise RagtuneError("RAGTUNE_WEIGHTS=int8 is for CPU serving: on a GPU use bf16 (the "
                           "default) or fp32")
    if requested == "int8" and not int8_available():
        raise RagtuneError("RAGTUNE_WEIGHTS=int8 needs torch's x86/fbgemm dynamic int8 linear, "
                           f"which this torch build lacks (engines: "
                           f"{torch.backends.quantized.supported_engines}): use fp32 or bf16")
    return requested


def dtype_for(weights: str) -> torch.dtype:
    """The floating dtype the model is loaded in (int8 layers are made from fp32 weights)."""
    return torch.bfloat16 if weights == "bf16" else torch.float32


SMOOTH_ALPHA = 0.65  # SmoothQuant's migration strength: 0.5-0.8 measured, 0.65 best on SmolLM2


class Int8Linear(torch.nn.Linear):
    """A frozen linear layer holding int8 weights (one scale per output channel), computed with
    activations quantised per row at each call (so batching never changes a row's result). A
    layer whose inputs have outlier channels (found by `calibrate`; SmolLM2's MLP inputs reach
    4,000x their median, and one such channel would set the activation scale for all the
    others) is smoothed first, as in SmoothQuant: input channel j is divided by s_j and weight
    column j multiplied by it, which leaves the product unchanged and moves the outliers' range
    into the weights. `weight` keeps the int8 values (peft reads its device and dtype, and does
    not cast adapters to an integer dtype)."""

    def __init__(self, linear: torch.nn.Linear, act_peak: torch.Tensor | None = None):
        torch.nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight.detach().float()
        smooth = None
        if act_peak is not None:
            w_peak = w.abs().amax(dim=0).clamp(min=1e-5)
            smooth = (act_peak.float().clamp(min=1e-5) ** SMOOTH_ALPHA
                      / w_peak ** (1 - SMOOTH_ALPHA)).clamp(min=1e-2, max=1e3)
            w = w * smooth
        self.register_buffer("inv_smooth", None if smooth is None else 1.0 / smooth)
        scales = (w.abs().amax(dim=1) / 127).clamp(min=1e-12).double()
        with warnings.catch_warnings():  # torch's deprecation notice: see int8_available
            warnings.simplefilter("ignore")
            q = torch.quantize_per_channel(w, scales, torch.zeros_like(scales, dtype=torch.long),
                                           axis=0, dtype=torch.qint8)
        bias = None if linear.bias is None else linear.bias.detach().float()
        self._packed = torch.ops.quantized.linear_prepack(q, None)  # bias after the scaling
        pin = torch.zeros(1, self.in_features)
        pin[0, 0], pin[0, -1] = 1.0, -1.0
        self.register_buffer("_pin", pin, persistent=False)
        self.weight = torch.nn.Parameter(q.int_repr(), requires_grad=False)
        self.register_buffer("weight_scale", scales.float())
        self.bias = None if bias is None else torch.nn.Parameter(bias, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1]).to(torch.float32)
        if self.inv_smooth is not None:
            flat = flat * self.inv_smooth
        # Per-row scales, the same whatever else is in the batch: each row is scaled to a peak
        # of 1 and one extra row [1, -1, 0...] pins the kernel's per-call range to [-1, 1], so a
        # row's rounding never depends on the other rows decoded with it. (Few ops: at one row
        # per decode step, each elementwise op costs about a tenth of the int8 matmul.)
        peak = torch.linalg.vector_norm(flat, float("inf"), dim=1, keepdim=True).clamp_(min=1e-12)
        rows = torch.cat((flat / peak, self._pin), dim=0)
        y = torch.ops.quantized.linear_dynamic(rows, self._packed, _REDUCE_RANGE)[:-1].mul_(peak)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, int8"
                + (", smoothed" if self.inv_smooth is not None else ""))


def _has_vnni() -> bool:
    """fbgemm multiplies u8 x s8 pairs into int16 without VNNI, which saturates unless the
    activations use 7 bits (`reduce_range`); with AVX-512 VNNI the full 8 bits are safe."""
    try:
        with open("/proc/cpuinfo") as f:
            return "avx512_vnni" in f.read(100_000)
    except OSError:
        return False


_REDUCE_RANGE = not _has_vnni()


@torch.no_grad()
def calibrate(model: Any, tokenizer: Any) -> dict[torch.nn.Linear, torch.Tensor]:
    """The largest |activation| per input channel of every linear layer, over one short chat
    (Python's reference text, not the card's perplexity text) run through the model."""
    import pydoc_data.topics as topics

    text = topics.topics["if"][:700] + topics.topics["with"][:700]
    messages = [{"role": "system", "content": "You are a helpful support assistant."},
                {"role": "user", "content": "How much does the Pro plan cost? " + text[:700]},
                {"role": "assistant", "content": "It costs 39 EUR per month [1]. " + text[700:]}]
    try:
        prompt = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception:  # a tokenizer without a chat template
        prompt = "\n".join(m["content"] for m in messages)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids[:, :512]
    stats: dict[torch.nn.Linear, torch.Tensor] = {}

    def hook(mod: torch.nn.Linear, inputs: tuple, _out: Any) -> None:
        x = inputs[0].detach().float().abs().reshape(-1, inputs[0].shape[-1]).amax(0)
        stats[mod] = torch.maximum(stats[mod], x) if mod in stats else x

    linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
    handles = [m.register_forward_hook(hook) for m in linears]
    ids = ids.to(next(model.parameters()).device)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    try:
        if type(head) is torch.nn.Linear and decoder is not None:
            # the head's inputs are the decoder's last hidden states: its statistics need no
            # logits (at SmolLM2's 49k vocabulary, a fifth of a forward's work)
            hook(head, (decoder(input_ids=ids, use_cache=False).last_hidden_state,), None)
        else:
            model(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return stats


def quantize_int8(model: Any, tokenizer: Any) -> int:
    """Replace every `nn.Linear` of `model` (the vocabulary head included) with `Int8Linear`,
    in place, after one calibration pass; the number replaced. The head stops being tied to
    the input embeddings, which keep their float weights for the lookup."""
    if not int8_available():
        raise RagtuneError("int8 weights need torch's x86/fbgemm dynamic int8 linear: use fp32")
    stats = calibrate(model, tokenizer)
    swaps = [(parent, name, child) for parent in model.modules()
             for name, child in parent.named_children()
             if type(child) is torch.nn.Linear]
    for parent, name, child in swaps:
        setattr(parent, name, Int8Linear(child, stats.get(child)))
    return len(swaps)
