"""The web page at `/`, driven in a real headless Chromium (Debian's, via Playwright) against a
real uvicorn server: the tiny random generator, the real embedder, a collection on disk, one
adapter with a training card and one without.

Needs /usr/bin/chromium: `make browser` installs it (no browser is downloaded by a test tool).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import httpx
import pytest

from ragtune.generate.engine import Engine
from ragtune.platform.settings import Settings
from ragtune.serve.app import create_app, with_limits
from ragtune.serve.auth import Keys
from tests.serve_helpers import Server, make_adapter

pytestmark = pytest.mark.e2e  # a real headless Chromium drives the page
CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
QUESTION = "How much does the Basic plan cost per month?"
TRAIN_STEPS = 30


def training_card(name: str, base: str) -> dict:
    """A card shaped like the one `ragtune train` writes (train/recipe.py, train/evaluate.py)."""
    train_losses = [{"step": s, "loss": 2.6 * math.exp(-s / 12) + 0.45, "lr": 2e-4}
                    for s in range(1, TRAIN_STEPS + 1)]
    history = [{"step": s, "epoch": e, "val_loss": v}
               for s, e, v in ((10, 1.0, 1.41), (20, 2.0, 0.98), (30, 3.0, 0.91))]
    return {
        "meta": {"name": name, "base_model": base, "system_prompt": None},
        "data": {"path": "support.jsonl", "sha256": "ab" * 32, "train": 180, "val": 20},
        "config": {"r": 16, "lora_alpha": 32, "epochs": 3},
        "history": history, "train_losses": train_losses,
        "best_val_loss": 0.91, "best_step": 30, "steps": TRAIN_STEPS, "stopped_early": False,
        "tokens_per_s": 160.0, "seconds": 95.0, "device": "cpu", "dtype": "float32",
        "eval": {
            "prompts": 20, "targets_are_json": True,
            "effect": {"differing_outputs": 19, "share": 0.95, "applied": True},
            "base": {"general_perplexity": 14.2, "style_similarity": 0.41, "json_valid": 0.05},
            "adapter": {"general_perplexity": 14.9, "style_similarity": 0.78, "json_valid": 0.95},
            "forgetting": {"perplexity_before": 14.2, "perplexity_after": 14.9,
                           "change": 14.9 / 14.2 - 1, "margin": 0.1, "flagged": False},
            "examples": [],
        },
        "context": None, "facts": None, "finished_at": time.time(),
    }


def register_with_card(settings: Settings, base_dir: Path, name: str, tmp: Path,
                       card: dict) -> Path:
    """Register a random LoRA adapter with `card`, the way the training recipe does."""
    from ragtune.train import registry

    raw = make_adapter(settings, base_dir, f"{name}-raw", 3, tmp)
    version = registry.register(settings, name, raw, registry.read_meta(raw), card=card)
    registry.delete(settings, f"{name}-raw")
    return version


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_lm_dir):
    from ragtune.ingest.collection import Collection

    root = tmp_path_factory.mktemp("ui")
    docs = root / "docs"
    docs.mkdir()
    (docs / "pricing.md").write_text("# Pricing\n\nThe Basic plan costs 10 EUR per month.\n")
    (docs / "faq.txt").write_text("Shipping takes two business days inside Germany.")
    settings = Settings(home=root / "home", generator=str(tiny_lm_dir), relevance_floor=0.2)
    col = Collection.open("docs", settings)
    col.add([str(docs)])
    col.close()
    make_adapter(settings, tiny_lm_dir, "voice", 1, root)  # no card: registered by hand
    register_with_card(settings, tiny_lm_dir, "support-voice", root,
                       training_card("support-voice", str(tiny_lm_dir)))
    engine = Engine(settings, max_batch=4, queue_size=16)
    with Server(with_limits(create_app(settings, engine), settings)) as server:
        server.settings = settings
        server.tiny = tiny_lm_dir
        yield server
    engine.close()


def expect(locator):
    """Playwright's retrying assertions (string predicates would need 'unsafe-eval', which the
    page's Content-Security-Policy refuses)."""
    from playwright.sync_api import expect as _expect

    return _expect(locator)


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: the web page test drives Debian's chromium; "
                    "`make browser` installs it")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: `make install` (the dev extra) installs it")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, served):
    """A fresh page on `/`, failing the test on any console error or uncaught exception."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    pg = context.new_page()
    pg.set_default_timeout(20_000)
    errors: list[str] = []
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(served.url + "/")
    yield pg
    context.close()
    assert not errors, errors


def test_page_loads_its_own_assets_only(page, served):
    assert page.title() == "ragtune"
    assert page.locator("nav [role=tab]").all_inner_texts() == [
        "Chat", "Collections", "Adapters", "Router"]
    expect(page.locator("#chat-model option[value=support-voice]")).to_have_count(1)
    models = page.locator("#chat-model option").evaluate_all("os => os.map(o => o.value)")
    assert str(served.tiny) in models and "voice" in models and "support-voice" in models
    assert page.locator("#chat-collection").input_value() == "docs"
    r = httpx.get(served.url + "/")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert httpx.get(served.url + "/ui/app.js").headers["content-type"].startswith("text/javascript")
    assert httpx.get(served.url + "/ui/nope.js").status_code == 404


def test_chat_streams_the_answer_and_shows_citations(page):
    page.select_option("#chat-model", "voice")
    page.select_option("#chat-collection", "docs")
    page.fill("#chat-max-tokens", "10")
    page.fill("#chat-k", "1")  # one retrieved chunk: the pricing one
    page.fill("#chat-input", QUESTION)
    page.click("#chat-send")
    turn = page.locator(".turn.done")
    turn.wait_for()
    answer = turn.locator(".answer")
    assert answer.inner_text().strip()
    assert int(answer.get_attribute("data-chunks")) >= 2  # arrived in pieces, not at once
    assert "adapter voice@v1" in turn.locator(".meta").inner_text()
    pricing = turn.locator("details.citation", has_text="pricing.md")
    assert pricing.count() == 1 and turn.locator("details.citation").count() == 1
    assert not pricing.locator(".cite-text").is_visible()
    pricing.locator("summary").click()
    assert pricing.locator(".cite-text").is_visible()
    assert "10 EUR per month" in pricing.locator(".cite-text").inner_text()
    assert "score 0." in pricing.locator("summary").inner_text()


def test_an_answer_takes_a_thumbs_down_with_a_correction(page, served):
    from ragtune.serve.feedback import FeedbackStore

    page.select_option("#chat-collection", "docs")
    page.fill("#chat-max-tokens", "6")
    page.fill("#chat-input", QUESTION)
    page.click("#chat-send")
    turn = page.locator(".turn.done")
    turn.wait_for()
    turn.locator(".feedback .correction").fill("The Basic plan costs 10 EUR per month.")
    turn.locator(".feedback .thumb.down").click()
    expect(turn.locator(".feedback .status")).to_have_text("thanks: marked wrong")
    (row,) = [r for r in FeedbackStore(served.settings.home).items("down")
              if r["question"] == QUESTION]
    assert row["correction"] == "The Basic plan costs 10 EUR per month."
    assert row["collection"] == "docs" and row["chunks"] and row["generation"] == 1


def test_chat_with_model_auto_follows_the_applied_plan(page, served):
    from ragtune.platform.files import write_json

    plan_file = served.settings.home / "plan.json"
    write_json(plan_file, {
        "version": 1, "name": "t", "decisions": [], "system_prompt": [],
        "collections": [{"name": "docs", "search_mode": "hybrid"}],
        "adapters": [{"name": "voice", "rules": ["voice-tone"], "requirements": []}],
        "applied": {"collections": {"docs": {"generation": 1}}, "adapters": {"voice": "voice@v1"}}})
    try:
        page.reload()
        expect(page.locator("#chat-model option[value=auto]")).to_have_count(1)
        page.select_option("#chat-model", "auto")
        page.fill("#chat-max-tokens", "6")
        page.fill("#chat-input", QUESTION)
        page.click("#chat-send")
        turn = page.locator(".turn.done")
        turn.wait_for()
        meta = turn.locator(".meta").inner_text()
        assert "adapter voice@v1" in meta and "auto: " in meta, meta
    finally:
        plan_file.unlink()


def test_json_mode_answer_is_pretty_printed(page):
    page.select_option("#chat-model", "voice")
    page.select_option("#chat-collection", "")
    page.fill("#chat-max-tokens", "24")
    page.check("#chat-json")
    page.fill("#chat-input", "hi")
    page.click("#chat-send")
    turn = page.locator(".turn.done")
    turn.wait_for()
    assert "JSON constrained" in turn.locator(".meta").inner_text()
    # a parsed object either way: "length" when the budget forced it closed (24 tokens here)
    assert turn.locator(".meta").inner_text().startswith(("finish: stop", "finish: length"))
    raw = turn.locator(".answer").inner_text()
    shown = turn.locator("pre.json").inner_text()
    assert json.loads(shown) == json.loads(raw)
    assert shown == json.dumps(json.loads(raw), indent=2)
    assert turn.locator("details.citation").count() == 0


def test_collections_tab_lists_counts_and_uploads(page, served):
    info = httpx.get(served.url + "/v1/collections/docs").json()
    page.click("#tab-collections")
    row = page.locator("#collections-table tr[data-collection=docs]")
    row.wait_for()
    assert row.locator(".documents").inner_text() == "2"
    assert row.locator(".chunks").inner_text() == str(info["chunks"])
    assert row.locator(".updated").inner_text() not in ("", "never")
    page.locator("details.docs[data-collection=docs] summary").click()
    assert "pricing.md" in page.locator("details.docs[data-collection=docs]").inner_text()

    assert page.locator("#upload-collection").input_value() == "docs"
    page.set_input_files("#upload-files", files=[{
        "name": "returns.md", "mimeType": "text/markdown",
        "buffer": b"# Returns\n\nReturns are accepted within 45 days of delivery.\n"}])
    page.click("#upload-send")
    result = page.locator("#upload-result")
    result.wait_for(timeout=60_000)
    assert "1 ingested" in result.inner_text()
    expect(row.locator(".documents")).to_have_text("3")
    assert int(row.locator(".chunks").inner_text()) > info["chunks"]
    assert "returns.md" in page.locator("details.docs[data-collection=docs]").inner_text()


def test_adapters_tab_shows_cards_with_a_loss_curve(page):
    page.click("#tab-adapters")
    card = page.locator(".adapter[data-adapter=support-voice]")
    card.locator("svg polyline.train").wait_for()
    points = card.locator("svg polyline.train").get_attribute("points").split()
    assert len(points) == TRAIN_STEPS
    ys = [float(p.split(",")[1]) for p in points]
    assert ys[0] < ys[-1]  # SVG y grows downwards: the falling loss ends lower on screen
    assert len(card.locator("svg polyline.val").get_attribute("points").split()) == 3
    text = card.inner_text()
    for shown in ("v1", "latest", "0.910", "95%", "base 5%", "0.780", "+4.9%", "180 train"):
        assert shown in text, shown
    plain = page.locator(".adapter[data-adapter=voice]")
    assert "No training card" in plain.inner_text()
    assert plain.locator("svg").count() == 0


def test_router_tab_routes_each_requirement(page):
    page.click("#tab-router")
    page.fill("#route-input", "Prices change every week\n\nAnswers must be valid JSON in our "
              "brand voice\n")
    page.click("#route-send")
    rows = page.locator("#route-table tbody tr")
    rows.first.wait_for(timeout=60_000)
    assert rows.count() == 2
    assert [rows.nth(i).get_attribute("data-decision") for i in range(2)] == ["RAG", "FINE_TUNE"]
    first = rows.nth(0).inner_text()
    assert "Prices change every week" in first and "%" in first
    assert rows.nth(0).locator("ul.reasons li").count() >= 1


def test_adapter_endpoint_limits_and_nan_cards(served, tmp_path):
    from ragtune.train import registry

    url = served.url + "/v1/adapters"
    body = httpx.get(url + "/support-voice").json()
    v = body["versions"][0]
    assert v["version"] == "v1" and v["aliases"] == ["latest"] and v["base"] == str(served.tiny)
    assert v["metrics"]["json_valid"] == 0.95 and len(v["loss"]["train"]) == TRAIN_STEPS
    assert v["loss"]["val"][-1] == [30, 0.91]
    assert httpx.get(url + "/support-voice@v1").json()["versions"][0]["version"] == "v1"
    assert httpx.get(url + "/voice").json()["versions"][0]["metrics"] is None
    missing = httpx.get(url + "/nope")
    message = missing.json()["error"]["message"]
    assert missing.status_code == 404 and "'nope'" in message
    assert "support-voice" not in message  # other adapters' names are not said (a key may be limited)
    assert httpx.get(url + "/support-voice@v9").status_code == 404

    card = training_card("nan-card", str(served.tiny))  # no embedder, no held-out data
    card["best_val_loss"] = math.inf
    card["eval"]["adapter"]["style_similarity"] = math.nan
    register_with_card(served.settings, served.tiny, "nan-card", tmp_path, card)
    try:
        v = httpx.get(url + "/nan-card").json()["versions"][0]
        assert v["metrics"]["best_val_loss"] is None and v["metrics"]["style_similarity"] is None
    finally:
        registry.delete(served.settings, "nan-card")

    keys = Keys(served.settings.keys_file)
    only_voice, _ = keys.create(["query"], adapters=["voice"])
    ingest_only, _ = keys.create(["ingest"])
    try:
        def get(name: str, key: str | None) -> int:
            h = {"Authorization": f"Bearer {key}"} if key else {}
            return httpx.get(f"{url}/{name}", headers=h).status_code

        assert get("voice", only_voice) == 200
        assert get("support-voice", only_voice) == 403
        assert get("voice", ingest_only) == 403 and get("voice", None) == 401
        assert httpx.get(served.url + "/").status_code == 200  # the page itself is public
    finally:
        served.settings.keys_file.unlink()
