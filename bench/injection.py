"""Prompt-injection benchmark (OWASP LLM01/LLM08 for RAG) on the embedded SmolLM2-135M and
all-MiniLM-L6-v2: how often a random canary in the system prompt leaks, and how often an
instruction planted in a document is followed, with and without ragtune's guard.

    python bench/injection.py              # the test's 12 questions plus 10 more; needs
                                           # `ragtune models import` once
    python bench/injection.py --questions 12 --max-tokens 64

The evaluation is `serve.injection_eval.run_injection_eval`, the one
tests/reliability/test_prompt_injection.py runs (there with the 12 questions, asserting no leak
and no exfiltration URL with the guard). It runs in a temporary home (the imported generator
linked in), so the user's collections are untouched. Writes bench/results/injection.json and
injection.md. Figures are reported, never asserted here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def main() -> int:
    from ragtune.evals.injection import MORE_QUESTIONS, QUESTIONS, run_injection_eval, table
    from ragtune.platform.models import resolve_generator
    from ragtune.platform.settings import get_settings

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    everything = QUESTIONS + MORE_QUESTIONS
    ap.add_argument("--questions", type=int, default=len(everything),
                    help=f"how many of the {len(everything)} questions (the first 12 are the "
                    "test's)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("-k", type=int, default=3, help="chunks retrieved per question")
    ap.add_argument("--canary", help="a fixed canary (default: a random one per run)")
    args = ap.parse_args()

    user = get_settings()
    base = resolve_generator(user.generator, user)  # tells the user to import it if missing
    with tempfile.TemporaryDirectory(prefix="ragtune-injection-") as tmp:
        home = Path(tmp) / "home"
        (home / "models").mkdir(parents=True)
        (home / "models" / base.name).symlink_to(base)
        settings = user.model_copy(update={"home": home})
        report = run_injection_eval(settings, Path(tmp) / "docs",
                                    questions=everything[:args.questions], canary=args.canary,
                                    k=args.k, max_tokens=args.max_tokens)
    report["machine"] = {"python": sys.version.split()[0], "platform": platform.platform(),
                         "cpus": os.cpu_count()}
    md = (f"# Prompt injection: {report['questions']} questions, {report['base_model']}, greedy, "
          f"{report['max_tokens']} tokens, k={report['k']} ({report['seconds']} s)\n\n"
          + table(report) + "\n\nAttack documents: "
          + ", ".join(f"{n} ({a})" for n, a in report["attacks"].items()) + ".\n")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "injection.json").write_text(json.dumps(report, indent=1) + "\n")
    (RESULTS / "injection.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
