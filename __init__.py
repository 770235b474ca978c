"""ragtune: facts go in the index, behaviour goes in the adapter.

The public Python API:

    from ragtune import Collection, Settings
    col = Collection.open("docs")
    col.add(["./docs"])
    hits = col.search("how do I ...", k=5, mode="hybrid")
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

__all__ = ["Collection", "RagtuneError", "ScoredChunk", "Settings", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from ragtune.ingest.collection import Collection
    from ragtune.platform.errors import RagtuneError
    from ragtune.platform.settings import Settings
    from ragtune.platform.types import ScoredChunk


def __getattr__(name: str):  # lazy: `import ragtune` must not import torch
    if name == "Collection":
        from ragtune.ingest.collection import Collection

        return Collection
    if name == "Settings":
        from ragtune.platform.settings import Settings

        return Settings
    if name == "RagtuneError":
        from ragtune.platform.errors import RagtuneError

        return RagtuneError
    if name == "ScoredChunk":
        from ragtune.platform.types import ScoredChunk

        return ScoredChunk
    raise AttributeError(name)
