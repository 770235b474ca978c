"""`ragtune synth`: evaluation and training sets made from a collection (and a few seeds).

    ragtune synth eval  --collection C --out QA.jsonl [--n 50]
    ragtune synth train --collection C --seeds SEEDS.jsonl --out TRAIN.jsonl [--n 200]

Facts come out of the collection's chunks by rule (evals/synth_facts.py: amounts, percentages,
times, dates, durations, quantities, each with the sentence that states it and a plain question),
so every fact is in its chunk. The sets are spread over the documents, round robin.

- `eval` writes `ragtune eval`'s QA format: the question, the fact its answer must contain, the
  sentence as the reference, the document (`source`), and per item the chunk it comes from and
  the rank at which the question retrieves that chunk (`retrieved_rank`, null when not in the
  top k): the set measures the generator, not only retrieval.
- `train` writes `ragtune train`'s chat format in the seeds' format and system prompt: each
  question answered from its fact (the sentence, as the seeds' JSON object when they are JSON,
  else as text), then the retrieved context put in the prompt as served, RAFT-style
  (train/context.py: the chunk that holds the fact among ragtune's own hard negatives, cited as
  [n]; a share with the supporting chunk removed, answered "the documents do not say"). The
  seeds come first; every line records where it came from (`ragtune.origin`, chunk id, fact,
  teacher) and its `license`, which the training card counts.

Both drop, and count, what repeats: a question already kept (normalised), a fact already kept
from the same document, and anything in `--exclude` files (a QA set or a training set: by
question text and by fact), so an evaluation set and a training set made this way never
overlap. A teacher (evals/teacher.py) only words things, and is checked: a paraphrase must keep
the question's content words and not give the fact away; a teacher's answer must hold the fact
and have the seeds' format. What fails a check is dropped (or the plain question kept) with its
reason in the summary. Output is appended as it is made: a second run with the same `--out`
resumes, skipping what is there.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragtune.evals.synth_facts import Fact, facts_in, holds, normalise, topic_of, verify
from ragtune.evals.teacher import Teacher, answer_prompt, paraphrase_prompt
from ragtune.platform.errors import RagtuneError
from ragtune.platform.files import write_bytes, write_json
from ragtune.platform.progress import progress
from ragtune.train.context import content_words, with_context
from ragtune.train.data import Example, to_messages

MAX_TEACHER_ERRORS = 3  # in a row: the run stops (what was kept stays; run again to resume)


@dataclass
class Candidate:
    chunk_id: int
    source: str
    text: str
    fact: Fact

    @property
    def key(self) -> str:
        return f"{self.chunk_id}:{normalise(self.fact.value)}"


@dataclass
class SynthReport:
    kind: str  # eval | train
    out: str
    teacher: str
    candidates: int = 0
    kept: int = 0
    resumed: int = 0  # already in --out from an earlier run
    seeds: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> count
    paraphrased: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [f"synth {self.kind}: {self.kept} written to {self.out} ({self.resumed} there "
                 f"from an earlier run, {self.seeds} seeds) from {self.candidates} candidate "
                 f"facts; teacher: {self.teacher}; {self.paraphrased} questions paraphrased; "
                 f"{self.seconds:.0f}s"]
        lines += [f"  dropped {n}: {why}" for why, n in self.dropped.most_common()]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "out": self.out, "teacher": self.teacher,
                "candidates": self.candidates, "kept": self.kept, "resumed": self.resumed,
                "seeds": self.seeds, "paraphrased": self.paraphrased,
                "dropped": dict(self.dropped), "seconds": round(self.seconds, 1)}


def candidates(chunks: list[tuple[int, str, str]]) -> list[Candidate]:
    """Every fact of every chunk (id, source, text), spread over the documents round robin."""
    by_source: dict[str, list[Candidate]] = {}
    for chunk_id, source, text in chunks:
        for fact in facts_in(text, topic_of(source)):
            by_source.setdefault(source, []).append(Candidate(chunk_id, source, text, fact))
    queues = [by_source[s] for s in sorted(by_source)]
    out: list[Candidate] = []
    while any(queues):
        for q in queues:
            if q:
                out.append(q.pop(0))
    return out


@dataclass
class Exclusions:
    """Questions (normalised) and facts (normalised) that a new set must not hold."""

    questions: set[str] = field(default_factory=set)
    facts: set[str] = field(default_factory=set)
    answers: list[str] = field(default_factory=list)  # training answers, for facts inside them

    @classmethod
    def read(cls, paths: list[Path]) -> Exclusions:
        ex = cls()
        for path in paths:
            try:
                lines = Path(path).read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as e:
                raise RagtuneError(f"--exclude {path}: cannot read it ({e})") from None
            for line in lines:
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(obj, dict):
                    continue
                if isinstance(obj.get("question"), str):  # a QA item
                    ex.questions.add(normalise(obj["question"]))
                    for f in obj.get("facts") or []:
                        for alt in f if isinstance(f, list) else [f]:
                            if isinstance(alt, str):
                                ex.facts.add(normalise(alt))
                for m in obj.get("messages") or []:  # a training example
                    if isinstance(m, dict) and isinstance(m.get("content"), str):
                        if m.get("role") == "user":
                            ex.questions.add(normalise(m["content"]))
                        elif m.get("role") == "assistant":
                            ex.answers.append(normalise(m["content"]))
                fact = (obj.get("ragtune") or {}).get("fact") if isinstance(
                    obj.get("ragtune"), dict) else None
                if isinstance(fact, str):
                    ex.facts.add(normalise(fact))
        return ex

    def why(self, c: Candidate) -> str | None:
        value, sentence = normalise(c.fact.value), normalise(c.fact.sentence)
        if normalise(c.fact.question) in self.questions:
            return "question in an --exclude file"
        if value in self.facts or any(holds(a, value) for a in self.answers) or any(
                holds(sentence, f) for f in self.facts):
            return "fact in an --exclude file"
        return None


class _Out:
    """The output file, appended line by line (flushed), and the keys already in it."""

    def __init__(self, path: Path, key: Callable[[dict[str, Any]], str | None]):
        self.path = Path(path)
        self.keys: set[str] = set()
        self.rows: list[dict[str, Any]] = []
        if self.path.exists():
            lines = self.path.read_text(encoding="utf-8").split("\n")
            cut = lines.pop() if lines else ""  # after the last newline: "" or a cut line
            for n, line in enumerate(lines, 1):
                try:
                    obj = json.loads(line)
                except ValueError:
                    raise RagtuneError(f"{self.path} line {n} is not JSON: this is not a file "
                                       "synth wrote; choose another --out") from None
                if not isinstance(obj, dict):
                    raise RagtuneError(f"{self.path} line {n} is not a JSON object: choose "
                                       "another --out")
                self.rows.append(obj)
                k = key(obj)
                if k:
                    self.keys.add(k)
            if cut.strip():  # an interrupted write: dropped (made again), atomically
                write_bytes(self.path, "".join(line + "\n" for line in lines).encode())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = self.path.open("a", encoding="utf-8")

    def write(self, obj: dict[str, Any]) -> None:
        self._f.write(json.dumps(obj, ensure_ascii=False) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def _paraphrase(teacher: Teacher | None, c: Candidate, report: SynthReport,
                rank: Callable[[str], int | None] | None = None) -> str:
    """The teacher's wording of the question when it passes the checks (one question, the
    fact not given away, no number the plain question lacks, its content words kept, and with
    `rank`, its chunk retrieved at least as high as by the plain question), else the plain
    one."""
    plain = c.fact.question
    if teacher is None:
        return plain
    try:
        text = teacher.complete(paraphrase_prompt(plain), 48).strip().strip('"').strip()
    except RagtuneError as e:
        report.dropped[f"paraphrase failed, plain question kept ({str(e)[:80]})"] += 1
        return plain
    text = text.splitlines()[0].strip() if text else ""
    wanted = content_words(plain.replace("___", " ")) - {"fill", "blank", "documents",
                                                         "document"}
    value_digits = re.findall(r"\d+", c.fact.value)
    reason = None
    if not text.endswith("?") or len(text.split()) > 40:
        reason = "not one question"
    elif normalise(c.fact.value) in normalise(text) or any(d in text for d in value_digits):
        reason = "gives the fact away"
    elif set(re.findall(r"\d+", text)) - set(re.findall(r"\d+", plain)):
        reason = "adds a number"
    elif not text.lower().startswith(plain.split("?")[0].split()[0].lower()):
        reason = "asks something else"
    elif wanted and len(content_words(text) & wanted) < 0.5 * min(len(wanted), 6):
        reason = "drops the question's words"
    elif rank is not None:
        before, after = rank(plain), rank(text)
        if after is None or (before is not None and after > before):
            reason = "does not retrieve the fact's chunk as well"
    if reason:
        report.dropped[f"paraphrase {reason}: plain question kept"] += 1
        return plain
    report.paraphrased += 1
    return text


def _rank(search: Callable[[str, int], list[Any]] | None, question: str, chunk_id: int,
          k: int) -> int | None:
    if search is None:
        return None
    for i, hit in enumerate(search(question, k), 1):
        if hit.chunk_id == chunk_id:
            return i
    return None


def _relative(sources: list[str]) -> Callable[[str], str]:
    import os

    try:
        root = os.path.commonpath([os.path.dirname(s) for s in sources]) if sources else ""
    except ValueError:
        root = ""
    return lambda s: os.path.relpath(s, root) if root else s


def synth_eval(chunks: list[tuple[int, str, str]], out: Path, n: int = 50,
               teacher: Teacher | None = None, exclude: Exclusions | None = None,
               search: Callable[[str, int], list[Any]] | None = None, k: int = 5,
               prefix: str = "synth") -> SynthReport:
    """An evaluation set of up to `n` items from `chunks` (chunk id, source, text); `search(q,
    k)` ranks each question's chunk."""
    t0 = time.time()
    report = SynthReport("eval", str(out), teacher.name if teacher else "none")
    found = candidates(chunks)
    report.candidates = len(found)
    rel = _relative([c.source for c in found])
    sink = _Out(out, lambda o: o.get("ragtune", {}).get("key") if isinstance(
        o.get("ragtune"), dict) else None)
    report.resumed = len(sink.rows)
    seen_q = {normalise(r.get("question", "")) for r in sink.rows}
    seen_fact = {(r.get("source"), normalise((r.get("facts") or [""])[0] or "")) for r in sink.rows}
    seen_fact |= {(normalise(r.get("reference") or ""), normalise((r.get("facts") or [""])[0] or ""))
                  for r in sink.rows}
    exclude = exclude or Exclusions()
    try:
        with progress(n, "synth eval", unit="item") as bar:
            bar.update(min(report.resumed, n))
            for c in found:
                if report.resumed + report.kept >= n:
                    break
                if c.key in sink.keys:
                    continue
                why = exclude.why(c)
                if why is None and ((rel(c.source), normalise(c.fact.value)) in seen_fact or (
                        normalise(c.fact.sentence), normalise(c.fact.value)) in seen_fact):
                    why = "fact already kept (this document, or this sentence elsewhere)"
                if why is None and not verify(c.fact.value, c.text):
                    why = "fact not found in its chunk"  # cannot happen by construction
                if why:
                    report.dropped[why] += 1
                    continue
                question = _paraphrase(teacher, c, report, None if search is None else
                                       lambda q, c=c: _rank(search, q, c.chunk_id, k))
                if normalise(question) in seen_q or normalise(question) in exclude.questions:
                    report.dropped["question already kept"] += 1
                    continue
                seen_q.add(normalise(question))
                seen_fact.add((rel(c.source), normalise(c.fact.value)))
                seen_fact.add((normalise(c.fact.sentence), normalise(c.fact.value)))
                number = report.resumed + report.kept + 1
                sink.write({"id": f"{prefix}-{number:04d}", "question": question,
                            "facts": [c.fact.value], "format": "text",
                            "reference": c.fact.sentence, "source": rel(c.source),
                            "chunk_id": c.chunk_id, "kind": c.fact.kind,
                            "retrieved_rank": _rank(search, question, c.chunk_id, k),
                            "ragtune": {"key": c.key, "origin": "synth",
                                        "teacher": report.teacher}})
                report.kept += 1
                bar.update(1)
    finally:
        sink.close()
    report.seconds = time.time() - t0
    return report


