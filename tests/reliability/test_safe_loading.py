"""Only safetensors are loaded. An adapter folder holding a pickle payload (a `.bin` / `.pt`
whose unpickling runs `exec` and creates a sentinel file) is refused by every path that loads
adapters: `registry.attach`, `register`, serving (the adapter pool and the engine), the
`ragtune adapters` CLI, `merge`, and `--resume` of a training checkpoint. The sentinel never
appears, and an audit hook proves the pickle is never even opened. A `.safetensors` file that
is really a pickle or garbage is a typed `RagtuneError` (`DamagedError`), not a crash.

The static side (no `torch.load` without `weights_only=True`, no `pickle.load`) is in
test_no_unsafe_loading.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ragtune.generate.adapters import AdapterPool
from ragtune.platform.errors import DamagedError, RagtuneError
from ragtune.platform.settings import Settings, get_settings
from ragtune.platform.types import GenParams
from ragtune.train import checkpoint, lora, registry
from ragtune.train.data import Example
from ragtune.train.lora import TrainConfig, train


class Payload:
    """Unpickling this calls `exec`, which writes the sentinel file: a stand-in for any code."""

    def __init__(self, sentinel: Path):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return (exec, (f"open({self.sentinel!r}, 'w').write('pwned')",))


# -- the audit hook: proof that no pickle file is opened and nothing is unpickled --------------

SEEN: list[str] = []
WATCHING = [False]


def _audit(event: str, args: tuple) -> None:
    if not WATCHING[0]:
        return
    if event == "pickle.find_class":
        SEEN.append(f"unpickled {args[0]}.{args[1]}")
    elif event == "open" and isinstance(args[0], (str, os.PathLike)) and _reads(args):
        name = os.fspath(args[0])
        if name.lower().endswith(registry.PICKLE_SUFFIXES) or "pwned" in name:
            SEEN.append(f"opened {name}")


def _reads(open_args: tuple) -> bool:
    """An `open` for reading (the test's own writes of the payloads are not loads)."""
    _, mode, flags = open_args
    if isinstance(mode, str):
        return not set(mode) & set("wax+")
    return not flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)


sys.addaudithook(_audit)  # hooks cannot be removed: this one only records while WATCHING


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads on a shared 2-core machine spin against each other
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def sentinel(tmp_path) -> Path:
    return tmp_path / "pwned.txt"


@pytest.fixture
def watch(sentinel):
    """Record pickle opens and unpickling while the test body runs; none may happen."""
    SEEN.clear()
    WATCHING[0] = True
    yield SEEN
    WATCHING[0] = False
    assert SEEN == [], SEEN
    assert not sentinel.exists(), "a pickle payload ran"


def torch_pickle(sentinel: Path) -> bytes:
    """What `torch.save` writes (a zip holding data.pkl): the real-world `.bin` / `.pt`."""
    import io

    buf = io.BytesIO()
    torch.save({"lora_A": Payload(sentinel)}, buf)
    return buf.getvalue()


def raw_pickle(sentinel: Path) -> bytes:
    return pickle.dumps(Payload(sentinel))


@pytest.mark.parametrize("make, loader", [(torch_pickle, "torch.load(p, weights_only=False)"),
                                          (raw_pickle, "pickle.load(open(p, 'rb'))")])
def test_the_payloads_are_live(tmp_path, sentinel, make, loader):
    """Control: unpickled by a careless loader (in a child process), each payload does run."""
    path = tmp_path / "payload.bin"
    path.write_bytes(make(sentinel))
    code = f"import pickle, sys, torch; p = sys.argv[1]; {loader}"
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, capture_output=True)
    assert sentinel.read_text() == "pwned"


# -- adapters holding a payload ------------------------------------------------------------------


@pytest.fixture(scope="module")
def base(tiny_lm_dir):
    return (AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir)),
            AutoTokenizer.from_pretrained(str(tiny_lm_dir)))


