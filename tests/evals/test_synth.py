"""`ragtune synth`: facts read out of chunks by rule, evaluation and training sets made from the
demo's knowledge base (the real embedder, a real collection), kept apart, resumable, and a
teacher (a stub OpenAI-compatible server this test starts) whose answers are used only when
they pass the checks."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ragtune.cli import app
from ragtune.evals.scores import load_qa
from ragtune.evals.synth import Exclusions, Seeds, synth_eval, synth_train
from ragtune.evals.synth_facts import facts_in, holds, normalise, verify
from ragtune.platform.errors import RagtuneError

KB = Path(__file__).resolve().parents[2] / "samples" / "acme"
SYSTEM = "You are Acme's support assistant. Reply with one JSON object only."


@pytest.mark.parametrize("sentence, value, kind, question", [
    ("Standard shipping inside Germany costs 4.90 EUR.", "4.90 EUR", "money",
     "How much does standard shipping inside Germany cost?"),
    ("Registered charities get 30% off any plan.", "30%", "percentage",
     "What percentage do registered charities get off any plan?"),
    ("The steel widget is 10 cm long.", "10 cm", "quantity", "How long is the steel widget?"),
    ("It weighs 180 g.", "180 g", "quantity", "How much does the steel widget weigh?"),
    ("Backups are kept for 35 days, so we can restore.", "35 days", "duration",
     'How long? From the steel widget document, fill in the blank: "Backups are kept for ___ '
     ', so we can restore."'),
    ("Support is open from 8:00 to 18:00 Berlin time.", "8:00", "time", None),
    ("Version 4.2 shipped on 3 June 2024 with reorder hints.", "3 June 2024", "date", None),
])
def test_a_fact_comes_with_its_kind_and_a_question_that_does_not_give_it_away(
        sentence, value, kind, question):
    found = {f.value: f for f in facts_in(sentence, "steel widget")}
    fact = found[value]
    assert fact.kind == kind and fact.sentence == sentence
    assert not holds(normalise(fact.question.replace("___", " ")), normalise(value))
    if question:
        assert fact.question == question
    assert verify(value, sentence) and verify("4,900 EUR", "costs 4900 eur")


def test_no_facts_in_text_without_values():
    assert facts_in("Our team loves widgets. Call us any day.") == []


@pytest.fixture(scope="module")
def acme(tmp_path_factory):
    """The demo's knowledge base in a collection `acme` of its own home (real embedder)."""
    from ragtune.ingest.collection import Collection
    from ragtune.platform.settings import Settings

    home = tmp_path_factory.mktemp("synth") / "home"
    col = Collection.open("acme", Settings(home=home))
    assert col.add([str(KB)]).skipped == []
    col.close()
    return home


@pytest.fixture
def acme_home(acme, monkeypatch):
    monkeypatch.setenv("RAGTUNE_HOME", str(acme))
    return acme


def _seeds(path: Path) -> Path:
    rows = [("Where is my order 1234?", "Thanks for checking in! Order 1234 is on its way.",
             "reassuring", "Shall I send the tracking link?"),
            ("Can I return a widget?", "Of course! Start a return under Orders.", "friendly",
             "Would you like a replacement instead?"),
            ("My widget broke.", "I'm sorry to hear that! Send us its serial number.", "caring",
             "Can you share the serial number?"),
            ("Do you ship abroad?", "Yes, we deliver across the EU!", "friendly",
             "Where should it go?"),
            ("How do I change my email?", "Happy to help! Open Settings, then Account.",
             "friendly", "Anything else I can help with?")]
    path.write_text("".join(json.dumps({"messages": [
        {"role": "system", "content": SYSTEM}, {"role": "user", "content": q},
        {"role": "assistant", "content": json.dumps({"answer": a, "tone": t, "follow_up": f})}]})
        + "\n" for q, a, t, f in rows))
    return path


