"""The fine-tuning API (files, jobs, events, checkpoints), driven by the official `openai` SDK
exactly as OpenAI documents it, on a real server with the tiny generator; the fine-tuned model
then answers in chat completions with retrieval and citations."""

from __future__ import annotations

import json
import os
import signal
import time

import httpx
import openai
import pytest

from ragtune.generate.engine import Engine
from ragtune.platform.settings import Settings
from ragtune.serve.app import create_app, with_limits
from ragtune.serve.auth import Keys
from tests.serve_helpers import ServeProcess, Server

FINAL = ("succeeded", "failed", "cancelled")


def examples(n: int, long_line: int | None = None) -> bytes:
    rows = []
    for i in range(n):
        answer = f"Answer number {i}, in our voice."
        if i + 1 == long_line:
            answer = " ".join(["word"] * 400)
        rows.append({"messages": [{"role": "system", "content": "You are the support desk."},
                                  {"role": "user", "content": f"Question {i}?"},
                                  {"role": "assistant", "content": answer}]})
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_lm_dir):
    from ragtune.ingest.collection import Collection

    root = tmp_path_factory.mktemp("ft")
    docs = root / "docs"
    docs.mkdir()
    (docs / "pricing.md").write_text("# Pricing\n\nThe Basic plan costs 10 EUR per month.\n")
    settings = Settings(home=root / "home", generator=str(tiny_lm_dir), relevance_floor=-1)
    col = Collection.open("docs", settings)
    col.add([str(docs)])
    col.close()
    engine = Engine(settings, max_batch=4, queue_size=16)
    app = create_app(settings, engine)
    with Server(with_limits(app, settings)) as server:
        server.settings, server.engine, server.app = settings, engine, app
        yield server
    app.state.ragtune.fine_tuning.close()
    engine.close()


@pytest.fixture
def client(served):
    return openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0)


def upload(client, data: bytes, name: str = "train.jsonl"):
    return client.files.create(file=(name, data), purpose="fine-tune")


def wait(client, job_id: str, until=FINAL, timeout: float = 600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in until:
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} still {job.status} after {timeout} s")


def test_the_documented_flow_makes_a_model_that_answers_with_citations(client, served):
    # OpenAI's documented usage, unchanged but for base_url and the model name
    training = upload(client, examples(12))
    assert training.object == "file" and training.purpose == "fine-tune"
    assert training.bytes == len(examples(12)) and training.filename == "train.jsonl"
    job = client.fine_tuning.jobs.create(training_file=training.id,
                                         model=served.engine.model_name, suffix="voice",
                                         hyperparameters={"n_epochs": 2})
    assert job.status == "validating_files" and job.object == "fine_tuning.job"
    assert job.hyperparameters.n_epochs == 2 and job.hyperparameters.batch_size == 8
    assert job.hyperparameters.learning_rate_multiplier == 1.0  # "auto", resolved
    statuses = set()
    while job.status not in FINAL:
        statuses.add(job.status)
        list(client.fine_tuning.jobs.list_events(fine_tuning_job_id=job.id, limit=10))
        time.sleep(0.3)
        job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model.startswith("ft:") and ":ragtune:voice:" in job.fine_tuned_model
    assert job.trained_tokens > 0 and job.finished_at >= job.created_at
    events = list(client.fine_tuning.jobs.list_events(fine_tuning_job_id=job.id, limit=100))
    messages = [e.message for e in events][::-1]  # oldest first
    order = [m for m in messages if m.startswith(("Validating", "Files validated",
                                                  "Fine-tuning job started",
                                                  "The job has successfully"))]
    assert [m.split()[0] for m in order] == ["Validating", "Files", "Fine-tuning", "The"]
    metrics = [e.data for e in events if e.type == "metrics"]
    assert sorted(m["step"] for m in metrics) == [1, 2]  # 11 train examples / 8: 1 step an epoch
    assert all(m["train_loss"] > 0 and m["total_steps"] == 2 for m in metrics)
    assert any(m.get("valid_loss") for m in metrics)
    # the results file: the per-step metrics as CSV
    (results,) = job.result_files
    csv_text = client.files.content(results).text.splitlines()
    assert csv_text[0].startswith("step,train_loss,valid_loss") and len(csv_text) == 3
    # the model answers at once, with retrieval and citations
    r = client.chat.completions.create(
        model=job.fine_tuned_model, max_tokens=6,
        messages=[{"role": "user", "content": "How much is the Basic plan?"}],
        extra_body={"rag": {"collection": "docs", "k": 1}})
    assert r.model == job.fine_tuned_model and r.choices[0].message.content
    assert r.model_extra["citations"][0]["source"].endswith("pricing.md")
    assert r.model_extra["ragtune"]["adapter"] == job.fine_tuned_model
    assert job.fine_tuned_model in {m.id for m in client.models.list()}
    # a registered adapter underneath, with its eval card
    adapter = job.model_extra["ragtune"]["adapter"]
    shown = httpx.get(f"{served.url}/v1/adapters/{adapter}@latest").json()
    (final,) = shown["versions"]
    assert shown["name"] == adapter and "latest" in final["aliases"]
    assert final["card"]["eval"] and final["card"]["trained_tokens"] == job.trained_tokens
    every = httpx.get(f"{served.url}/v1/adapters/{adapter}").json()["versions"]
    assert len(every) == 3  # the evaluated model and its two checkpoints
    # checkpoints: one per validation, each servable by its own name
    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(fine_tuning_job_id=job.id))
    assert [c.step_number for c in checkpoints] == [2, 1]
    for c in checkpoints:
        assert c.fine_tuned_model_checkpoint == f"{job.fine_tuned_model}:ckpt-step-{c.step_number}"
        assert c.metrics.train_loss > 0 and c.fine_tuning_job_id == job.id
        out = client.chat.completions.create(model=c.fine_tuned_model_checkpoint, max_tokens=3,
                                             messages=[{"role": "user", "content": "Hi"}])
        assert out.model == c.fine_tuned_model_checkpoint
    # the checkpoint weights differ from each other (two steps apart), so two versions
    assert len({c.fine_tuned_model_checkpoint for c in checkpoints}) == 2
    with pytest.raises(openai.NotFoundError, match="ckpt-step-7"):
        client.chat.completions.create(model=f"{job.fine_tuned_model}:ckpt-step-7", max_tokens=1,
                                       messages=[{"role": "user", "content": "Hi"}])