@pytest.fixture(scope="module")
def clean_adapter(tiny_lm_dir, tmp_path_factory) -> Path:
    torch.manual_seed(1)
    model = lora.add_lora(AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir)), TrainConfig(rank=4))
    out = tmp_path_factory.mktemp("clean") / "adapter"
    checkpoint.save_adapter(model, out)
    return out


def meta_for(base_dir: Path) -> dict:
    return {"base_model": str(base_dir), "base_path": str(base_dir),
            "base_fingerprint": registry.model_fingerprint(base_dir)}


LAYOUTS = {  # where the payload sits in the adapter folder
    "bin beside safetensors": ("adapter_model.bin", torch_pickle, False),
    "bin instead of safetensors": ("adapter_model.bin", torch_pickle, True),
    "pt beside safetensors": ("training_args.pt", raw_pickle, False),
    "nested pkl": ("extra/optimizer.PKL", raw_pickle, False),
}


def plant(version: Path, layout: str, sentinel: Path) -> None:
    """Tamper with a registered version (or any adapter folder) as a hand copy would."""
    name, make, drop_safetensors = LAYOUTS[layout]
    (version / name).parent.mkdir(exist_ok=True)
    (version / name).write_bytes(make(sentinel))
    if drop_safetensors:
        (version / "adapter_model.safetensors").unlink()


def poisoned_version(settings: Settings, name: str, layout: str, clean_adapter: Path,
                     base_dir: Path, sentinel: Path) -> Path:
    version = registry.register(settings, name, clean_adapter, meta_for(base_dir), card={})
    plant(version, layout, sentinel)
    return version


