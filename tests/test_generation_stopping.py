"""Generation: eos, stop sequences, length limits, and streaming (stream == generate).

Letters: b batch, l prompt length, t new tokens.
"""
import subprocess
import sys

import pytest
import torch

import mambakit
from generation_models import SAMPLING, make_model, model, padded_prompts  # noqa: F401 (model: a fixture)


# --- stopping ----------------------------------------------------------------------------------------------
def _first(seq, value):
    return seq.index(value) if value in seq else None


def _eos_finishing_rows_apart(free, after=0):
    """A token whose first occurrences in the rows of `free` (lists of new tokens) differ, the last one
    after step `after` (or never in some row): rows then stop at different steps."""
    firsts = {}
    for tok in sorted({t for row in free for t in row}):
        steps = [_first(row, tok) for row in free]
        known = [i for i in steps if i is not None]
        if len(set(steps)) == len(steps) and (None in steps or max(known) > after):
            firsts[tok] = steps
    assert firsts, "no token stops these rows at different steps: change the seed"
    return min(firsts.items(), key=lambda kv: min(i for i in kv[1] if i is not None))


def test_eos_finishes_rows_and_pads_them():
    model = make_model("mamba2")
    torch.manual_seed(3)
    ids, mask, _ = padded_prompts([3, 6])
    free = mambakit.generate(model, ids, 12, attention_mask=mask)[:, 6:].tolist()
    eos, steps = _eos_finishing_rows_apart(free)
    out = mambakit.generate(model, ids, 12, attention_mask=mask, eos_token_id=[eos, 255], pad_token_id=7)
    new = out[:, 6:].tolist()
    padded_rows = 0
    for row, ref in zip(new, free):
        stop = min(i for i in (_first(ref, eos), _first(ref, 255), len(ref) - 1) if i is not None)
        assert row[:stop + 1] == ref[:stop + 1]
        assert row[stop + 1:] == [7] * (len(row) - stop - 1)
        padded_rows += len(row) - stop - 1 > 0
    assert padded_rows >= 1  # at least one row stopped early and was padded while another went on
    # one row: generation ends at its eos
    row = 0 if steps[0] is not None else 1
    single = mambakit.generate(model, ids[row:row + 1, 6 - (3, 6)[row]:], 12, eos_token_id=eos)
    assert single.shape[1] == (3, 6)[row] + steps[row] + 1 and single[0, -1] == eos


def test_generate_stops_where_every_row_stopped_despite_lazy_checks():
    """generate checks for "all rows stopped" on the host only every few steps; its output still
    ends at the step where the last row stopped, as stream (checked every step) does."""
    from mambakit.generation import _STOP_CHECK_EVERY
    model = make_model("mamba2")
    torch.manual_seed(4)
    ids, mask, _ = padded_prompts([3, 6])
    n = 3 * _STOP_CHECK_EVERY
    free = mambakit.generate(model, ids, n, attention_mask=mask)[:, 6:].tolist()
    both = [t for t in set(free[0]) & set(free[1])
            if max(_first(free[0], t), _first(free[1], t)) > _STOP_CHECK_EVERY
            and _first(free[0], t) != _first(free[1], t)]
    assert both, "no token both rows reach late and apart: change the seed"
    eos = both[0]
    last = max(_first(free[0], eos), _first(free[1], eos))
    out = mambakit.generate(model, ids, n, attention_mask=mask, eos_token_id=eos)
    streamed = torch.stack(list(mambakit.stream(model, ids, n, attention_mask=mask, eos_token_id=eos)), 1)
    assert torch.equal(out[:, 6:], streamed)
    assert out.shape[1] == 6 + last + 1 < 6 + n  # trimmed to the step where the last row stopped


def test_stop_sequences_finish_rows():
    model = make_model("mamba2")
    torch.manual_seed(5)
    ids = torch.randint(0, 256, (1, 5))
    free = mambakit.generate(model, ids, 24)[0, 5:].tolist()
    # A stop whose last token came earlier after another token: only the whole sequence may stop.
    j = next((j for j in range(2, len(free))
              if any(free[i] == free[j] and free[i - 1] != free[j - 1] for i in range(1, j))), None)
    assert j is not None, "no stop whose last token came earlier after another token: change the seed"
    stop = free[j - 1:j + 1]
    out = mambakit.generate(model, ids, 24, stop_sequences=[stop, [255, 255, 255]])[0, 5:].tolist()
    end = next(i for i in range(1, len(free)) if free[i - 1:i + 1] == stop)
    assert end == j and out == free[:end + 1]


def test_eos_ids_may_be_any_iterable():
    model = make_model("mamba2")
    ids = torch.zeros(1, 3, dtype=torch.long)
    want = mambakit.generate(model, ids, 4, eos_token_id=[2, 3])
    for eos in ({2, 3}, range(2, 4), (2, 3)):
        assert torch.equal(mambakit.generate(model, ids, 4, eos_token_id=eos), want)


@pytest.mark.parametrize("eos,match", [(256, r"\[0, 256\), got 256"), (-1, "got -1"), ([3, 1.5], "1.5"),
                                       (True, "bool"), ([[3, 4]], r"\[3, 4\]"), (torch.tensor([[3]]), "1-d"),
                                       (torch.tensor([2.0]), "integers")])