# -- training sets -----------------------------------------------------------------------------


@dataclass
class Seeds:
    examples: list[list[dict[str, str]]]
    system: str | None  # the system prompt every seed shares
    keys: list[str] | None  # the JSON object keys of every seed answer, or None for text
    main: str | None  # the key that carries the answer's text

    @classmethod
    def read(cls, path: Path) -> Seeds:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise RagtuneError(f"--seeds {path}: cannot read it ({e})") from None
        examples, problems = [], []
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                fmt, messages, _ = to_messages(json.loads(line))
            except (ValueError, RecursionError) as e:
                problems.append(f"line {i}: {e}")
                continue
            if fmt == "chat-tools":
                problems.append(f"line {i}: tool-use examples cannot seed synthesized answers")
                continue
            examples.append(messages)
        if problems or not examples:
            raise RagtuneError(f"--seeds {path}: " + ("; ".join(problems[:5]) if problems else
                               "no examples") + " (one training example per line, as `ragtune "
                               "train` reads them)")
        systems = {m[0]["content"] for m in examples if m[0]["role"] == "system"}
        system = systems.pop() if len(systems) == 1 and all(
            m[0]["role"] == "system" for m in examples) else None
        answers = [m[-1]["content"] for m in examples]
        objs = []
        for a in answers:
            try:
                obj = json.loads(a)
            except ValueError:
                obj = None
            objs.append(obj if isinstance(obj, dict) else None)
        keys = main = None
        if all(objs) and len({tuple(o) for o in objs}) == 1:
            keys = list(objs[0])
            text_keys = [k for k in keys if all(isinstance(o[k], str) for o in objs)]
            if text_keys:
                main = max(text_keys, key=lambda k: sum(len(o[k]) for o in objs))
            else:
                keys = None
        return cls(examples, system, keys, main)

    def answer(self, sentence: str, i: int) -> str:
        """The rule-made answer: the fact's sentence, in the seeds' JSON object when they are
        JSON (the other fields taken from a seed in turn)."""
        sentence = sentence[:1].upper() + sentence[1:]
        if not self.keys:
            return sentence
        seed = json.loads(self.examples[i % len(self.examples)][-1]["content"])
        return json.dumps({k: sentence if k == self.main else seed[k] for k in self.keys},
                          ensure_ascii=False)

    def check(self, answer: str, fact: str) -> str | None:
        """Why a teacher's answer is refused, or None."""
        if not verify(fact, answer):
            return "teacher answer lacks the fact"
        if self.keys:
            try:
                obj = json.loads(answer)
            except ValueError:
                return "teacher answer is not the seeds' JSON"
            if not isinstance(obj, dict) or sorted(obj) != sorted(self.keys):
                return "teacher answer has other keys than the seeds"
        longest = max(len(m[-1]["content"]) for m in self.examples)
        if len(answer) > 3 * longest + 200:
            return "teacher answer far longer than the seeds'"
        return None


