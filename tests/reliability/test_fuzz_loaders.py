"""Fuzzing the parsers of untrusted files (hypothesis): the document loaders and the JSONL
training-data parser. A poisoned or broken file may be skipped with its reason, never crash:

- `ingest.loaders.load` on every supported extension, fed random bytes, byte-level mutations of
  a valid file of that format (flips, cuts, splices, numbers swapped for extreme ones), a .docx
  whose XML inside is mutated, and JSONL/CSV rows of arbitrary JSON, raises nothing but
  `SkipFile` (or a `RagtuneError`); what it returns has text a UTF-8 store can hold;
- `train.data.load_examples` (and `encode` on what it keeps) raises nothing but `RagtuneError`
  on arbitrary lines: bad JSON, wrong types in every field, deep nesting, huge numbers, lone
  surrogates; what it keeps ends with an assistant turn and is split without loss.

`RAGTUNE_FUZZ_EXAMPLES` scales every target (1 = the suite's budget, about a minute here).
Runs are derandomized: the same examples every run, so a failure reproduces.
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ragtune.ingest.loaders import SUPPORTED, SkipFile, load
from ragtune.platform.errors import RagtuneError

pytestmark = pytest.mark.slow

SCALE = float(os.environ.get("RAGTUNE_FUZZ_EXAMPLES", "1"))
MB = 10**6


def fuzz(n: int):  # noqa: ANN201
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None, derandomize=True,
                    database=None, suppress_health_check=list(HealthCheck))


# -- seeds: one valid file per format ---------------------------------------------------------


def _pdf() -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    for i in (1, 2):
        pdf.add_page()
        pdf.set_font("Helvetica", size=12)
        pdf.cell(0, 10, f"Page {i}: the Basic plan costs 10 EUR per month.")
    return bytes(pdf.output())


def _docx() -> bytes:
    import docx

    d = docx.Document()
    d.add_heading("Refunds", 1)
    d.add_paragraph("Refunds are granted within 30 days of purchase.")
    table = d.add_table(rows=2, cols=2)
    table.cell(0, 0).text, table.cell(0, 1).text = "plan", "price"
    table.cell(1, 0).text, table.cell(1, 1).text = "Basic", "10 EUR"
    out = io.BytesIO()
    d.save(out)
    return out.getvalue()


SEEDS: dict[str, bytes] = {
    ".md": b"# Pricing\n\nThe Basic plan costs 10 EUR.\n\n## Refunds\n\n- within 30 days\n",
    ".txt": "Shipping takes two days. Caf\u00e9 \u2014 \U0001f4e6 ok.\n".encode(),
    ".html": b"<html><head><title>Stock</title><style>p{}</style><script>x=1</script></head>"
             b"<body><p>Berlin holds <b>42</b> widgets.</p><!-- c --><![CDATA[x]]></body></html>",
    ".csv": b'sku,text,price\nW-1,"Blue widget, steel",9.99\nG-2,"Red ""gadget""",19.5\n',
    ".jsonl": b'{"text": "Refunds within 30 days", "lang": "en", "n": 1}\n'
              b'{"content": "Express shipping", "tags": ["a"], "ok": true}\n',
}


@pytest.fixture(scope="module")
def seeds() -> dict[str, bytes]:
    return {**SEEDS, ".pdf": _pdf(), ".docx": _docx()}


# -- the property -----------------------------------------------------------------------------


def loads_or_skips(path: Path, text_field: str | None = None) -> None:
    """`load` either skips the file with a reason or returns text the store can hold."""
    try:
        doc = load(path, MB, text_field)
    except SkipFile as e:
        assert str(e), "a skip must say why"
        return
    except RagtuneError:
        return
    assert doc.sections, "a loaded document has text"
    for s in doc.sections:
        assert isinstance(s.text, str) and s.text.strip()
        s.text.encode("utf-8")  # no lone surrogates: SQLite and the tokenizer need UTF-8
        json.dumps(s.metadata, default=str).encode("utf-8")
        assert all(isinstance(k, str) for k in s.metadata)
    json.dumps(doc.metadata, default=str).encode("utf-8")


def write(tmp: Path, ext: str, data: bytes) -> Path:
    path = tmp / f"fuzz{ext}"
    path.write_bytes(data)
    return path


