"""Training data: formats, validation with line numbers, dedup, split, assistant-only labels."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from ragtune import RagtuneError
from ragtune.train.data import encode, load_examples


@pytest.fixture(scope="module")
def tok(smollm_tokenizer_dir):
    return AutoTokenizer.from_pretrained(str(smollm_tokenizer_dir))


def chat(q: str, a: str, system: str | None = None) -> dict:
    msgs = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return {"messages": msgs}


def write(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_three_formats_detected_and_normalised(tok, tmp_path):
    rows = [chat(f"q{i}", f"a{i}") for i in range(4)]
    rows += [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(3)]
    rows += [{"instruction": f"do {i}", "input": "with this", "output": f"done {i}"} for i in range(3)]
    rep = load_examples(write(tmp_path / "d.jsonl", rows), tok)
    assert rep.formats == {"chat": 4, "prompt-completion": 3, "alpaca": 3}
    everything = rep.train + rep.val
    alpaca = next(e for e in everything if e.messages[-1]["content"] == "done 1")
    assert alpaca.messages[0] == {"role": "user", "content": "do 1\n\nwith this"}
    assert len(rep.sha256) == 64


def test_problems_reported_with_line_numbers(tok, tmp_path):
    rows = [
        chat("fine", "ok"),                                                    # 1
        "{not json",                                                           # 2
        {"messages": [{"role": "robot", "content": "x"},
                      {"role": "assistant", "content": "y"}]},                 # 3
        {"messages": [{"role": "user", "content": "only a question"}]},        # 4
        chat("question", "   "),                                               # 5
        chat("long " * 400, "answer"),                                         # 6
        {"foo": "bar"},                                                        # 7
        chat("also fine", "ok too"),                                           # 8
        chat("third", "fine"),                                                 # 9
    ]
    rep = load_examples(write(tmp_path / "d.jsonl", rows), tok, max_seq_len=128)
    reasons = dict(rep.problems)
    assert sorted(reasons) == [2, 3, 4, 5, 6, 7]
    assert "bad JSON" in reasons[2] and "unknown role 'robot'" in reasons[3]
    assert "assistant" in reasons[4] and "empty" in reasons[5]
    assert "longer than max_seq_len 128" in reasons[6] and "unknown format" in reasons[7]
    assert len(rep.train) + len(rep.val) == 3
    assert "line 2: bad JSON" in rep.summary()


def test_strict_fails_before_training(tok, tmp_path):
    path = write(tmp_path / "d.jsonl", [chat("a", "b"), "{oops", chat("c", "d"), chat("e", "f")])
    with pytest.raises(RagtuneError, match="line 2"):
        load_examples(path, tok, strict=True)


def test_duplicates_exact_and_normalised(tok, tmp_path):
    rows = [chat("How are you?", "Fine."), chat("How are you?", "Fine."),
            chat("how  are YOU?", " fine. "), chat("Different", "Yes"), chat("Other", "No")]
    rep = load_examples(write(tmp_path / "d.jsonl", rows), tok)
    assert rep.exact_duplicates == 1 and rep.normalised_duplicates == 1
    assert len(rep.train) + len(rep.val) == 3


def test_seeded_split_is_reproducible_and_holds_out_enough(tok, tmp_path):
    path = write(tmp_path / "d.jsonl", [chat(f"q{i}", f"a{i}") for i in range(50)])
    a = load_examples(path, tok, seed=1)
    b = load_examples(path, tok, seed=1)
    c = load_examples(path, tok, seed=2)
    assert [e.line for e in a.val] == [e.line for e in b.val] != [e.line for e in c.val]
    assert len(a.val) == 5 and len(a.train) == 45
    small = load_examples(write(tmp_path / "s.jsonl", [chat(f"q{i}", f"a{i}") for i in range(12)]),
                          tok)
    assert len(small.val) == 4  # at least a few, even below 10%


def test_too_few_examples_is_a_clear_error(tok, tmp_path):
    with pytest.raises(RagtuneError, match="at least 2"):
        load_examples(write(tmp_path / "d.jsonl", [chat("a", "b")]), tok)


def test_only_assistant_tokens_carry_loss(tok):
    msgs = chat("What is 2+2?", '{"answer": 4}', system="Reply in JSON.")["messages"]
    msgs += [{"role": "user", "content": "And 3+3?"}, {"role": "assistant", "content": "6"}]
    ids, labels = encode(tok, msgs)
    assert len(ids) == len(labels)
    learned = tok.decode([i for i, lab in zip(ids, labels, strict=True) if lab != -100])
    assert learned == '{"answer": 4}<|im_end|>\n6<|im_end|>\n'
    ignored = tok.decode([i for i, lab in zip(ids, labels, strict=True) if lab == -100])
    assert "What is 2+2?" in ignored and "Reply in JSON." in ignored and "answer" not in ignored


TOOL_LINE = {
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    "messages": [{"role": "user", "content": "q"},
                 {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                                                       "function": {"name": "f",
                                                                    "arguments": '{"x": 1}'}}]},
                 {"role": "tool", "tool_call_id": "c", "content": "1"},
                 {"role": "assistant", "content": "a"}]}


def test_tool_lines_train_in_the_served_tool_format(tok, tmp_path):
    legacy = {"messages": [{"role": "user", "content": "q"},
                           {"role": "assistant", "function_call": {"name": "f"}}]}
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in [
        {"messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}]},
        TOOL_LINE, legacy,
        {"messages": [{"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]},
    ]) + "\n")
    report = load_examples(path, tok)
    assert [n for n, _ in report.problems] == [3] and "tool_calls" in report.problems[0][1]
    assert report.formats == {"chat": 2, "chat-tools": 1}
    (ex,) = [e for e in report.train + report.val if e.line == 2]
    assert [m["role"] for m in ex.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert ex.messages[2]["content"] == '<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>'
    ids, labels = encode(tok, ex.messages)  # the call is an assistant turn: it carries loss
    learned = tok.decode([t for t, lab in zip(ids, labels, strict=True) if lab != -100])
    assert "<tool_call>" in learned and "tool_response" not in learned


def test_an_over_long_line_is_refused_by_its_bytes_before_it_is_read(tok, tmp_path, monkeypatch):
    """A 10 MB line is a problem on its line, found without parsing or tokenising it."""
    import ragtune.train.data as data

    seen = []
    real = data.to_messages
    monkeypatch.setattr(data, "to_messages", lambda obj, *a: seen.append(1) or real(obj, *a))
    huge = json.dumps(chat("q", "x" * (10 << 20)))
    path = write(tmp_path / "d.jsonl", [chat(f"q{i}", f"a{i}") for i in range(5)] + [huge])
    rep = load_examples(path, tok, max_seq_len=512)
    assert len(seen) == 5 and rep.lines == 6
    ((line, why),) = rep.problems
    assert line == 6 and "line limit" in why and str(len(huge)) in why


def test_a_line_of_invalid_utf8_is_skipped_by_number_unless_strict(tok, tmp_path):
    good = [json.dumps(chat(f"q{i}", f"a{i}")).encode() for i in range(5)]
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b"\n".join(good[:2] + [b'{"prompt": "\xff\xfe", '
                                                               b'"completion": "x"}'] + good[2:]))
    rep = load_examples(path, tok)
    assert len(rep.train) + len(rep.val) == 5
    assert rep.problems == [(3, "not UTF-8 (byte 12 of the line): save the file as UTF-8")]
    with pytest.raises(RagtuneError, match="line 3: not UTF-8"):
        load_examples(path, tok, strict=True)


def test_an_upload_names_its_bad_bytes_by_line(tmp_path):
    from ragtune.serve.filestore import check_training_lines

    good = json.dumps(chat("q", "a")).encode()
    with pytest.raises(RagtuneError, match=r"line 2: not UTF-8 .* line 3: .*line limit"):
        check_training_lines(b"\n".join([good, b'{"x": "\xff"}', b"x" * (5 << 20), good]),
                             "file 'd.jsonl'")
