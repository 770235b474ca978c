"""Training arguments are declared once (train/args.py): every field is a `ragtune train` option
with the same default, a `ragtune plan apply` option unless the plan decides it, and an option
the HTTP job (`POST /v1/adapters`) accepts; a bad value is refused naming its option, over HTTP
with a 400 before any upload is stored or job recorded."""

from __future__ import annotations

import json
import subprocess
from dataclasses import MISSING
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from ragtune.cli import app
from ragtune.platform.errors import RagtuneError
from ragtune.train.args import (
    PLAN_DECIDES,
    LaunchArgs,
    TrainArgs,
    TrainConfig,
    TrainJob,
    flag,
    option_fields,
)

FIELDS = [f for _, f in option_fields()]


def _command(*path: str):
    cmd = typer.main.get_command(app)
    for name in path:
        cmd = cmd.commands[name]
    return {p.name: p for p in cmd.params}


@pytest.mark.parametrize("path", [("train",), ("plan", "apply")])
def test_every_field_is_an_option_with_the_same_default(path):
    params = _command(*path)
    for f in FIELDS:
        if path == ("plan", "apply") and f.name in PLAN_DECIDES:
            assert f.name not in params, f.name  # the plan decides it per adapter
            continue
        assert f.name in params, f"{f.name} has no option on `ragtune {' '.join(path)}`"
        p = params[f.name]
        if f.name != "data":
            assert flag(f) in p.opts, (f.name, p.opts)
        assert p.help == f.metadata["help"]
        assert p.default == (None if f.default is MISSING else f.default), f.name


def test_options_round_trip_through_json():
    args = TrainArgs.from_options({"data": "d.jsonl", "name": "voice", "epochs": "2",
                                   "target_modules": "q_proj, v_proj", "use_dora": "true",
                                   "max_steps": 7, "json_schema": "s.json"})
    assert args.config.target_modules == ["q_proj", "v_proj"] and args.config.use_dora
    assert args.config.epochs == 2 and args.job.json_schema == Path("s.json")
    assert TrainArgs.from_options(json.loads(json.dumps(args.options()))) == args
    assert set(args.options()) == {f.name for f in FIELDS}


BAD = [
    ({"epochs": 0}, "--epochs must be at least 1"),
    ({"rank": "x"}, "--rank must be an integer"),
    ({"lr": "nan"}, "--lr must be a finite number"),
    ({"dropout": 1.0}, r"--dropout must be in \[0, 1\)"),
    ({"max_steps": 1.5}, "--max-steps must be an integer"),
    ({"use_dora": "maybe"}, "--dora must be true or false"),
    ({"device": "tpu"}, "--device must be cpu, cuda"),
    ({"strip_facts": True}, "--strip-facts needs --facts-collection"),
    ({"with_context": "../docs"}, "collection name '../docs' is not allowed"),
    ({"name": "a/b"}, "adapter name 'a/b' is not allowed"),
    ({"launcher": "mpi"}, "--launcher must be one of accelerate, torchrun"),
    ({"num_processes": 2}, "--num-processes 2 needs --launcher"),
    ({"no_oracle_share": 2}, r"--no-oracle-share must be in \[0, 1\]"),
    ({"epoch": 2}, "unknown training option.*epoch"),
]


@pytest.mark.parametrize(("change", "message"), BAD)
def test_a_bad_or_contradictory_value_is_refused_naming_its_option(change, message):
    with pytest.raises(RagtuneError, match=message):
        TrainArgs.from_options({"data": "d.jsonl", "name": "voice", **change})


def test_the_groups_validate_on_their_own():
    with pytest.raises(RagtuneError, match="--grad-accum"):
        TrainConfig(grad_accum=0)
    with pytest.raises(RagtuneError, match="--context-k"):
        TrainJob(data=Path("d"), name="v", context_k=0)
    with pytest.raises(RagtuneError, match="--num-processes"):
        LaunchArgs("torchrun", 0)
    with pytest.raises(RagtuneError, match="--name is required"):
        TrainArgs.from_options({"data": "d.jsonl"})


# -- the CLI: flags, a config file, the launcher ------------------------------------------------


def test_cli_refuses_a_bad_value_before_any_work(tmp_path):
    r = CliRunner().invoke(app, ["train", str(tmp_path / "d.jsonl"), "--name", "v",
                                 "--warmup-ratio", "1.5"])
    assert r.exit_code != 0 and "--warmup-ratio must be in [0, 1)" in str(r.exception)
    r = CliRunner().invoke(app, ["train", "--name", "v"])
    assert r.exit_code != 0 and "no training data" in str(r.exception)
    r = CliRunner().invoke(app, ["plan", "apply", str(tmp_path / "p.json"), "--epochs", "0"])
    assert r.exit_code != 0