def test_bad_eos_token_id_is_named(eos, match):
    model = make_model("mamba2")
    with pytest.raises(ValueError, match="eos_token_id"):
        mambakit.generate(model, torch.zeros(1, 3, dtype=torch.long), 2, eos_token_id=eos)
    with pytest.raises(ValueError, match=match):
        mambakit.generate(model, torch.zeros(1, 3, dtype=torch.long), 2, eos_token_id=eos)


@pytest.mark.parametrize("stops,match", [([5, 6], "flat list"), (torch.tensor([5, 6]), "2-d"),
                                         ("ab", "token-id lists"),
                                         (list(torch.tensor([5, 6])), "flat list")])  # 0-d tensors: ids
def test_stop_sequences_must_be_lists_of_lists(stops, match):
    model = make_model("mamba2")
    with pytest.raises(ValueError, match=match):
        mambakit.generate(model, torch.zeros(1, 3, dtype=torch.long), 2, stop_sequences=stops)
    # a 2-d tensor or numpy array: one sequence a row; numpy integers are ids like Python's
    import numpy as np
    for seqs in (torch.tensor([[5, 6], [7, 8]]), np.array([[5, 6], [7, 8]])):
        assert mambakit.generate(model, torch.zeros(1, 3, dtype=torch.long), 2, stop_sequences=seqs,
                                 eos_token_id=np.int64(9)).shape[0] == 1


def test_max_length_caps_prompt_plus_new_tokens():
    model = make_model("mamba2")
    ids = torch.randint(0, 256, (1, 5))
    assert mambakit.generate(model, ids, 20, max_length=8).shape == (1, 8)
    with pytest.raises(ValueError, match="max_length"):
        mambakit.generate(model, ids, 2, max_length=4)


def test_a_models_context_limit_is_checked_before_any_work(monkeypatch):
    model = make_model("hybrid", max_seqlen=16)
    monkeypatch.setattr(model, "allocate_cache", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(ValueError, match="limit of 16"):
        mambakit.generate(model, torch.randint(0, 256, (1, 10)), 7)
    with pytest.raises(ValueError, match="limit of 16"):
        mambakit.stream(model, torch.randint(0, 256, (1, 17)), 0)
    monkeypatch.undo()
    assert mambakit.generate(model, torch.randint(0, 256, (1, 10)), 6).shape == (1, 16)


# --- streaming -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stopping", ["eos", "stop_sequence"])
def test_stream_yields_what_generate_returns(model, stopping):
    ids, mask, _ = padded_prompts([2, 7])
    kw = dict(attention_mask=mask, **SAMPLING)

    def both(**more):
        whole = mambakit.generate(model, ids, 8, generator=torch.Generator().manual_seed(5), **kw, **more)
        pieces = list(mambakit.stream(model, ids, 8, generator=torch.Generator().manual_seed(5), **kw, **more))
        assert all(p.shape == (2,) for p in pieces)
        return whole[:, 7:], torch.stack(pieces, 1)

    free, streamed = both()
    assert torch.equal(streamed, free)
    row0 = free[0].tolist()  # row 0 stops at step 2, with the same draws as before it
    more = dict(eos_token_id=row0[2]) if stopping == "eos" else dict(stop_sequences=[row0[1:3]])
    whole, streamed = both(**more, pad_token_id=3)
    assert torch.equal(streamed, whole)
    assert whole[0, :3].tolist() == row0[:3] and set(whole[0, 3:].tolist()) <= {3}


def test_stream_checks_its_arguments_when_called():
    model = make_model("mamba2")
    with pytest.raises(ValueError, match="max_new_tokens"):
        mambakit.stream(model, torch.zeros(1, 3, dtype=torch.long), -1)  # no next() needed


def test_stream_steps_alone_run_in_inference_mode():
    model = make_model("mamba2")
    stream = mambakit.stream(model, torch.zeros(1, 3, dtype=torch.long), 3)
    modes = []
    for _ in stream:  # the caller's code between tokens keeps its own grad mode
        modes.append(torch.is_inference_mode_enabled())
    assert modes == [False, False, False]


def test_a_stream_left_unfinished_at_exit_says_nothing():
    # @torch.inference_mode() on the generator printed "Exception ignored in: <generator ...>" here
    code = ("import torch, mambakit\n"
            "m = mambakit.LM(mambakit.ModelConfig.from_preset('mamba2-tiny'))\n"
            "s = mambakit.stream(m, torch.tensor([[1, 2, 3]]), max_new_tokens=5)\n"
            "print(next(s).shape)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "torch.Size([1])"
    assert "Exception ignored" not in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_stop_sequences_match_the_new_tokens_only():
    """A stop sequence that would begin in the prompt does not stop a row (documented): only what the
    row produces counts, as eos does."""
    model = make_model("mamba2")
    prompt = torch.tensor([[3, 1, 4, 1, 5]])
    free = mambakit.generate(model, prompt, 6)[0, 5:].tolist()
    got = mambakit.generate(model, prompt, 6, stop_sequences=[[5, free[0]]])[0, 5:].tolist()
    assert got == free  # 5 is the prompt's last token: no stop
    first_two = mambakit.generate(model, prompt, 6, stop_sequences=[free[:2]])[0, 5:].tolist()
    assert first_two[:2] == free[:2] and len(first_two) == 2  # within the new tokens: a stop