def test_a_bad_upload_is_refused_naming_its_lines_and_nothing_is_stored(client):
    before = {f.id for f in client.files.list()}
    bad = examples(3) + b'{"messages": [{"role": "user", "content": "no answer"}]}\nnot json\n'
    with pytest.raises(openai.BadRequestError) as e:
        upload(client, bad)
    message = e.value.body["message"]
    assert "line 4" in message and "line 5" in message and "assistant" in message
    with pytest.raises(openai.BadRequestError, match="JSONL"):
        upload(client, examples(3), name="train.csv")
    with pytest.raises(openai.BadRequestError, match="purpose"):
        client.files.create(file=("a.jsonl", examples(3)), purpose="batch")
    assert {f.id for f in client.files.list()} == before


def test_a_job_whose_data_fails_validation_fails_naming_the_line(client):
    training = upload(client, examples(6, long_line=3))  # well formed; line 3 too long
    job = client.fine_tuning.jobs.create(training_file=training.id, model="base",
                                         extra_body={"ragtune": {"max_seq_len": 128}})
    job = wait(client, job.id)
    assert job.status == "failed" and job.fine_tuned_model is None
    assert job.error.code == "invalid_training_file" and job.error.param == "training_file"
    assert "line 3" in job.error.message and "/" not in job.error.message.split(":")[0]
    levels = {e.level for e in client.fine_tuning.jobs.list_events(fine_tuning_job_id=job.id)}
    assert "error" in levels