@pytest.mark.integration
def test_eval_and_train_sets_from_the_demo_knowledge_base(acme_home, real_generator, tmp_path):
    """With the default teacher (the local generator paraphrases): every fact of the evaluation
    set is in its source chunk; the training set from 5 seeds keeps their format, carries the
    retrieved context, records its provenance and never shares a question or fact with the
    evaluation set; both load in `ragtune eval` and `ragtune train`."""
    from transformers import AutoTokenizer

    from ragtune.ingest.collection import Collection
    from ragtune.platform.settings import get_settings
    from ragtune.train.data import load_examples

    qa, train = tmp_path / "qa.jsonl", tmp_path / "train.jsonl"
    r = CliRunner().invoke(app, ["synth", "eval", "-c", "acme", "--out", str(qa), "--n", "8"])
    assert r.exit_code == 0, r.output
    assert "synth eval: 8 written" in r.output
    col = Collection.open("acme", get_settings(), create=False)
    chunks = {cid: text for cid, _, text in col.chunk_rows()}
    col.close()
    items = [json.loads(line) for line in qa.read_text().splitlines()]
    assert len(items) == 8 and len({i["source"] for i in items}) == 8  # spread over documents
    for it in items:
        assert verify(it["facts"][0], chunks[it["chunk_id"]]), it
        assert normalise(it["facts"][0]) not in normalise(it["question"])
        assert it["retrieved_rank"] is None or 1 <= it["retrieved_rank"] <= 5
    assert sum(i["retrieved_rank"] is not None for i in items) >= 6
    assert len(load_qa(qa)) == 8

    r = CliRunner().invoke(app, ["synth", "train", "-c", "acme", "--seeds",
                                 str(_seeds(tmp_path / "seeds.jsonl")), "--out", str(train),
                                 "--n", "24", "--teacher", "none", "--exclude", str(qa),
                                 "--license", "CC-BY-4.0 Acme docs"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in train.read_text().splitlines()]
    assert [r["ragtune"]["origin"] for r in rows] == ["seed"] * 5 + ["synth"] * 24
    eval_q = {normalise(i["question"]) for i in items}
    eval_facts = {normalise(i["facts"][0]) for i in items}
    refusals = 0
    for row in rows[5:]:
        system, user, answer = (m["content"] for m in row["messages"])
        assert system.startswith(SYSTEM) and "<sources>" in system  # the context, as served
        obj = json.loads(answer)
        assert list(obj) == ["answer", "tone", "follow_up"]
        assert normalise(user) not in eval_q
        assert not any(holds(normalise(answer), f) for f in eval_facts)
        if "do not say" in obj["answer"]:
            refusals += 1
        else:
            assert normalise(row["ragtune"]["fact"]) in normalise(obj["answer"])
        assert row["ragtune"]["license"] == "CC-BY-4.0 Acme docs" and row["ragtune"]["chunk_ids"]
    assert 2 <= refusals <= 8  # the "not in the documents" share (0.2)
    tok = AutoTokenizer.from_pretrained(str(real_generator))
    report = load_examples(train, tok, max_seq_len=2048, strict=True)
    assert report.provenance["origin"] == {"seed": 5, "synth": 24}
    assert report.provenance["license"] == {"CC-BY-4.0 Acme docs": 29}


def test_a_second_run_resumes_where_the_first_stopped(acme_home, tmp_path):
    from ragtune.ingest.collection import Collection
    from ragtune.platform.settings import get_settings

    col = Collection.open("acme", get_settings(), create=False)
    chunks = col.chunk_rows()
    col.close()
    out = tmp_path / "qa.jsonl"
    first = synth_eval(chunks, out, n=4)
    head = out.read_text()
    with out.open("a") as f:
        f.write('{"id": "cut')  # an interrupted write
    second = synth_eval(chunks, out, n=9)
    assert (first.kept, second.resumed, second.kept) == (4, 4, 5)
    assert out.read_text().startswith(head) and len(out.read_text().splitlines()) == 9
    assert len({json.loads(x)["question"] for x in out.read_text().splitlines()}) == 9


def test_duplicates_and_excluded_facts_are_dropped_and_counted(tmp_path):
    same = "Refunds are paid within 5 business days. Express costs 9.90 EUR."
    chunks = [(1, "/kb/a.md", same), (2, "/kb/a-copy.md", same), (3, "/kb/b.md", same)]
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"question": "q", "facts": ["9.90 EUR"]}) + "\n")
    report = synth_eval(chunks, tmp_path / "out.jsonl", n=10, exclude=Exclusions.read([qa]))
    assert report.kept == 1  # one question, whichever document
    assert report.dropped["fact in an --exclude file"] == 3
    assert report.dropped["fact already kept (this document, or this sentence elsewhere)"] == 2


