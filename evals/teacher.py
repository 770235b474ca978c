"""The teacher `ragtune synth` asks: any OpenAI-compatible chat endpoint (`--teacher URL
--teacher-model M`, its key from RAGTUNE_TEACHER_KEY or OPENAI_API_KEY), the local generator
(the default), or none (the plain rule-made questions and answers only).

A teacher only words things: it paraphrases a question, or writes an answer in the seeds' voice
from the chunk that holds the fact. Whatever it writes is checked by evals/synth.py before it is
kept (the fact still there, or not given away; the format of the seeds), so a weak teacher costs
yield, never correctness.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

from ragtune.platform.errors import RagtuneError


class Teacher(Protocol):
    name: str  # recorded in each example's provenance

    def complete(self, messages: list[dict[str, str]], max_tokens: int) -> str:
        """The teacher's answer to a chat; a RagtuneError when it cannot answer."""
        ...


class HttpTeacher:
    """An OpenAI-compatible `/chat/completions` endpoint (vLLM, Ollama, a hosted API...)."""

    def __init__(self, url: str, model: str, key: str | None = None, timeout: float = 120.0,
                 retries: int = 2):
        import httpx

        self.url = url.rstrip("/")
        if not self.url.endswith("/chat/completions"):
            self.url += "/chat/completions"
        self.model, self.retries = model, retries
        self.name = f"{model} at {url}"
        key = key or os.environ.get("RAGTUNE_TEACHER_KEY") or os.environ.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.Client(timeout=timeout, headers=headers)

    def complete(self, messages: list[dict[str, str]], max_tokens: int) -> str:
        import httpx

        body = {"model": self.model, "messages": messages, "max_tokens": max_tokens,
                "temperature": 0.3}
        last = ""
        for _ in range(self.retries + 1):
            try:
                r = self._client.post(self.url, json=body)
            except httpx.HTTPError as e:
                last = f"{type(e).__name__}: {e}"
                continue
            if r.status_code >= 500 or r.status_code == 429:
                last = f"HTTP {r.status_code}: {r.text[:200]}"
                continue
            if r.status_code >= 400:
                raise RagtuneError(f"teacher {self.name} refused the request (HTTP "
                                   f"{r.status_code}: {r.text[:200]}): check --teacher-model and "
                                   "the key (RAGTUNE_TEACHER_KEY)")
            try:
                return r.json()["choices"][0]["message"]["content"] or ""
            except (ValueError, KeyError, IndexError, TypeError):
                last = f"not a chat completion: {r.text[:200]}"
        raise RagtuneError(f"teacher {self.name} failed: {last}")

    def close(self) -> None:
        self._client.close()


class LocalTeacher:
    """The local generator (the base model, no adapter), greedy."""

    def __init__(self, generator: Any, own: bool = True):
        self.generator, self.own = generator, own  # own: closed with this teacher
        self.name = f"local {generator.model_name}"

    def complete(self, messages: list[dict[str, str]], max_tokens: int) -> str:
        from ragtune.platform.types import GenParams

        text, _ = self.generator.generate(messages, GenParams(max_tokens=max_tokens))
        return text

    def close(self) -> None:
        close = getattr(self.generator, "close", None)
        if close and self.own:
            close()


def paraphrase_prompt(question: str) -> list[dict[str, str]]:
    """Rewrite, shown by two examples (a small model follows examples better than rules)."""
    rule = ("Rewrite the question as one short, natural question a customer would ask. Keep every "
            "name and detail; do not answer it. Reply with the question only.")
    shots = [('How long? From the returns document, fill in the blank: "You can return any '
              'unused widget within ___ of delivery."',
              "How long after delivery can I return an unused widget?"),
             ('How much? From the shipping document, fill in the blank: "Express shipping '
              'costs ___ ."', "How much does express shipping cost?")]
    out = [{"role": "system", "content": rule}]
    for q, a in shots:
        out += [{"role": "user", "content": f"Rewrite: {q}"}, {"role": "assistant", "content": a}]
    return out + [{"role": "user", "content": f"Rewrite: {question}"}]


def answer_prompt(seeds: list[list[dict[str, str]]], chunk: str, question: str,
                  system: str | None) -> list[dict[str, str]]:
    """The seeds as examples of the voice and format, then the question with its source."""
    rules = ("Answer the customer's question in exactly the voice and format of the examples, "
             "using only the source below; state the figure exactly as the source writes it.")
    out = [{"role": "system", "content": f"{system}\n\n{rules}" if system else rules}]
    for seed in seeds:
        out += [m for m in seed if m["role"] in ("user", "assistant")][-2:]
    out.append({"role": "user", "content": f"Source:\n{chunk}\n\nQuestion: {question}"})
    return out
