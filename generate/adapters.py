"""Adapters on one base model: loaded on demand with peft, kept in an LRU, chosen per batch.

Only the engine's worker thread (generate/batcher.py) calls `ensure` and `forward`, so the model
is never changed while it runs. A request names a registry version (`support-voice@v3`,
resolved to its folder at request time by train/refs.py and loaded under its `adapter_key`), so
a newly trained version is picked up without a restart.
"""

from __future__ import annotations

import json
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from ragtune.train import registry

BASE = "__base__"  # peft's name for "no adapter" in a mixed batch
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")  # peft, noise


class AdapterPool:
    def __init__(self, model: Any, base_dir: Path, tokenizer: Any, slots: int = 4):
        self.base = model
        self.model = model  # becomes a PeftModel with the first adapter
        self.base_dir = base_dir
        self.tokenizer = tokenizer
        self.slots = slots
        self.loaded: OrderedDict[str, bool] = OrderedDict()  # key -> uses DoRA
        self.loads = 0

    @staticmethod
    def is_dora(version_dir: Path) -> bool:
        cfg = json.loads((version_dir / "adapter_config.json").read_text())
        return bool(cfg.get("use_dora"))

    def ensure(self, adapters: dict[str, Path]) -> None:
        """Load every adapter in `adapters` (key -> folder), evicting the least recently used
        ones not in it beyond `slots`."""
        for key, folder in adapters.items():
            if key in self.loaded:
                self.loaded.move_to_end(key)
                continue
            self.model = registry.attach(self.model, folder, self.base_dir, adapter_name=key,
                                         tokenizer=self.tokenizer)
            self.model.eval()
            self.loaded[key] = self.is_dora(folder)
            self.loads += 1
        for key in list(self.loaded):
            if len(self.loaded) <= max(self.slots, len(adapters)):
                break
            if key not in adapters:
                self.model.delete_adapter(key)
                del self.loaded[key]

    def can_mix(self, keys: set[str | None]) -> bool:
        """Whether rows with these adapters may share a batch (peft cannot mix DoRA)."""
        named = {k for k in keys if k is not None}
        if len(keys) <= 1:
            return True
        return not any(self.loaded.get(k, False) for k in named)

    def forward(self, names: list[str | None], **kwargs: Any) -> Any:
        """One forward pass where row i uses adapter `names[i]` (None: the base model)."""
        distinct = set(names)
        with torch.inference_mode():
            if not self.loaded:
                return self.base(**kwargs)
            if distinct == {None}:
                with self.model.disable_adapter():
                    return self.model(**kwargs)
            if len(distinct) == 1:
                self.model.set_adapter(names[0])
                return self.model(**kwargs)
            return self.model(**kwargs, adapter_names=[n or BASE for n in names])