@pytest.mark.parametrize("layout", LAYOUTS)
def test_attach_and_merge_refuse_a_pickle(layout, base, tiny_lm_dir, clean_adapter, sentinel,
                                          tmp_path, watch):
    model, tok = base
    version = poisoned_version(get_settings(), "voice", layout, clean_adapter, tiny_lm_dir, sentinel)
    with pytest.raises(RagtuneError, match="only safetensors"):
        registry.attach(model, version, tiny_lm_dir, tokenizer=tok)
    with pytest.raises(RagtuneError, match="only safetensors"):
        registry.merge(model, tok, version, tiny_lm_dir, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
    assert not hasattr(model, "peft_config")  # the base model was left alone


@pytest.mark.parametrize("layout", LAYOUTS)
def test_register_refuses_a_folder_holding_a_pickle(layout, tiny_lm_dir, clean_adapter, sentinel,
                                                    tmp_path, watch):
    settings = get_settings()
    folder = tmp_path / "to-register"
    shutil.copytree(clean_adapter, folder)
    plant(folder, layout, sentinel)
    with pytest.raises(RagtuneError, match="only safetensors"):
        registry.register(settings, "voice", folder, meta_for(tiny_lm_dir))
    assert registry.list_adapters(settings) == []
    assert not list(settings.adapters_dir.rglob("*.bin"))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_adapter_pool_refuses_a_pickle(layout, base, tiny_lm_dir, clean_adapter, sentinel,
                                           watch):
    model, tok = base
    version = poisoned_version(get_settings(), "voice", layout, clean_adapter, tiny_lm_dir, sentinel)
    pool = AdapterPool(model, tiny_lm_dir, tok)
    with pytest.raises(RagtuneError, match="only safetensors"):
        pool.ensure({"voice--v1": version})
    assert not pool.loaded and pool.model is model


@pytest.fixture(scope="module")
def engine(tiny_lm_dir, tmp_path_factory):
    from ragtune.generate.engine import Engine

    eng = Engine(Settings(home=tmp_path_factory.mktemp("engine-home"), generator=str(tiny_lm_dir)),
                 max_batch=2, queue_size=8)
    yield eng
    eng.close()


def test_serving_a_poisoned_adapter_fails_that_request_only(engine, tiny_lm_dir, clean_adapter,
                                                            sentinel, watch):
    """Through the engine (what /v1/chat/completions calls): the request naming the adapter
    ends with an error, nothing is unpickled, and the server goes on serving."""
    messages = [{"role": "user", "content": "hello"}]
    params = GenParams(max_tokens=3)
    for i, layout in enumerate(LAYOUTS):
        poisoned_version(engine.settings, f"evil{i}", layout, clean_adapter, tiny_lm_dir, sentinel)
        _, last = engine.generate(messages, params, model=f"evil{i}")
        assert last.finish_reason == "error", layout
    _, last = engine.generate(messages, params)  # the base model still answers
    assert last.finish_reason in ("length", "stop")
    assert engine.ready() and not engine.pool.loaded


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_adapters_cli_never_opens_a_pickle(layout, tiny_lm_dir, clean_adapter, sentinel,
                                               tmp_path, watch):
    from typer.testing import CliRunner

    from ragtune.cli import app

    poisoned_version(get_settings(), "voice", layout, clean_adapter, tiny_lm_dir, sentinel)
    run = CliRunner().invoke
    assert "voice@v1" in run(app, ["adapters", "list"]).output  # reads metadata only
    merged = run(app, ["adapters", "merge", "voice", "--out", str(tmp_path / "merged")])
    assert merged.exit_code != 0 and isinstance(merged.exception, RagtuneError)
    assert "only safetensors" in str(merged.exception)
    assert not (tmp_path / "merged").exists()


# -- training checkpoints ------------------------------------------------------------------------


def ex(i: int) -> Example:
    return Example([{"role": "user", "content": f"Question {i}?"},
                    {"role": "assistant", "content": json.dumps({"answer": "yes"})}], i)


TRAIN_SET = [ex(i) for i in range(8)]
CFG = dict(epochs=2, batch_size=4, lr=1e-2, rank=4, alpha=8, seed=0)


@pytest.fixture(scope="module")
def checkpointed(tiny_lm_dir, tmp_path_factory) -> Path:
    """A run stopped after its first step, with its (safetensors-only) checkpoint."""
    run = tmp_path_factory.mktemp("ckpt") / "run"

    def stop(step: int, loss: float) -> None:
        raise KeyboardInterrupt

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.raises(KeyboardInterrupt):
            train(TrainConfig(**CFG), *fresh(tiny_lm_dir), TRAIN_SET, [], run, on_step=stop)
    finally:
        torch.set_num_threads(threads)
    assert sorted(p.name for p in (run / "checkpoint").iterdir()) == [
        "adapter.safetensors", "manifest.json", "state.json", "trainer_state.safetensors"]
    return run


def fresh(model_dir: Path):
    return (AutoModelForCausalLM.from_pretrained(str(model_dir)),
            AutoTokenizer.from_pretrained(str(model_dir)))


@pytest.mark.parametrize("planted", ["trainer_state.pt", "adapter.bin", "old/optimizer.pt"])
def test_resume_refuses_a_checkpoint_holding_a_pickle(planted, checkpointed, tiny_lm_dir,
                                                      sentinel, tmp_path, watch):
    """Also what a checkpoint of an older ragtune (trainer_state.pt) meets: a clear refusal."""
    run = tmp_path / "run"
    shutil.copytree(checkpointed, run)
    (run / "checkpoint" / planted).parent.mkdir(exist_ok=True)
    (run / "checkpoint" / planted).write_bytes(torch_pickle(sentinel))
    with pytest.raises(RagtuneError, match="only safetensors checkpoints are loaded"):
        train(TrainConfig(**CFG), *fresh(tiny_lm_dir), TRAIN_SET, [], run, resume=True)


# -- a .safetensors file that is a pickle or garbage: a typed error ------------------------------


def garbage(kind: str, sentinel: Path, real: bytes) -> bytes:
    return {"torch pickle": torch_pickle(sentinel), "raw pickle": raw_pickle(sentinel),
            "random bytes": os.urandom(4096), "truncated": real[: len(real) // 2],
            "empty": b"", "huge header": (2**40).to_bytes(8, "little") + b"{}"}[kind]


KINDS = ["torch pickle", "raw pickle", "random bytes", "truncated", "empty", "huge header"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("recorded", [True, False], ids=["checksum recorded", "no checksum"])
def test_attach_of_damaged_safetensors_is_a_typed_error(kind, recorded, base, tiny_lm_dir,
                                                        clean_adapter, sentinel, watch):
    """With the sha256 recorded at registration it fails that check; a version registered
    without one (an older ragtune) fails the header check: never a crash or an unpickle."""
    model, tok = base
    version = registry.register(get_settings(), "voice", clean_adapter, meta_for(tiny_lm_dir))
    weights = version / "adapter_model.safetensors"
    weights.write_bytes(garbage(kind, sentinel, weights.read_bytes()))
    if not recorded:
        meta = registry.read_meta(version)
        del meta["weights_sha256"]
        (version / registry.META).write_text(json.dumps(meta))
    with pytest.raises(DamagedError, match="sha256 recorded" if recorded else
                       "not a readable safetensors file"):
        registry.attach(model, version, tiny_lm_dir, tokenizer=tok)


@pytest.mark.parametrize("kind", KINDS)
def test_register_of_damaged_safetensors_is_a_typed_error(kind, clean_adapter, sentinel, tmp_path,
                                                          tiny_lm_dir, watch):
    folder = tmp_path / "to-register"
    shutil.copytree(clean_adapter, folder)
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(garbage(kind, sentinel, weights.read_bytes()))
    with pytest.raises(DamagedError, match="not a readable safetensors file"):
        registry.register(get_settings(), "voice", folder, meta_for(tiny_lm_dir))
    assert registry.list_adapters(get_settings()) == []


def test_serving_and_cli_report_damaged_safetensors(engine, tiny_lm_dir, clean_adapter, sentinel,
                                                    tmp_path, watch):
    from typer.testing import CliRunner

    from ragtune.cli import app

    version = registry.register(engine.settings, "damaged", clean_adapter, meta_for(tiny_lm_dir))
    (version / "adapter_model.safetensors").write_bytes(torch_pickle(sentinel))
    _, last = engine.generate([{"role": "user", "content": "hi"}], GenParams(max_tokens=3),
                              model="damaged")
    assert last.finish_reason == "error" and engine.ready()

    local = registry.register(get_settings(), "damaged", clean_adapter, meta_for(tiny_lm_dir))
    (local / "adapter_model.safetensors").write_bytes(os.urandom(1000))
    merged = CliRunner().invoke(app, ["adapters", "merge", "damaged", "--out", str(tmp_path / "m")])
    assert isinstance(merged.exception, DamagedError) and not (tmp_path / "m").exists()


@pytest.mark.parametrize("kind", KINDS)
def test_resume_of_damaged_checkpoint_tensors_is_a_typed_error(kind, checkpointed, tiny_lm_dir,
                                                               sentinel, tmp_path, watch):
    """Damaged behind the manifest's back: the manifest check refuses it. Damaged and
    re-sealed (a forged manifest): reading the tensors is a DamagedError."""
    run = tmp_path / "run"
    shutil.copytree(checkpointed, run)
    path = run / "checkpoint" / "trainer_state.safetensors"
    path.write_bytes(garbage(kind, sentinel, path.read_bytes()))
    with pytest.raises(RagtuneError, match="no complete checkpoint.*trainer_state.safetensors"):
        train(TrainConfig(**CFG), *fresh(tiny_lm_dir), TRAIN_SET, [], run, resume=True)
    manifest = json.loads((run / "checkpoint" / "manifest.json").read_text())
    data = path.read_bytes()
    manifest["files"][path.name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (run / "checkpoint" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DamagedError, match="trainer_state.safetensors is not a readable safetensors"):
        train(TrainConfig(**CFG), *fresh(tiny_lm_dir), TRAIN_SET, [], run, resume=True)
