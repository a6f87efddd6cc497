"""The command line, run as a user runs it: a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytestmark = pytest.mark.integration

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def jaxllm(*args, timeout=300, **kw):
    return subprocess.run([sys.executable, "-m", "jaxllm.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=ENV, **kw)


@pytest.mark.parametrize("command", [[], ["train"], ["sample"], ["eval"], ["info"]])
def test_help_on_every_command(command):
    r = jaxllm(*command, "--help")
    assert r.returncode == 0
    assert r.stdout.startswith("usage: jaxllm")
    assert "--help" in r.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["train", "--preset", "gpt5", "--out", "x"], "--preset"),
        (["train", "--out", "x", "--steps", "-3"], "--steps"),
        (["train", "--out", "x", "--steps", "many"], "--steps"),
        (["train"], "--out"),
        (["sample", "/nonexistent/run"], "run_dir"),
        (["sample", ".", "--temperature", "-1"], "--temperature"),
        (["sample", ".", "--top-p", "2"], "--top-p"),
        (["frobnicate"], "frobnicate"),
        (["train", "--out", "x", "--tokenizer", "words"], "--tokenizer"),
        (["train", "--out", "x", "--vocab-size", "300"], "--vocab-size"),
        (["train", "--out", "x", "--tokenizer", "bpe", "--vocab-size", "100"], "--vocab-size"),
        (["train", "--out", "x", "--n-head", "3"], "--n-head"),
        (["train", "--out", "x", "--d-model", "0"], "--d-model"),
        (["train", "--out", "x", "--config", "/nonexistent.toml"], "--config"),
        (["train", "--out", "x", "--text", "/nonexistent.txt"], "--text"),
        (["eval", "/nonexistent/run", "--text", "README.md"], "run_dir"),
        (["eval", "."], "--text"),
        (["info", "/nonexistent/run"], "run_dir"),
        (["serve"], "--model"),
        (["serve", "--model", "/nonexistent/run"], "--model"),
        (["serve", "--model", "x", "--host", "0.0.0.0"], "--host"),
        (["serve", "--model", "x", "--port", "70000"], "--port"),
    ],
)
def test_bad_flags_give_one_line_and_exit_2(args, needle):
    r = jaxllm(*args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert needle in lines[0]


def test_info_lists_presets_with_counts():
    r = jaxllm("info")
    assert r.returncode == 0
    assert "124,439,808" in r.stdout and "llama2-70b" in r.stdout
    # The open models, with the published figures and Mixtral's active parameters.
    mixtral = next(line for line in r.stdout.splitlines() if line.startswith("mixtral-8x7b"))
    assert mixtral.count("46,702,792,704") == 2 and mixtral.count("12,879,925,248") == 2
    assert "8,030,261,248" in r.stdout and "7,241,732,096" in r.stdout


def test_train_sample_and_resume_after_a_kill(tmp_path):
    straight = tmp_path / "straight"
    r = jaxllm("train", "--preset", "tiny", "--out", str(straight), "--steps", "40",
               "--checkpoint-every", "10", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "val loss" in r.stderr

    # the same run, killed once its step-20 checkpoint exists, then resumed
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "jaxllm.cli", "train", "--preset", "tiny",
                             "--out", str(killed), "--steps", "40", "--checkpoint-every",
                             "10", "--no-progress"], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (killed / "checkpoints" / "20").exists():
        assert proc.poll() is None or (killed / "checkpoints" / "20").exists()
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # resuming without --resume refuses to overwrite
    r = jaxllm("train", "--preset", "tiny", "--out", str(killed), "--no-progress")
    assert r.returncode == 2 and "--resume" in r.stderr
    r = jaxllm("train", "--out", str(killed), "--resume", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "resumed" in r.stderr

    def final_history(run):
        meta = run / "checkpoints" / "40" / "meta" / "metadata"
        return json.loads(meta.read_text())["history"]

    a, b = final_history(straight), final_history(killed)
    assert a["loss"] == b["loss"] and a["val_loss"] == b["val_loss"]

    r = jaxllm("sample", str(straight), "--prompt", "ROMEO:", "--max-new-tokens", "50",
               "--seed", "1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ROMEO:") and len(r.stdout) >= 50
    again = jaxllm("sample", str(straight), "--prompt", "ROMEO:", "--max-new-tokens", "50",
                   "--seed", "1")
    assert again.stdout == r.stdout
    bad = jaxllm("sample", str(straight), "--prompt", "ROMEO\u2603")
    assert bad.returncode == 2 and "--prompt" in bad.stderr and "Traceback" not in bad.stderr


def test_train_on_four_simulated_devices_then_sample_on_one(tmp_path):
    """`jaxllm train` shards over all devices it sees; the checkpoint loads on one device."""
    run = tmp_path / "sharded"
    env = {**ENV, "JAX_NUM_CPU_DEVICES": "4", "XLA_FLAGS": "--xla_backend_optimization_level=0"}
    r = subprocess.run([sys.executable, "-m", "jaxllm.cli", "train", "--preset", "tiny",
                        "--out", str(run), "--steps", "6", "--batch-size", "8",
                        "--no-progress"], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    assert "mesh data=4" in r.stderr
    r = subprocess.run([sys.executable, "-m", "jaxllm.cli", "train", "--preset", "tiny",
                        "--out", str(tmp_path / "odd"), "--batch-size", "6"],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 2 and "--batch-size" in r.stderr
    r = jaxllm("sample", str(run), "--prompt", "KING:", "--max-new-tokens", "10")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("KING:") and len(r.stdout) == len("KING:") + 10 + 1


def test_bpe_run_from_a_config_file_then_eval_and_info(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("the cat sat on the mat. the dog sat on the log. " * 300, encoding="utf-8")
    config = tmp_path / "run.toml"
    config.write_text(
        'preset = "tiny"\ntext = "corpus.txt"\n'
        '[model]\nn_layer = 1\nd_model = 48\nn_head = 3\n'
        '[train]\nsteps = 40\neval_interval = 20\n'
        '[tokenizer]\nkind = "bpe"\nvocab_size = 270\n', encoding="utf-8")
    run = tmp_path / "run"
    r = jaxllm("train", "--config", str(config), "--out", str(run), "--no-progress")
    assert r.returncode == 0, r.stderr
    info = json.loads((run / "run.json").read_text())
    assert info["model"]["n_layer"] == 1 and info["model"]["d_model"] == 48
    assert info["model"]["vocab_size"] == 270 and info["train"]["steps"] == 40
    assert json.loads((run / "tokenizer.json").read_text())["type"] == "bpe"

    held_out = tmp_path / "held_out.txt"
    held_out.write_text("the dog sat on the mat. the cat sat on the log. " * 20,
                        encoding="utf-8")
    r = jaxllm("eval", str(run), "--text", str(held_out))
    assert r.returncode == 0, r.stderr
    values = dict(line.split(None, 1) for line in r.stdout.splitlines()
                  if line.startswith(("loss", "perplexity")))
    loss, ppl = float(values["loss"].split()[0]), float(values["perplexity"])
    assert ppl == pytest.approx(np.exp(loss), rel=1e-3)
    assert loss < np.log(270) - 1.0  # it learned something about this text
    assert "bits per character" in r.stdout and "bits per byte" in r.stdout

    r = jaxllm("info", str(run))
    assert r.returncode == 0, r.stderr
    assert "BPETokenizer, 270 tokens" in r.stdout and "latest 40 of 40" in r.stdout
    assert "val_loss" in r.stdout

    # resuming reads the saved tokenizer and settings; flags that would change them are refused
    r = jaxllm("train", "--out", str(run), "--resume", "--steps", "50", "--no-progress")
    assert r.returncode == 0, r.stderr and "resumed" in r.stderr
    assert json.loads((run / "tokenizer.json").read_text())["type"] == "bpe"
    r = jaxllm("train", "--out", str(run), "--resume", "--tokenizer", "char")
    assert r.returncode == 2 and "--tokenizer" in r.stderr

    bad = tmp_path / "bad.toml"
    bad.write_text('[model]\nn_layers = 2\n', encoding="utf-8")
    r = jaxllm("train", "--config", str(bad), "--out", str(tmp_path / "bad"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "n_layers" in r.stderr and "Traceback" not in r.stderr


def test_train_on_the_generated_world(tmp_path):
    out = tmp_path / "w"
    r = jaxllm("train", "--preset", "world-base", "--out", str(out), "--steps", "2",
               "--n-layer", "1", "--d-model", "32", "--n-head", "2", "--batch-size", "2",
               "--context-length", "32", "--vocab-size", "300", "--eval-interval", "2",
               "--no-progress")
    assert r.returncode == 0, r.stderr
    info = json.loads((out / "run.json").read_text())
    assert info["data"] == "world" and info["preset"] == "world-base"
    tok = json.loads((out / "tokenizer.json").read_text())
    assert "<|end|>" in json.dumps(tok)