def synth_train(chunks: list[tuple[int, str, str]], seeds: Seeds, out: Path, n: int = 200,
                teacher: Teacher | None = None, answers_by_teacher: bool = False,
                exclude: Exclusions | None = None, retriever: Any = None,
                collection: str = "", generation: int = 0, k: int = 4,
                no_oracle_share: float = 0.2, license: str = "", seed: int = 0,
                batch: int = 16) -> SynthReport:
    """A training set of the seeds plus up to `n` examples from `chunks`; with `retriever`, each
    prompt carries the retrieved context as served (train/context.py)."""
    t0 = time.time()
    report = SynthReport("train", str(out), teacher.name if teacher else "none")
    found = candidates(chunks)
    report.candidates = len(found)
    sink = _Out(out, lambda o: (o.get("ragtune") or {}).get("key") if isinstance(
        o.get("ragtune"), dict) else None)
    exclude = exclude or Exclusions()
    seen_q = set()
    for row in sink.rows:
        users = [m["content"] for m in row.get("messages") or [] if m.get("role") == "user"]
        seen_q.update(normalise(u) for u in users[-1:])
    prov = {"license": license or "derived from the documents of the collection: their licence "
                                  "applies", "collection": collection}
    if not sink.rows:  # the seeds first, as they are
        for ex in seeds.examples:
            sink.write({"messages": ex, "ragtune": {"origin": "seed", **prov}})
            seen_q.add(normalise(ex[-2]["content"]) if len(ex) > 1 else "")
    report.seeds = len(seeds.examples)
    report.resumed = sum(1 for r in sink.rows if (r.get("ragtune") or {}).get("origin") == "synth")
    seed_answers = [normalise(m[-1]["content"]) for m in seeds.examples]
    pending: list[tuple[Candidate, Example]] = []
    errors = 0

    def flush() -> None:
        exs = [ex for _, ex in pending]
        if retriever is not None and exs:
            exs, _ = with_context(exs, retriever, collection, generation, k, no_oracle_share,
                                  seed=seed + report.kept)
        for ex in exs:
            c, _ = pending.pop(0)  # taken as written: a failed write is not written again
            sink.write({"messages": ex.messages, "ragtune": {
                "origin": "synth", "key": c.key, "source": c.source, "chunk_ids": [c.chunk_id],
                "fact": c.fact.value, "teacher": report.teacher, **prov}})
            report.kept += 1

    try:
        with progress(n, "synth train", unit="example") as bar:
            bar.update(min(report.resumed, n))
            for i, c in enumerate(found):
                if report.resumed + report.kept + len(pending) >= n:
                    break
                if c.key in sink.keys:
                    continue
                why = exclude.why(c)
                if why is None and any(holds(a, normalise(c.fact.value)) for a in seed_answers):
                    why = "fact in a seed's answer"
                if why:
                    report.dropped[why] += 1
                    continue
                question = _paraphrase(teacher, c, report, None if retriever is None else
                                       lambda q, c=c: _rank(lambda x, d: retriever.search(
                                           x, k=d, mode="hybrid"), q, c.chunk_id, k + 2))
                if normalise(question) in seen_q or normalise(question) in exclude.questions:
                    report.dropped["question already kept (or a seed's)"] += 1
                    continue
                if answers_by_teacher and teacher is not None:
                    try:
                        answer = teacher.complete(answer_prompt(
                            seeds.examples, c.text, question, seeds.system), 300).strip()
                        errors = 0
                    except RagtuneError as e:
                        errors += 1
                        report.dropped[f"teacher error: {str(e)[:120]}"] += 1
                        if errors >= MAX_TEACHER_ERRORS:
                            raise RagtuneError(
                                f"the teacher failed {errors} times in a row ({e}); what was "
                                f"kept is in {out}: run the same command again to resume"
                            ) from None
                        continue
                    refused = seeds.check(answer, c.fact.value)
                    if refused:
                        report.dropped[refused] += 1
                        continue
                else:
                    answer = seeds.answer(c.fact.sentence, i)
                seen_q.add(normalise(question))
                messages = ([{"role": "system", "content": seeds.system}] if seeds.system
                            else []) + [{"role": "user", "content": question},
                                        {"role": "assistant", "content": answer}]
                pending.append((c, Example(messages, 0)))
                bar.update(1)
                if len(pending) >= batch:
                    flush()
            flush()
    finally:
        if pending:  # what was kept before a stop; what cannot be written is made on resume
            try:
                flush()
            except Exception:  # noqa: BLE001 - the first error is the one to raise
                pass
        sink.close()
    report.seconds = time.time() - t0
    return report


def write_summary(report: SynthReport) -> Path:
    path = Path(report.out).with_suffix(".summary.json")
    write_json(path, report.to_dict())
    return path