class _Stub(BaseHTTPRequestHandler):
    """An OpenAI-compatible teacher: paraphrases by returning the question as it is, answers
    in the seeds' JSON with the fact (found by ragtune's own rules, as a capable teacher would),
    except by script: some answers lack the fact, some are not JSON, some requests fail."""

    script: list[str] = []  # per answer request: ok | nofact | text | fail
    calls: list[str] = []

    def log_message(self, *args):  # quiet
        pass

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        last = body["messages"][-1]["content"]
        if last.startswith("Rewrite: "):
            return self._reply(last[len("Rewrite: "):])
        kind = self.script.pop(0) if self.script else "ok"
        self.calls.append(kind)
        if kind == "fail":
            self.send_response(503)
            self.end_headers()
            return None
        source, question = re.match(r"Source:\n(.*)\n\nQuestion: (.*)", last, re.S).groups()
        fact = next(f for f in facts_in(source) if f.question == question)
        text = {"ok": f"Good news! It is {fact.value}.", "nofact": "Good news! Ask us."}.get(kind)
        if text is None:
            return self._reply("Sure, it is " + fact.value)
        return self._reply(json.dumps({"answer": text, "tone": "friendly",
                                       "follow_up": "Anything else?"}))

    def _reply(self, content: str) -> None:
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(data.encode())


@pytest.fixture
def stub_teacher():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Stub.calls.clear()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()


def test_a_teachers_answers_are_used_when_they_pass_and_its_errors_lose_nothing(
        tmp_path, stub_teacher):
    from ragtune.evals.teacher import HttpTeacher

    chunks = [(i, f"/kb/doc{i}.md", f"Plan {i} costs {10 + i} EUR per month.")
              for i in range(1, 11)]
    # two documents that disagree: the same question twice, kept once
    chunks[1:1] = [(20, "/kb/a-old.md", "Plan Z costs 5 EUR per month."),
                   (21, "/kb/a-new.md", "Plan Z costs 6 EUR per month.")]
    seeds = Seeds.read(_seeds(tmp_path / "seeds.jsonl"))
    # per answer: used, lacks the fact, not JSON, a failure (3 tries), used...
    _Stub.script[:] = ["ok", "nofact", "text", "fail", "fail", "fail", "ok", "ok"]
    out = tmp_path / "train.jsonl"
    teacher = HttpTeacher(stub_teacher, "stub-model", retries=2)
    report = synth_train(chunks, seeds, out, n=5, teacher=teacher, answers_by_teacher=True)
    assert report.dropped["question already kept (or a seed's)"] == 1
    assert report.dropped["teacher answer lacks the fact"] == 1
    assert report.dropped["teacher answer is not the seeds' JSON"] == 1
    assert sum(n for why, n in report.dropped.items() if why.startswith("teacher error")) == 1
    rows = [json.loads(x) for x in out.read_text().splitlines()][5:]
    assert len(rows) == report.kept == 5 and report.paraphrased >= 5
    for row in rows:
        answer = json.loads(row["messages"][-1]["content"])
        assert answer["answer"].startswith("Good news! It is ")
        assert normalise(row["ragtune"]["fact"]) in normalise(answer["answer"])
        assert row["ragtune"]["teacher"] == "stub-model at " + stub_teacher
    # a teacher that stops answering: the run stops, and what it kept stays
    _Stub.script[:] = ["fail"] * 30
    more = tmp_path / "more.jsonl"
    _Stub.script[:0] = ["ok", "ok"]
    with pytest.raises(RagtuneError, match="run the same command again to resume"):
        synth_train(chunks, seeds, more, n=6, teacher=teacher, answers_by_teacher=True)
    kept = [json.loads(x) for x in more.read_text().splitlines()]
    assert [r["ragtune"]["origin"] for r in kept] == ["seed"] * 5 + ["synth"] * 2
    teacher.close()
