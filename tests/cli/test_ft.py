"""`ragtune ft`: the fine-tuning flow from the command line, on the same job store as the API."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from ragtune.cli import app


def test_ft_create_trains_and_the_other_commands_read_the_job(home, tiny_lm_dir, monkeypatch,
                                                              tmp_path):
    monkeypatch.setenv("RAGTUNE_GENERATOR", str(tiny_lm_dir))
    data = tmp_path / "voice.jsonl"
    data.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"Q {i}?"}, {"role": "assistant", "content": f"A {i}."}]})
        + "\n" for i in range(10)))
    cli = CliRunner()
    r = cli.invoke(app, ["ft", "create", str(data), "--suffix", "cli", "--epochs", "2",
                         "--ragtune", '{"eval_prompts": 2}'])
    assert r.exit_code == 0, r.output
    model = r.output.strip().splitlines()[-1].removeprefix("model: ")
    assert model.startswith("ft:") and ":ragtune:cli:" in model
    assert "Step 2/2" in r.output and "successfully completed" in r.output
    job = r.output.split(":")[0]
    listed = json.loads(cli.invoke(app, ["ft", "list", "--json"]).output)
    assert [j["id"] for j in listed] == [job] and listed[0]["fine_tuned_model"] == model
    shown = json.loads(cli.invoke(app, ["ft", "show", job]).output)
    assert shown["status"] == "succeeded" and shown["hyperparameters"]["n_epochs"] == 2
    events = cli.invoke(app, ["ft", "events", job]).output
    assert "Fine-tuning job started" in events
    ckpts = cli.invoke(app, ["ft", "checkpoints", job]).output
    assert f"{model}:ckpt-step-2" in ckpts and f"{model}:ckpt-step-1" in ckpts
    r = cli.invoke(app, ["ft", "cancel", job])
    assert r.exit_code != 0 and "already succeeded" in str(r.exception)
    adapters = cli.invoke(app, ["adapters", "list"]).output
    assert shown["ragtune"]["adapter"] in adapters


def test_ft_create_refuses_a_bad_file_naming_the_line(home, tiny_lm_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("RAGTUNE_GENERATOR", str(tiny_lm_dir))
    data = tmp_path / "bad.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", '
                    '"content": "a"}]}\n{"messages": [{"role": "robot", "content": "x"}]}\n')
    r = CliRunner().invoke(app, ["ft", "create", str(data)])
    assert r.exit_code != 0 and "line 2" in str(r.exception) and "robot" in str(r.exception)
