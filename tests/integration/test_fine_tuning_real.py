"""The fine-tuning API on the embedded SmolLM2 and the real embedder, through the official
`openai` SDK: upload the sample support data, fine-tune (two steps), then the `ft:` model answers
a question from an ingested collection, citing it."""

from __future__ import annotations

import subprocess
import sys
import time

import openai
import pytest

from tests.conftest import REPO
from tests.serve_helpers import Server

pytestmark = pytest.mark.integration


def test_a_fine_tuned_embedded_model_answers_with_retrieval_and_citations(
        tmp_path, home, real_generator):
    from ragtune.generate.engine import Engine
    from ragtune.ingest.collection import Collection
    from ragtune.platform.settings import Settings
    from ragtune.serve.app import create_app, with_limits

    data = tmp_path / "support.jsonl"
    subprocess.run([sys.executable, str(REPO / "samples" / "support_dataset.py"), str(data),
                    "--n", "24"], check=True, capture_output=True)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "pricing.md").write_text("# Pricing\n\nThe Basic plan costs 10 EUR per month. "
                                     "The Pro plan costs 25 EUR per month.\n")
    settings = Settings(home=home)
    col = Collection.open("docs", settings)
    col.add([str(docs)])
    col.close()
    engine = Engine(settings, max_batch=2, queue_size=8)
    app = create_app(settings, engine)
    try:
        with Server(with_limits(app, settings)) as server:
            client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
            training = client.files.create(file=open(data, "rb"), purpose="fine-tune")
            job = client.fine_tuning.jobs.create(
                training_file=training.id, model=engine.model_name, suffix="support",
                hyperparameters={"n_epochs": 1, "batch_size": 4},
                extra_body={"ragtune": {"max_steps": 2, "eval_prompts": 2,
                                        "max_new_tokens": 16}})
            deadline = time.time() + 900
            while job.status not in ("succeeded", "failed", "cancelled"):
                assert time.time() < deadline, "the job did not end"
                time.sleep(1)
                job = client.fine_tuning.jobs.retrieve(job.id)
            assert job.status == "succeeded", job.error
            assert job.fine_tuned_model == (
                f"ft:{engine.base_dir.name}:ragtune:support:{job.id.removeprefix('ftjob-')}")
            steps = [e.data["step"] for e in client.fine_tuning.jobs.list_events(job.id, limit=50)
                     if e.type == "metrics"]
            assert sorted(steps) == [1, 2]
            r = client.chat.completions.create(
                model=job.fine_tuned_model, max_tokens=40,
                messages=[{"role": "user", "content": "How much does the Basic plan cost?"}],
                extra_body={"rag": {"collection": "docs", "k": 1}})
            assert r.model == job.fine_tuned_model and r.choices[0].message.content.strip()
            (cite,) = r.model_extra["citations"]
            assert cite["source"].endswith("pricing.md") and "10 EUR" in cite["text"]
    finally:
        app.state.ragtune.fine_tuning.close()
        engine.close()