def test_the_launcher_starts_the_one_entry_with_a_config_file(tmp_path, monkeypatch):
    """`--launcher` writes the options (launch options dropped) and runs every process as
    `ragtune train --config FILE`; flags given beside --config override the file."""
    seen = {}

    def fake_run(cmd, **kw):
        config = Path(cmd[cmd.index("--config") + 1])
        seen["cmd"], seen["options"] = cmd, json.loads(config.read_text())
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setattr("ragtune.train.distributed._tool", lambda name: name)
    config = tmp_path / "job.json"
    config.write_text(json.dumps({"data": str(tmp_path / "d.jsonl"), "name": "voice",
                                  "epochs": 5, "rank": 4, "launcher": "torchrun",
                                  "num_processes": 2}))
    r = CliRunner().invoke(app, ["train", "--config", str(config), "--epochs", "2"])
    assert r.exit_code == 0, r.output
    cmd, sent = seen["cmd"], seen["options"]
    assert cmd[:3] == ["torchrun", "--nproc-per-node", "2"]
    assert cmd[3:7] == ["-m", "ragtune.cli", "train", "--config"]
    assert sent["epochs"] == 2 and sent["rank"] == 4 and sent["name"] == "voice"
    assert sent["launcher"] is None and sent["num_processes"] == 1
    assert not Path(cmd[-1]).exists()  # the file is removed once the processes are done


# -- the HTTP job ------------------------------------------------------------------------------


class RecordingJobs:
    """Jobs that record what was submitted and run nothing."""

    def __init__(self):
        self.submitted = []

    def submit(self, kind, params, fn, owner=None):  # noqa: ANN001, ANN201
        self.submitted.append(params)
        return {"id": "job-0", "object": "job", "kind": kind, "status": "queued",
                "params": params}

    def check_room(self):  # noqa: ANN201  (never full)
        pass

    def close(self):  # noqa: ANN201
        pass


@pytest.fixture
def api(tmp_path):
    from fastapi.testclient import TestClient

    from ragtune.platform.settings import Settings
    from ragtune.serve.app import create_app

    class NoEngine:
        running = 0
        model_name = "served-base"

        def queue_depth(self):  # noqa: ANN201
            return 0

        def close(self):  # noqa: ANN201
            pass

    settings = Settings(home=tmp_path / "home", generator="served-base")
    with pytest.warns(UserWarning, match="no API keys"):
        app_ = create_app(settings, NoEngine())
    app_.state.ragtune.jobs.close()
    jobs = app_.state.ragtune.jobs = RecordingJobs()
    with TestClient(app_) as client:
        client.settings, client.jobs = settings, jobs
        yield client


DATA = {"file": ("d.jsonl", b'{"prompt": "hi", "completion": "hello"}\n')}


def _post(api, data):
    return api.post("/v1/adapters", data=data, files=DATA)


def test_the_http_job_accepts_every_option(api):
    values = {f.name: (None if f.default is MISSING else f.default) for f in FIELDS
              if f.name not in ("data", "name", "base", "json_schema", "epochs")}
    values.update(rank=4, use_dora=True, target_modules="q_proj,v_proj", patience=5,
                  with_context="docs", facts_collection="docs", strip_facts=True,
                  json_schema={"type": "object"})
    r = _post(api, {"name": "voice", "epochs": "2", "config": json.dumps(values)})
    assert r.status_code == 202, r.text
    folder = next((api.settings.jobs_dir / "uploads").iterdir())
    written = TrainArgs.read(folder / "train.json")
    assert written.config.epochs == 2 and written.config.rank == 4 and written.config.use_dora
    assert written.config.target_modules == ["q_proj", "v_proj"]
    assert written.job.name == "voice" and written.job.strip_facts
    assert written.job.base == "served-base"  # the base the server serves
    assert json.loads(written.job.json_schema.read_text()) == {"type": "object"}
    assert written.job.data.parent == folder and written.job.data.read_bytes() == DATA["file"][1]
    for f in FIELDS:  # every option reached the job's config file
        if f.name not in ("data", "name", "base", "json_schema", "epochs"):
            got = json.loads((folder / "train.json").read_text())[f.name]
            want = values[f.name]
            assert got == (["q_proj", "v_proj"] if f.name == "target_modules" else want), f.name


@pytest.mark.parametrize(("data", "message"), [
    ({"epochs": "0"}, "--epochs must be at least 1"),
    ({"config": json.dumps({"lr": -1})}, "--lr must be positive"),
    ({"config": json.dumps({"rank": "big"})}, "--rank must be an integer"),
    ({"config": json.dumps({"strip_facts": True})}, "--strip-facts needs --facts-collection"),
    ({"config": json.dumps({"epoch": 2})}, "unknown training option"),
    ({"config": json.dumps({"base": "/etc"})}, "base cannot be set here"),
    ({"config": json.dumps({"data": "/etc/passwd"})}, "data cannot be set here"),
    ({"config": json.dumps({"json_schema": "/etc/schema.json"})}, "the JSON schema itself"),
    ({"config": json.dumps({"epochs": 3}), "epochs": "2"}, "epochs is given twice"),
    ({"config": "{not json"}, "config: not valid JSON"),
    ({"config": "[1]"}, "config: send a JSON object"),
    ({"config": json.dumps({"num_processes": 2})}, "--num-processes 2 needs --launcher"),
])
def test_the_http_job_answers_400_before_202_on_a_bad_value(api, data, message):
    r = _post(api, {"name": "voice", **data})
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]["message"]
    assert not api.jobs.submitted
    assert not (api.settings.jobs_dir / "uploads").exists()  # nothing stored