# -- mutations --------------------------------------------------------------------------------

INTERESTING = (0, 1, -1, 2**31, 2**63, -(2**63), 10**400, 999999999999)


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """`data` with 1-6 mutations: a byte flipped or set, a range cut, random bytes inserted, a
    range duplicated elsewhere, the tail cut off, or a number token swapped for an extreme one
    (lengths, offsets and counts in PDF/XML)."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 6))):
        n = len(buf)
        op = draw(st.sampled_from(("flip", "set", "cut", "insert", "dup", "truncate", "number")))
        at = draw(st.integers(0, max(0, n - 1)))
        if op == "flip" and n:
            buf[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and n:
            buf[at] = draw(st.sampled_from((0, 0xFF, 0x7F, 0x80, 0x0A, 0x22, 0x3C, 0x5C)))
        elif op == "cut" and n:
            del buf[at:at + draw(st.integers(1, 64))]
        elif op == "insert":
            buf[at:at] = draw(st.binary(min_size=1, max_size=32))
        elif op == "dup" and n:
            piece = bytes(buf[at:at + draw(st.integers(1, 256))])
            to = draw(st.integers(0, n))
            buf[to:to] = piece * draw(st.integers(1, 3))
        elif op == "truncate" and n:
            del buf[at:]
        elif op == "number":
            numbers = list(re.finditer(rb"-?\d+", bytes(buf)))
            if numbers:
                m = numbers[draw(st.integers(0, len(numbers) - 1))]
                new = draw(st.sampled_from(INTERESTING) | st.integers(-(2**40), 2**40))
                buf[m.start():m.end()] = str(new).encode()
    return bytes(buf)


def _sub_zip(data: bytes, name: str, new: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            dst.writestr(item, new if item.filename == name else src.read(item.filename))
    return out.getvalue()


# -- the loaders ------------------------------------------------------------------------------

EXTS = sorted(SUPPORTED)


def test_loaders_only_skip_on_random_bytes(tmp_path):
    count = 0

    @fuzz(500)
    @given(ext=st.sampled_from(EXTS), data=st.binary(max_size=2048))
    @example(ext=".txt", data=b"\xef\xbb\xbf\xff")          # BOM, then invalid UTF-8
    @example(ext=".txt", data=b"\xfe\xff\xd8\x00")          # UTF-16 BE lone high surrogate
    @example(ext=".csv", data=b'a,"b\n1,"' + b"x" * 200_000)  # unterminated, over csv's field cap
    @example(ext=".pdf", data=b"%PDF-1.7\n" + b"[" * 5000)
    @example(ext=".docx", data=b"PK\x05\x06" + b"\x00" * 18)  # an empty zip
    @example(ext=".docx", data=b"not a zip at all")
    def one(ext: str, data: bytes) -> None:
        nonlocal count
        count += 1
        loads_or_skips(write(tmp_path, ext, data))

    one()
    print(f"\nloaders, random bytes: {count} examples over {len(EXTS)} extensions")
    assert count >= 100 * min(1, SCALE)


@pytest.mark.parametrize("ext,n", [(".pdf", 300), (".docx", 200), (".html", 200), (".csv", 150),
                                   (".jsonl", 150), (".md", 60), (".txt", 60)])
def test_loaders_only_skip_on_mutated_valid_files(tmp_path, seeds, ext, n):
    loads_or_skips(write(tmp_path, ext, seeds[ext]))  # the seed itself loads
    assert load(write(tmp_path, ext, seeds[ext]), MB).sections
    count = 0

    @fuzz(n)
    @given(data=mutated(seeds[ext]))
    def one(data: bytes) -> None:
        nonlocal count
        count += 1
        loads_or_skips(write(tmp_path, ext, data))

    one()
    print(f"\nloaders, mutated {ext}: {count} examples")
    assert count >= n // 3 * min(1, SCALE)


def test_docx_with_mutated_xml_inside_only_skips(tmp_path, seeds):
    """The zip stays valid; word/document.xml or [Content_Types].xml inside is mutated."""
    count = 0

    @fuzz(200)
    @given(data=st.data(), part=st.sampled_from(("word/document.xml", "[Content_Types].xml",
                                                  "word/_rels/document.xml.rels")))
    def one(data: st.DataObject, part: str) -> None:
        nonlocal count
        count += 1
        with zipfile.ZipFile(io.BytesIO(seeds[".docx"])) as z:
            xml = z.read(part)
        loads_or_skips(write(tmp_path, ".docx", _sub_zip(seeds[".docx"], part,
                                                          data.draw(mutated(xml)))))

    one()
    print(f"\nloaders, .docx with mutated XML: {count} examples")
    assert count >= 40 * min(1, SCALE)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12)
ROW = st.fixed_dictionaries({}, optional={
    "text": JSON, "content": JSON, "body": st.text(), "page_content": JSON}) | st.dictionaries(
        st.text(max_size=10), JSON, max_size=5)


@st.composite
def jsonl_lines(draw: st.DrawFn) -> bytes:
    lines = []
    for row in draw(st.lists(ROW | JSON, min_size=1, max_size=6)):
        line = json.dumps(row, ensure_ascii=draw(st.booleans()))  # NaN, surrogates as escapes
        lines.append(draw(st.sampled_from((line, line[: len(line) // 2], "", "  "))))
    return "\n".join(lines).encode("utf-8", "surrogatepass")


@st.composite
def csv_rows(draw: st.DrawFn) -> bytes:
    import csv

    header = draw(st.lists(st.sampled_from(("text", "sku", "price", "", "text", "a b")) | st.text(
        max_size=6), min_size=1, max_size=4))
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(header)
    for _ in range(draw(st.integers(0, 5))):
        w.writerow(draw(st.lists(st.text(max_size=20) | st.floats().map(str), max_size=6)))
    return out.getvalue().encode("utf-8", "surrogatepass")


def test_jsonl_and_csv_rows_of_anything_only_skip(tmp_path):
    count = 0

    @fuzz(400)
    @given(ext_data=st.tuples(st.just(".jsonl"), jsonl_lines()) | st.tuples(st.just(".csv"),
                                                                           csv_rows()),
           text_field=st.none() | st.sampled_from(("text", "body", "missing", "")))
    @example(ext_data=(".jsonl", b'{"text": "\\ud800 lone surrogate"}'), text_field=None)
    @example(ext_data=(".jsonl", b'{"text": "x", "n": NaN, "m": -Infinity}'), text_field=None)
    @example(ext_data=(".jsonl", b'{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
             text_field=None)
    @example(ext_data=(".jsonl", b'{"text": "big", "n": ' + b"9" * 5000 + b"}"), text_field=None)
    @example(ext_data=(".jsonl", b'{"text": ["a", {"b": 1}], "\\udc80": "k"}'), text_field=None)
    @example(ext_data=(".csv", b"text,price\nok,\x00\n"), text_field=None)
    def one(ext_data: tuple[str, bytes], text_field: str | None) -> None:
        nonlocal count
        count += 1
        ext, data = ext_data
        loads_or_skips(write(tmp_path, ext, data), text_field or None)

    one()
    print(f"\nloaders, JSONL/CSV rows of arbitrary JSON: {count} examples")
    assert count >= 80 * min(1, SCALE)


def test_a_poisoned_folder_ingests_the_good_files_and_reports_the_rest(tiny_settings, tmp_path,
                                                                        seeds):
    """End to end through `Collection.add`: the files the fuzzers found hard are skipped or
    stored cleanly, the good ones are searchable, and nothing aborts the ingest."""
    from ragtune.ingest.collection import Collection

    d = tmp_path / "docs"
    d.mkdir()
    (d / "good.md").write_bytes(SEEDS[".md"])
    (d / "surrogate.jsonl").write_bytes(b'{"text": "caf\\u00e9 \\ud800 refunds", "\\udc80": "x"}\n')
    (d / "nan.jsonl").write_bytes(b'{"text": "widgets in Berlin", "n": NaN, "big": 1e999}\n')
    (d / "deep.jsonl").write_bytes(b'{"text": ' + b"[" * 50_000 + b"]" * 50_000 + b"}\n")
    (d / "broken.pdf").write_bytes(seeds[".pdf"][: len(seeds[".pdf"]) // 2])
    (d / "notzip.docx").write_bytes(b"PK\x03\x04 nope")
    col = Collection.open("poisoned", tiny_settings)
    try:
        report = col.add([str(d)])
        stored = {Path(s).name for s in report.ingested}
        skipped = {Path(s).name: why for s, why in report.skipped}
        assert {"good.md", "surrogate.jsonl", "nan.jsonl"} <= stored
        assert {"deep.jsonl", "broken.pdf", "notzip.docx"} <= set(skipped)
        assert all("unreadable (" not in why for why in skipped.values()), skipped  # our reasons
        hits = col.search("refunds", k=5, mode="bm25")
        assert any("\ufffd" in h.text for h in hits)  # the lone surrogate, replaced
    finally:
        col.close()


# -- the training-data parser -----------------------------------------------------------------

ROLE = st.sampled_from(("system", "user", "assistant", "tool", "")) | JSON
CONTENT = st.text() | JSON
MESSAGE = st.fixed_dictionaries({}, optional={"role": ROLE, "content": CONTENT}) | JSON
EXAMPLE = (
    st.fixed_dictionaries({"messages": st.lists(MESSAGE, max_size=4) | JSON})
    | st.fixed_dictionaries({"prompt": CONTENT, "completion": CONTENT})
    | st.fixed_dictionaries({"instruction": CONTENT, "output": CONTENT},
                            optional={"input": CONTENT})
    | JSON)


@st.composite
def training_lines(draw: st.DrawFn) -> bytes:
    good = [{"messages": [{"role": "user", "content": f"q{i}"},
                          {"role": "assistant", "content": f"a{i}"}]} for i in range(4)]
    rows = draw(st.lists(EXAMPLE, max_size=6)) + [good[i] for i in draw(st.sets(st.integers(0, 3)))]
    rows = draw(st.permutations(rows))
    lines = [json.dumps(r) for r in rows] + draw(st.lists(st.text(max_size=30), max_size=2))
    return "\n".join(lines).encode("utf-8", "surrogatepass")


@pytest.fixture(scope="module")
def tok(smollm_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smollm_tokenizer_dir))


def test_training_jsonl_parser_raises_only_ragtune_errors(tmp_path, tok):
    from ragtune.train.data import encode, load_examples

    count, loaded = 0, 0

    @fuzz(400)
    @given(data=training_lines() | st.binary(max_size=512), strict=st.booleans(),
           max_seq_len=st.sampled_from((8, 64, 1024)))
    @example(data=b'{"messages": [{"role": ["user"], "content": "x"}]}', strict=False,
             max_seq_len=1024)
    @example(data=b'{"messages": [{"role": {"a": 1}, "content": "x"}]}', strict=False,
             max_seq_len=1024)
    @example(data=b'{"messages": [{"role": "user", "content": "\\ud800"}, '
                  b'{"role": "assistant", "content": "\\udfff ok"}]}\n' * 2
                  + b'{"prompt": "p", "completion": "c"}\n', strict=False, max_seq_len=1024)
    @example(data=b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b', "completion": "c"}',
             strict=False, max_seq_len=1024)
    @example(data=b'{"prompt": ' + b"7" * 5000 + b', "completion": "c"}', strict=True,
             max_seq_len=1024)
    @example(data=b"\xef\xbb\xbf\xff\xfe", strict=False, max_seq_len=1024)
    def one(data: bytes, strict: bool, max_seq_len: int) -> None:
        nonlocal count, loaded
        count += 1
        path = tmp_path / "train.jsonl"
        path.write_bytes(data)
        try:
            report = load_examples(path, tok, max_seq_len=max_seq_len, strict=strict)
        except RagtuneError as e:
            assert str(e)
            return
        loaded += 1
        kept = report.train + report.val
        assert report.train and report.val and len(kept) >= 2
        assert len({e.line for e in kept}) == len(kept)
        for ex in kept:
            assert ex.messages[-1]["role"] == "assistant"
            assert all(isinstance(m["content"], str) and m["content"].strip() for m in ex.messages)
        for ex in kept[:2]:  # training encodes every kept example
            try:
                ids, labels = encode(tok, ex.messages)
            except RagtuneError:
                continue
            assert len(ids) == len(labels) and any(x != -100 for x in labels)

    one()
    print(f"\ntraining JSONL parser: {count} examples, {loaded} loaded")
    assert count >= 100 * min(1, SCALE) and loaded > 0
