"""Splitting measured in the embedder's own tokens, so no chunk is silently cut at embed time.

Markdown is first split on headings (kept as chunk metadata `h1`/`h2`/`h3`), then every section
is split recursively (paragraphs, lines, sentences, words) by langchain-text-splitters with the
embedder's tokenizer as the length function. A last pass cuts any piece still over the limit
(a very long "word", a table row) at token boundaries, so the guarantee holds for any input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from langchain_text_splitters import MarkdownHeaderTextSplitter, RecursiveCharacterTextSplitter

from ragtune.ingest.loaders import Document

HEADERS = [("#", "h1"), ("##", "h2"), ("###", "h3")]


@dataclass
class Chunk:
    text: str
    position: int  # order within its document
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SplitConfig:
    chunk_tokens: int = 200  # target size in embedder tokens
    chunk_overlap: int = 32  # overlap in embedder tokens


def max_chunk_tokens(embedder: Any) -> int:
    """The largest chunk `embedder` reads whole: its max sequence, less its own markers."""
    return TokenSplitter(embedder.tokenizer, embedder.max_seq_length, SplitConfig(10**9, 0)).limit


class TokenSplitter:
    """Split documents into chunks of at most `limit` embedder tokens."""

    def __init__(self, tokenizer: Any, max_seq_length: int, config: SplitConfig = SplitConfig()):
        self.tokenizer = tokenizer
        # [CLS] and [SEP] (or the model's equivalents) take room in the max sequence
        specials = len(tokenizer("").input_ids) if callable(tokenizer) else 2
        self.limit = min(config.chunk_tokens, max_seq_length - specials)
        overlap = min(config.chunk_overlap, self.limit // 2)
        self.config = config
        # the recursive splitter measures the same pieces again while merging: count once
        self.count = lru_cache(maxsize=1 << 16)(self._count)
        self._recursive = RecursiveCharacterTextSplitter(
            chunk_size=self.limit,
            chunk_overlap=overlap,
            length_function=self.count,
            separators=["\n\n", "\n", ". ", "? ", "! ", "; ", ", ", " ", ""],
            keep_separator="end",
        )
        self._markdown = MarkdownHeaderTextSplitter(HEADERS, strip_headers=False)

    def _count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False, verbose=False).input_ids)

    def split(self, doc: Document) -> list[Chunk]:
        chunks: list[Chunk] = []
        for section in doc.sections:
            pieces: list[tuple[str, dict[str, Any]]]
            if doc.format == "markdown":
                pieces = [(d.page_content, d.metadata) for d in self._markdown.split_text(section.text)]
            else:
                pieces = [(section.text, {})]
            for text, heading_meta in pieces:
                for part in self._recursive.split_text(text):
                    for piece in self._hard_cut(part):
                        if piece.strip():
                            meta = {**section.metadata, **heading_meta}
                            chunks.append(Chunk(piece.strip(), len(chunks), meta))
        return chunks

    def _hard_cut(self, text: str, window: int | None = None) -> list[str]:
        """Cut a piece still over the limit at token offsets; nothing is dropped. A cut inside
        a word can re-tokenise one token longer, so each piece is measured again."""
        window = window or self.limit
        if self.count(text) <= self.limit:
            return [text]
        offsets = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True,
                                 verbose=False)["offset_mapping"]
        out, start_tok = [], 0
        while start_tok < len(offsets):
            end_tok = min(start_tok + window, len(offsets))
            start_char = offsets[start_tok][0] if start_tok else 0
            end_char = offsets[end_tok][0] if end_tok < len(offsets) else len(text)
            piece = text[start_char:end_char]
            if self.count(piece) > self.limit and window > 1:
                out += self._hard_cut(piece, window - max(1, window // 8))
            else:
                out.append(piece)
            start_tok = end_tok
        return out
