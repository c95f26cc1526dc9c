"""The runner: streamed evaluation equals one forward, training runs, the commands write their files."""
import json

import pytest
import torch

from mambakit.cli import main
from mambakit.tasks import get_task
from mambakit.tasks.runner import build_model, evaluate, parse_overrides, predict


@pytest.mark.parametrize("preset", ["mamba2-tiny", "mamba-tiny"])
def test_streamed_prediction_equals_one_forward(preset):
    task = get_task("selective_copying", vocab_size=16, num_tokens=6, length=90)
    model = build_model(preset, task.vocab_size, seed=0).eval()
    batch = task.generate(3, 0)
    whole = predict(model, batch, chunk_len=None)
    assert torch.equal(predict(model, batch, chunk_len=32), whole)  # chunks with and without answers
    assert int((whole >= 0).sum()) == batch.num_answer_tokens


def test_evaluate_rows_and_attention_limit():
    task = get_task("induction_heads", length=64)
    model = build_model("mamba2-tiny", task.vocab_size, {"n_layer": 1}, seed=0)
    rows = evaluate(model, task, [16, 300], num_examples=5, batch_size=2, chunk_len=128)
    assert [r["length"] for r in rows] == [16, 300]
    assert all(r["examples"] == 5 and r["tokens"] == 5 and 0 <= r["token_accuracy"] <= 1 for r in rows)
    hybrid = build_model("mamba2-tiny", task.vocab_size, {"n_layer": 2, "layer_pattern": "M*",
                                                          "attention": {"n_heads": 4}}, seed=0)
    rows = evaluate(hybrid, task, [16, 300], num_examples=2, max_attention_length=100)
    assert "skipped" not in rows[0] and "skipped" in rows[1]


def test_overrides_and_bad_models():
    assert parse_overrides(["mamba2.d_state=32", "ssm_layer=s4d", "n_layer=3"]) == \
        {"mamba2": {"d_state": 32}, "ssm_layer": "s4d", "n_layer": 3}
    model = build_model("mamba2-tiny", 16, parse_overrides(["mamba2.d_state=8"]))
    assert model.config.mamba2.d_state == 8 and model.config.mamba2.headdim == 16  # the rest kept
    assert model.config.vocab_size == 16
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_overrides(["d_state"])
    with pytest.raises(ValueError, match="neither a preset"):
        build_model("no-such-model", 16)


def test_task_train_then_eval_commands(tmp_path, capsys):
    common = ["--task", "mqar", "--param", "vocab_size=32", "--param", "length=32", "--param", "num_pairs=4",
              "--values", "2,4", "--eval-examples", "4"]
    out = tmp_path / "run"
    assert main(["task", "train", "--model", "mamba2-tiny", "--set", "n_layer=1", "--steps", "2",
                 "--out", str(out)] + common) == 0
    res = json.loads((out / "results.json").read_text())
    assert [r["num_pairs"] for r in res["models"][0]["eval"]] == [2, 4]
    assert res["models"][0]["train"]["history"]["step"] == [1, 2]
    assert (out / "model" / "config.json").exists()
    out2 = tmp_path / "again"
    assert main(["task", "eval", "--model", str(out / "model"), "--out", str(out2)] + common) == 0
    res2 = json.loads((out2 / "results.json").read_text())
    assert res2["models"][0]["eval"][1]["tokens"] == 16
    assert "| num_pairs |" in capsys.readouterr().out
    assert main(["task", "train", "--task", "mqar", "--model", "mamba2-tiny", "--param", "pairs=3",
                 "--out", str(tmp_path / "bad")]) == 2  # a bad parameter is an error message, not a traceback
    # refused before training (they failed after it, with no results.json): a sweep value the task
    # refuses, and evaluation settings of zero (by argparse, as every command refuses a bad count)
    late = ["task", "train", "--model", "mamba2-tiny", "--out", str(tmp_path / "late")] + common[:-4]
    assert main(late + ["--values", "0", "--eval-examples", "4"]) == 2
    assert "num_pairs" in capsys.readouterr().err
    for flag in ("--eval-examples", "--chunk-len", "--eval-batch-size", "--eval-token-budget",
                 "--eval-max-batch-tokens", "--max-attention-scores", "--steps", "--batch-size"):
        with pytest.raises(SystemExit) as exit_:
            main(late + ["--values", "2", flag, "0"])
        assert exit_.value.code == 2
        assert f"argument {flag}: expected a positive int, got 0" in capsys.readouterr().err
    assert not (tmp_path / "late").exists()


def test_demo_quick(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "demo.json").read_text())
    assert [m["name"] for m in res["models"]] == ["S4D", "Mamba-1", "Mamba-2"]
    assert all([r["length"] for r in m["eval"]] == [16, 32] and m["eval"][0]["examples"] == 8 for m in res["models"])
    printed = capsys.readouterr().out
    assert "| S4D |" in printed and "Mamba-2" in printed
    try:
        import matplotlib  # noqa: F401
    except ModuleNotFoundError:
        return
    assert (tmp_path / "demo.png").stat().st_size > 1000


