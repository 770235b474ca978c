"""Citation markers: streamed filtering, invalid markers removed and counted, JSON left alone,
and attribution for answers written without markers."""

from __future__ import annotations

from ragtune.platform.citations import CitationFilter, attribute


def stream(flt: CitationFilter, text: str, step: int = 1) -> str:
    return "".join(flt.feed(text[i:i + step]) for i in range(0, len(text), step)) + flt.flush()


def test_valid_markers_kept_invalid_removed_and_counted_whatever_the_chunking():
    text = "Pro costs 39 EUR [2]. Ships in 2 days [7]. Both [1, 9][2]. A list [a] stays."
    for step in (1, 2, 3, 5, 100):
        flt = CitationFilter(n_sources=2)
        assert stream(flt, text, step) == ("Pro costs 39 EUR [2]. Ships in 2 days. Both [1][2]. "
                                           "A list [a] stays.")
        assert flt.cited == {1, 2} and flt.invalid == 2


def test_json_answers_are_not_rewritten():
    flt = CitationFilter(n_sources=1, strip=False)
    assert stream(flt, '{"ids": [3], "answer": "see [1]"}', 2) == '{"ids": [3], "answer": "see [1]"}'
    assert flt.cited == {1} and flt.invalid == 1


def test_attribution_finds_the_source_an_answer_draws_on():
    sources = ["The Basic plan costs 10 EUR per month.", "Shipping takes two business days."]
    assert attribute("The basic plan costs 10 EUR a month.", sources) == {1}
    assert attribute('{"answer": "Shipping takes two business days inside Germany."}',
                     sources) == {2}
    assert attribute("I cannot help with that request today.", sources) == set()
