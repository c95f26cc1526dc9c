"""`mambakit eval perplexity|choice|needle|harness`: tables, JSON and PNG files, clear errors.

No shape letters: these tests run the command line.
"""
import json
import os

import pytest

from mambakit.cli import build_parser, main

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "eval")


def run(capsys, *args):
    rc = main(["eval", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_perplexity_command(capsys, tmp_path):
    (tmp_path / "a.txt").write_text("Some plain text to score, long enough for two windows of sixteen.")
    rc, out, err = run(capsys, "perplexity", "--model", "mamba2-tiny", "--device", "cpu", "--no-progress",
                       "--data", str(tmp_path / "a.txt"), f"{EXAMPLES}/docs.jsonl", "--context", "16", "--stride", "8",
                       "--out", str(tmp_path / "ppl.json"))
    assert rc == 0 and "RANDOM weights" in err
    lines = out.splitlines()
    assert lines[0].split() == ["file", "docs", "tokens", "bytes", "perplexity", "bits/byte"]
    assert lines[2].split()[:2] == [f"{EXAMPLES}/docs.jsonl", "3"]
    result = json.loads((tmp_path / "ppl.json").read_text())
    assert result["context"] == 16 and result["stride"] == 8 and result["total"]["documents"] == 4
    assert result["total"]["bits_per_byte"] > 0 and result["total"]["tokens"] == result["total"]["bytes"]


def test_choice_command(capsys, tmp_path):
    rc, out, _ = run(capsys, "choice", "--model", "mamba2-tiny", "--device", "cpu", "--no-progress",
                     "--data", f"{EXAMPLES}/mmlu_tiny_test.jsonl", "--dev", f"{EXAMPLES}/mmlu_tiny_dev.jsonl",
                     "--shots", "2", "--format", "all", "--out", str(tmp_path / "c.json"))
    assert rc == 0
    assert out.splitlines()[1].split() == ["subject", "n", "standard", "choices", "cloze"]
    assert "overall (micro)" in out
    result = json.loads((tmp_path / "c.json").read_text())
    assert set(result["results"]) == {"standard", "choices", "cloze"}
    assert "Answer: B\n\n" in result["results"]["standard"]["example_prompt"]


def test_needle_command_and_plot(capsys, tmp_path):
    rc, out, _ = run(capsys, "needle", "--model", "mamba2-tiny", "--device", "cpu", "--no-progress",
                     "--lengths", "200,300", "--depths", "0,1", "--examples", "2", "--template", "phonebook",
                     "--out", str(tmp_path / "n"))
    assert rc == 0 and "mean accuracy" in out
    result = json.loads((tmp_path / "n" / "needle.json").read_text())
    assert result["lengths"] == [200, 300] and result["depths"] == [0.0, 1.0]
    assert (tmp_path / "n" / "needle.png").read_bytes()[:4] == b"\x89PNG"
    rc, out, _ = run(capsys, "needle", "--plot-from", str(tmp_path / "n" / "needle.json"),
                     str(tmp_path / "n" / "needle.json"), "--out", str(tmp_path / "two.png"))
    assert rc == 0 and (tmp_path / "two.png").is_file()
    (tmp_path / "other.json").write_text('{"kind": "perplexity"}')
    (tmp_path / "notjson.json").write_text("nope")
    for f, match in (("other.json", "not a needle result"), ("notjson.json", "cannot read it as JSON")):
        rc, _, err = run(capsys, "needle", "--plot-from", str(tmp_path / f), "--out", str(tmp_path / "x.png"))
        assert rc == 2 and f in err and match in err, err


def test_needle_default_lengths_fit_the_default_template_in_bytes(capsys):
    # the default --lengths with the default (ruler) template on a byte-tokenizer model: its shortest
    # prompt is 333 bytes, and a default length of 256 stopped the command with "too short"
    rc, out, err = run(capsys, "needle", "--model", "mamba2-tiny", "--device", "cpu", "--no-progress",
                       "--depths", "0.5", "--examples", "1")
    assert rc == 0 and "mean accuracy" in out, err
    assert out.splitlines()[1].split() == ["depth", "512", "1024", "2048"]


def test_errors(capsys, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "choices": ["a", "b"], "answer": 0, "subject": "s"}\n'
                   '{"question": "q", "choices": ["a", "b"], "subject": "s"}\n')
    rc, _, err = run(capsys, "choice", "--model", "mamba2-tiny", "--data", str(bad))
    assert rc == 2 and f"{bad}:2: missing field 'answer'" in err
    rc, _, err = run(capsys, "perplexity", "--model", "no-such-model", "--data", f"{EXAMPLES}/docs.jsonl")
    assert rc == 2 and "neither an existing folder nor a preset name" in err
    rc, _, err = run(capsys, "needle", "--model", "mamba2-tiny", "--depths", "0,half")
    assert rc == 2 and "--depths must be comma-separated numbers" in err


@pytest.mark.parametrize("action", ["perplexity", "choice", "needle"])
@pytest.mark.parametrize("threads", ["-1", "0", "two"])
def test_threads_must_be_a_positive_int(capsys, action, threads):
    """--threads -1 was a traceback from torch, --threads 0 silently torch's default."""
    args = ["eval", action, "--model", "mamba2-tiny"] + (["--data", "x.jsonl"] if action != "needle" else [])
    with pytest.raises(SystemExit) as exit_:
        main(args + ["--threads", threads])
    shown = repr(threads) if threads == "two" else threads
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"argument --threads: expected a positive int, got {shown}" in err
    assert build_parser().parse_args(args + ["--threads", "3"]).threads == 3


def test_harness_arguments_pass_through():
    args = build_parser().parse_args(["eval", "harness", "--model", "mambakit", "--model_args", "path=x",
                                      "--tasks", "a,b", "-h"])
    assert args.lm_eval_args == ["--model", "mambakit", "--model_args", "path=x", "--tasks", "a,b", "-h"]