def test_long_examples_are_fed_in_chunks_and_skip_the_head_without_answers():
    task = get_task("induction_heads", length=300)
    model = build_model("mamba2-tiny", task.vocab_size, {"n_layer": 1}, seed=0).eval()
    seen = []
    model.register_forward_hook(lambda mod, args, out: seen.append((args[0].shape[1], out.shape[1])))
    preds = predict(model, task.generate(2, 0), chunk_len=64)
    assert [s[0] for s in seen] == [64, 64, 64, 64, 44]  # never more than c tokens at once
    assert [s[1] for s in seen] == [1, 1, 1, 1, 44]  # only the chunk holding the answer needs logits
    assert int((preds >= 0).sum()) == 2


def test_several_models_in_one_table_and_token_budget(tmp_path):
    out = tmp_path / "two"
    assert main(["task", "train", "--task", "induction_heads", "--param", "length=16", "--model",
                 "mamba2-tiny,transformer-tiny", "--steps", "1", "--values", "16,64",
                 "--eval-examples", "32", "--eval-token-budget", "640", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert [m["name"] for m in res["models"]] == ["mamba2-tiny", "transformer-tiny"]
    assert [r["examples"] for r in res["models"][0]["eval"]] == [32, 10]  # 640 tokens / 64, at least 8
    assert (out / "model-transformer-tiny" / "config.json").exists()


def test_training_is_deterministic_per_seed():
    from mambakit.tasks.runner import TrainSettings, train
    task = get_task("selective_copying", vocab_size=8, num_tokens=2, length=16)
    runs = []
    for _ in range(2):
        model = build_model("mamba2-tiny", task.vocab_size, {"n_layer": 1}, seed=3)
        runs.append(train(model, task, TrainSettings(steps=3, batch_size=4, seed=3))["history"])
    assert runs[0] == runs[1]
    other = train(build_model("mamba2-tiny", task.vocab_size, {"n_layer": 1}, seed=4), task,
                  TrainSettings(steps=3, batch_size=4, seed=4))["history"]
    assert other["loss"] != runs[0]["loss"]


def test_without_matplotlib_a_clear_message_and_no_plot(tmp_path, monkeypatch, capsys):
    import sys
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    assert main(["demo", "--quick", "--models", "Mamba-2", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "demo.json").exists() and not (tmp_path / "demo.png").exists()
    assert "pip install 'mambakit[plot]'" in capsys.readouterr().err


def test_time_limit_ends_training_and_the_schedule():
    from mambakit.tasks.runner import TrainSettings, lr_factor, train
    task = get_task("selective_copying", vocab_size=8, num_tokens=2, length=16)
    model = build_model("mamba2-tiny", task.vocab_size, {"n_layer": 1}, seed=0)
    out = train(model, task, TrainSettings(steps=100000, batch_size=2, warmup_steps=0, max_seconds=0.3))
    assert out["stopped_by"] == "time" and 2 <= out["steps_done"] < 100000
    assert out["steps_done"] == len(out["history"]["loss"])
    s = TrainSettings(steps=1000, warmup_steps=10, max_seconds=5.0)
    assert lr_factor(20, s, time_fraction=1.0) == pytest.approx(s.min_lr_ratio)  # time used up: the floor
    assert lr_factor(20, s, time_fraction=0.0) == lr_factor(20, s)  # early on, the steps decide
    with pytest.raises(ValueError, match="max_seconds"):
        TrainSettings(max_seconds=0)


def test_worker_processes_make_the_same_batches():
    from mambakit.tasks.runner import TrainSettings, train
    task = get_task("phonebook", num_entries=3)
    runs = []
    for workers in (0, 1):
        model = build_model("mamba2-tiny", task.vocab_size, {"n_layer": 1}, seed=1)
        runs.append(train(model, task, TrainSettings(steps=3, batch_size=2, seed=1), workers=workers)["history"])
    assert runs[0] == runs[1]
    with pytest.raises(ValueError, match="workers"):
        train(model, task, TrainSettings(steps=1), workers=-1)


def test_train_seconds_flag_and_partial_results(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["task", "train", "--task", "induction_heads", "--param", "length=16", "--model",
                 "mamba2-tiny,mamba-tiny", "--set", "n_layer=1", "--steps", "100000", "--train-seconds", "0.2",
                 "--values", "16", "--eval-examples", "8", "--eval-max-batch-tokens", "64", "--out", str(out),
                 "--device", "cpu", "--threads", "1"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert [m["train"]["stopped_by"] for m in res["models"]] == ["time", "time"]
    assert res["models"][0]["train"]["settings"]["max_seconds"] == 0.2
    assert main(["task", "train", "--task", "mqar", "--model", "mamba2-tiny", "--train-seconds", "0", "--out",
                 str(tmp_path / "x")]) == 2
    assert "--train-seconds must be > 0" in capsys.readouterr().err


def test_attention_batches_are_bounded_and_evaluation_stops_in_time():
    task = get_task("induction_heads", length=64)
    tf = build_model("transformer-tiny", task.vocab_size, seed=0)
    # 4 heads x 128 x 128 scores per example: a budget of 3 examples' worth gives batches of 3
    rows = evaluate(tf, task, [128], num_examples=8, batch_size=8, max_attention_scores=3 * 4 * 128 * 128)
    assert rows[0]["per_batch"] == 3 and rows[0]["examples"] == 8
    ssm = build_model("mamba2-tiny", task.vocab_size, {"n_layer": 1}, seed=0)
    assert evaluate(ssm, task, [128], num_examples=8, batch_size=8, max_attention_scores=1)[0]["per_batch"] == 8
    rows = evaluate(ssm, task, [64, 128], num_examples=64, batch_size=4, max_seconds=1e-9)
    assert rows[0]["examples"] == 8 and "time slot" in rows[1]["skipped"]  # 8 examples, then out of time


def test_phonebook_evaluation_counts_every_question():
    task = get_task("phonebook", num_entries=6, num_examples=3, min_entries=4)
    model = build_model("mamba2-tiny", task.vocab_size, {"n_layer": 1}, seed=0)
    row = evaluate(model, task, [5], num_examples=3)[0]
    assert row["num_entries"] == 5 and row["examples"] == 12 and row["tokens"] == 120


@pytest.mark.parametrize("name,params,other,value", [("induction_heads", {"length": 64}, 64, 96),
                                                     ("phonebook", {}, 10, 20)])
def test_evaluation_examples_depend_on_the_value_not_the_batch_or_its_place(name, params, other, value, monkeypatch):
    """A point's examples were drawn per batch and seeded by the value's index in the list: a run with
    another batch size (an attention model's, in the same run) or another list scored other examples."""
    task = get_task(name, **params)
    model = build_model("mamba2-tiny", task.vocab_size, {"n_layer": 1}, seed=0).eval()
    seen = []
    real = predict

    def spy(m, batch, chunk_len):
        seen.append(batch.input_ids[:, :int(max(batch.meta.get("lengths", [batch.input_ids.shape[1]])))].clone())
        return real(m, batch, chunk_len)

    import mambakit.tasks.runner as runner
    monkeypatch.setattr(runner, "predict", spy)
    runs = []
    for values, batch_size in (([value], 12), ([other, value], 5)):
        seen.clear()
        rows = evaluate(model, task, values, num_examples=12, batch_size=batch_size)
        mine = [r for r in rows if r[task.sweep_param] == value][0]
        mine_batches = seen[-(-(-12 // batch_size)):]  # the value's batches: the last ceil(12 / batch_size)
        width = max(t.shape[1] for t in mine_batches)
        last = [torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in mine_batches]
        runs.append((torch.cat(last), {k: mine[k] for k in mine if k not in ("seconds", "per_batch")}))
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]


def test_mqar_parameters_are_checked_and_python_constants_read():
    assert parse_overrides(["random_non_queries=False", "x=None", "y=True"]) == {
        "random_non_queries": False, "x": None, "y": True}
    with pytest.raises(ValueError, match="random_non_queries must be true or false, got 'maybe'"):
        get_task("mqar", random_non_queries="maybe")
    for bad in ("abc", None, True):
        with pytest.raises(ValueError, match="power_a must be a number in"):
            get_task("mqar", power_a=bad)


def test_bad_device_and_attention_length_are_messages(tmp_path, capsys):
    base = ["task", "train", "--task", "mqar", "--model", "mamba2-tiny", "--steps", "1", "--out", str(tmp_path / "x")]
    with pytest.raises(SystemExit) as exit_:
        main(base + ["--max-attention-length", "-5"])
    assert exit_.value.code == 2
    assert "argument --max-attention-length: expected a positive int, got -5" in capsys.readouterr().err
    assert main(base + ["--device", "gpu"]) == 2
    assert "device 'gpu'" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(base + ["--device", "cuda"]) == 2
        assert "use device='cpu'" in capsys.readouterr().err  # (why: no GPU, or a CPU-only build)
    assert not (tmp_path / "x").exists()


def test_the_schedule_is_mambakit_trains():
    # task train and the demo warm up and decay as `mambakit train` does: the warm-up's last step at
    # the peak, the run's last step at the floor (the runner's own formula peaked a step late, and
    # with warmup_steps == steps never reached the peak)
    from mambakit.tasks.runner import TrainSettings, lr_factor
    from mambakit.train.optim import WarmupCosine
    s = TrainSettings(steps=20, warmup_steps=4)
    got = [lr_factor(i, s) for i in range(20)]
    assert got == [WarmupCosine(4, 20, s.min_lr_ratio)(i) for i in range(20)]
    assert got[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0]) and got[-1] == pytest.approx(s.min_lr_ratio)
    assert lr_factor(4, TrainSettings(steps=5, warmup_steps=5)) == pytest.approx(1.0)