@pytest.mark.parametrize("change, param, says", [
    ({"model": "gpt-4o-mini-2024-07-18"}, "model", "not a base model"),
    ({"model": "ft:x:ragtune::0123456789ab"}, "model", "fine-tuned"),
    ({"method": {"type": "dpo", "dpo": {}}}, "method.type", "dpo"),
    ({"method": {"type": "reinforcement"}}, "method.type", "reinforcement"),
    ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs", "positive"),
    ({"hyperparameters": {"warmup": 3}}, "hyperparameters.warmup", "not supported"),
    ({"suffix": "has space"}, "suffix", "letters"),
    ({"training_file": "file-nope"}, "training_file", "no such file"),
    ({"integrations": [{"type": "wandb", "wandb": {"project": "p"}}]}, "integrations", "wandb"),
    ({"temperature": 1}, "temperature", "unknown field"),
    ({"ragtune": {"rank": 0}}, "ragtune", "--rank"),
    ({"ragtune": {"epochs": 2}}, "ragtune.epochs", "set by the job"),
])
def test_a_bad_request_is_refused_naming_the_field(client, served, change, param, says):
    training = upload(client, examples(4))
    before = len(client.fine_tuning.jobs.list(limit=100).data)
    body = {"model": served.engine.model_name, "training_file": training.id, **change}
    r = httpx.post(served.url + "/v1/fine_tuning/jobs", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param and says in r.json()["error"]["message"]
    assert len(client.fine_tuning.jobs.list(limit=100).data) == before  # nothing was created


def test_cancel_a_running_job_stops_its_worker(client, served):
    training = upload(client, examples(12))
    job = client.fine_tuning.jobs.create(training_file=training.id, model="base",
                                         hyperparameters={"n_epochs": 200})
    job = wait(client, job.id, until=("running", *FINAL))
    deadline = time.time() + 120
    while sum(e.type == "metrics" for e in
              client.fine_tuning.jobs.list_events(fine_tuning_job_id=job.id, limit=5)) < 2:
        assert time.time() < deadline, "two steps did not finish"  # the pace needs two
        time.sleep(0.3)
    assert client.fine_tuning.jobs.retrieve(job.id).estimated_finish is not None
    client.fine_tuning.jobs.cancel(job.id)
    job = wait(client, job.id, timeout=60)
    assert job.status == "cancelled" and job.fine_tuned_model is None and job.finished_at
    assert not served.app.state.ragtune.fine_tuning._procs  # the worker is gone
    with pytest.raises(openai.BadRequestError, match="already cancelled"):
        client.fine_tuning.jobs.cancel(job.id)
    # a queued job cancels at once; its data file may be deleted once nothing runs on it
    other = client.fine_tuning.jobs.create(training_file=training.id, model="base")
    assert client.fine_tuning.jobs.cancel(other.id).status == "cancelled"
    assert client.files.delete(training.id).deleted


def test_a_file_an_unfinished_job_reads_is_not_deleted(client):
    training = upload(client, examples(12))
    job = client.fine_tuning.jobs.create(training_file=training.id, model="base",
                                         hyperparameters={"n_epochs": 200})
    with pytest.raises(openai.ConflictError, match=job.id):
        client.files.delete(training.id)
    client.fine_tuning.jobs.cancel(job.id)
    wait(client, job.id, timeout=60)
    assert client.files.delete(training.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(training.id)


def test_pagination_of_jobs_events_and_files(client):
    training = upload(client, examples(4))
    made = []
    for i in range(3):
        job = client.fine_tuning.jobs.create(training_file=training.id, model="base",
                                             metadata={"batch": "pages", "i": str(i)})
        made.append(client.fine_tuning.jobs.cancel(job.id).id)
    first = client.fine_tuning.jobs.list(limit=2, extra_query={"metadata[batch]": "pages"})
    assert [j.id for j in first.data] == made[::-1][:2] and first.has_more
    second = client.fine_tuning.jobs.list(limit=2, after=first.data[-1].id,
                                          extra_query={"metadata[batch]": "pages"})
    assert [j.id for j in second.data] == [made[0]] and not second.has_more
    # the SDK's auto-pagination walks every page
    walked = [j.id for j in client.fine_tuning.jobs.list(
        limit=1, extra_query={"metadata[batch]": "pages"})]
    assert walked == made[::-1]
    events = [e.id for e in client.fine_tuning.jobs.list_events(made[0], limit=1)]
    assert len(events) == len(set(events)) >= 3
    files = client.files.list(limit=1, order="asc")
    assert len(files.data) == 1 and files.has_more
    ids = [f.id for f in client.files.list(limit=2, order="asc")]
    assert training.id in ids and len(ids) == len(set(ids))
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.list(after="ftjob-000000000000")


def test_each_key_sees_only_its_own_files_and_jobs(client, served):
    store = Keys(served.settings.keys_file)
    a, _ = store.create(["train"])
    b, _ = store.create(["train"])
    reader, _ = store.create(["query"])
    admin, _ = store.create(["admin"])
    try:
        as_a, as_b, as_admin, as_reader = (
            openai.OpenAI(base_url=served.url + "/v1", api_key=k, max_retries=0)
            for k in (a, b, admin, reader))
        training = upload(as_a, examples(4))
        job = as_a.fine_tuning.jobs.create(training_file=training.id, model="base")
        as_a.fine_tuning.jobs.cancel(job.id)
        with pytest.raises(openai.NotFoundError):
            as_b.fine_tuning.jobs.retrieve(job.id)
        with pytest.raises(openai.NotFoundError):
            as_b.files.retrieve(training.id)
        with pytest.raises(openai.BadRequestError, match="no such file"):
            as_b.fine_tuning.jobs.create(training_file=training.id, model="base")
        assert job.id not in {j.id for j in as_b.fine_tuning.jobs.list()}
        assert training.id not in {f.id for f in as_b.files.list()}
        assert job.id in {j.id for j in as_admin.fine_tuning.jobs.list()}
        assert as_admin.files.retrieve(training.id).id == training.id
        with pytest.raises(openai.PermissionDeniedError):
            as_reader.fine_tuning.jobs.list()
        with pytest.raises(openai.PermissionDeniedError):
            upload(as_reader, examples(4))
    finally:
        served.settings.keys_file.unlink()


def workers_of(job_dir) -> list[int]:
    """The pids of live ft_worker processes training `job_dir` (read from /proc)."""
    from pathlib import Path

    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"ragtune.serve.ft_worker" in cmd and str(job_dir).encode() in cmd:
            pids.append(int(proc.name))
    return pids


def test_a_job_survives_a_server_restart(tmp_path, tiny_lm_dir):
    """`ragtune serve` killed (SIGKILL) while a job trains: its worker checkpoints and stops;
    the next server on the home resumes the job from that checkpoint and it succeeds."""
    env = {"RAGTUNE_HOME": str(tmp_path / "home"), "RAGTUNE_GENERATOR": str(tiny_lm_dir),
           "HF_HUB_OFFLINE": "1"}
    with ServeProcess(env, tmp_path / "serve1.log") as first:
        c = openai.OpenAI(base_url=first.url + "/v1", api_key="x", max_retries=0)
        training = upload(c, examples(12))
        job = c.fine_tuning.jobs.create(training_file=training.id, model="base",
                                        hyperparameters={"n_epochs": 24, "batch_size": 4},
                                        extra_body={"ragtune": {"save_every": 2,
                                                                "eval_prompts": 2,
                                                                "max_new_tokens": 8}})
        deadline = time.time() + 180
        while True:
            steps = [e.data["step"] for e in c.fine_tuning.jobs.list_events(job.id, limit=5)
                     if e.type == "metrics"]
            if steps and max(steps) >= 3:  # past the first checkpoint (save_every 2)
                break
            assert time.time() < deadline, "training did not get going"
            time.sleep(0.3)
        job_dir = tmp_path / "home" / "jobs" / "fine_tuning" / job.id
        assert workers_of(job_dir)  # training, in its own process
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait(timeout=30)
    # the worker stops with its server (SIGINT from the kernel): it checkpoints and exits
    deadline = time.time() + 120
    while workers_of(job_dir):
        assert time.time() < deadline, "the worker outlived its server"
        time.sleep(0.2)
    run_dir = tmp_path / "home" / "jobs" / job.id
    assert (run_dir / "checkpoint").exists() or (run_dir / "checkpoint.old").exists()
    record = json.loads((job_dir / "job.json").read_text())
    assert record["status"] == "running"  # as the killed server left it
    with ServeProcess(env, tmp_path / "serve2.log") as second:
        c = openai.OpenAI(base_url=second.url + "/v1", api_key="x", max_retries=0)
        done = wait(c, job.id)
        assert done.status == "succeeded", done.error
        events = list(c.fine_tuning.jobs.list_events(job.id, limit=100))
        assert any(e.level == "warn" and "restarted" in e.message for e in events)
        assert any("resuming from its last checkpoint" in e.message for e in events)
        r = c.chat.completions.create(model=done.fine_tuned_model, max_tokens=2,
                                      messages=[{"role": "user", "content": "Hi"}])
        assert r.choices[0].message.content is not None
