"""Screenshots of the web page's four tabs (1280x800 PNG) for the README, from a running server.

    ragtune serve &                                   # a home with a collection and an adapter
    python docs/screenshots.py http://127.0.0.1:8000  # -> docs/img/{chat,collections,adapters,router}.png

Drives Debian's headless Chromium (`make browser`) with Playwright; nothing is downloaded. The
chat shot asks one question with the first adapter and collection the server lists (or the ones
given) and opens the first citation; the router shot routes a few sample requirements.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

HERE = Path(__file__).resolve().parent
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
QUESTION = "How much does the Pro plan cost per month?"
REQUIREMENTS = [
    "Prices change every week",
    "Answers must be valid JSON in our brand voice",
    "Tell customers how many units are in stock at each store today",
    "Sound like our support desk: warm, short, no jargon",
    "Never give legal advice",
]


def pick(page: Page, select: str, wanted: str | None, prefer: str) -> str:
    """`wanted` if given, else the first option matching the JS predicate `prefer`."""
    values = page.locator(f"{select} option").evaluate_all(
        f"os => os.filter(o => {prefer}).map(o => o.value)")
    value = wanted or (values[0] if values else "")
    page.select_option(select, value)
    return value


def chat(page: Page, out: Path, question: str, model: str | None, collection: str | None,
         max_tokens: int, k: int, timeout_s: float) -> None:
    page.locator("#chat-model option").first.wait_for(state="attached")
    pick(page, "#chat-model", model, "o.value !== 'auto' && o.value.indexOf('@') < 0 && "
         "o.textContent.indexOf('(base model)') < 0")
    pick(page, "#chat-collection", collection, "o.value !== ''")
    page.fill("#chat-max-tokens", str(max_tokens))
    page.fill("#chat-k", str(k))
    page.fill("#chat-input", question)
    page.click("#chat-send")
    page.locator(".turn.done, .turn.failed").wait_for(timeout=timeout_s * 1000)
    first = page.locator(".turn details.citation").first  # the best-scored chunk
    if first.count():
        first.locator("summary").click()
    page.fill("#chat-input", "")
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(out / "chat.png"))


def collections(page: Page, out: Path) -> None:
    page.click("#tab-collections")
    page.locator("#collections-table tbody tr, #collections-empty:not([hidden])").first.wait_for()
    docs = page.locator("details.docs")
    if docs.count():
        docs.first.locator("summary").click()
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(out / "collections.png"))


def adapters(page: Page, out: Path) -> None:
    page.click("#tab-adapters")
    page.locator(".adapter, #adapters-empty:not([hidden])").first.wait_for()
    page.wait_for_timeout(300)
    page.screenshot(path=str(out / "adapters.png"))


def router(page: Page, out: Path, timeout_s: float) -> None:
    page.click("#tab-router")
    page.fill("#route-input", "\n".join(REQUIREMENTS))
    page.click("#route-send")
    page.locator("#route-table tbody tr").first.wait_for(timeout=timeout_s * 1000)
    page.screenshot(path=str(out / "router.png"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url", help="the server, e.g. http://127.0.0.1:8000")
    ap.add_argument("--out", type=Path, default=HERE / "img", help="folder for the PNGs")
    ap.add_argument("--key", help="an API key with the query scope (when the server has keys)")
    ap.add_argument("--question", default=QUESTION)
    ap.add_argument("--model", help="model for the chat shot (default: the first adapter)")
    ap.add_argument("--collection", help="collection for the chat shot (default: the first)")
    ap.add_argument("--max-tokens", type=int, default=160)
    ap.add_argument("-k", type=int, default=3, help="retrieved chunks for the chat shot")
    ap.add_argument("--timeout", type=float, default=300, help="seconds to wait for an answer")
    ap.add_argument("--chromium", default="/usr/bin/chromium", help="`make browser` installs it")
    args = ap.parse_args()
    if not Path(args.chromium).exists():
        raise SystemExit(f"{args.chromium} is missing: `make browser` installs Debian's chromium")
    args.out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        if args.key:
            context.add_init_script(f"localStorage.setItem('ragtune.apiKey', {json.dumps(args.key)});")
        page = context.new_page()
        page.goto(args.url.rstrip("/") + "/")
        chat(page, args.out, args.question, args.model, args.collection, args.max_tokens,
             args.k, args.timeout)
        collections(page, args.out)
        adapters(page, args.out)
        router(page, args.out, args.timeout)
        browser.close()
    for name in ("chat", "collections", "adapters", "router"):
        print(args.out / f"{name}.png")


if __name__ == "__main__":
    main()
