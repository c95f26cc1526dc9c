"""The task generators: deterministic per seed, and each example says what the task says."""
import numpy as np
import pytest
import torch

from mambakit.tasks import IGNORE_INDEX, TASKS, get_task
from mambakit.tasks.phonebook import decode

SMALL = {
    "selective_copying": dict(vocab_size=10, num_tokens=5, length=40),
    "induction_heads": dict(vocab_size=16, length=50),
    "mqar": dict(vocab_size=64, length=64, num_pairs=8),
    "phonebook": dict(num_entries=6),
}


@pytest.mark.parametrize("name", list(TASKS))
def test_same_seed_same_batch_other_seed_other_batch(name):
    task = get_task(name, **SMALL[name])
    a, b, c = task.generate(8, 3), task.generate(8, 3), task.generate(8, 4)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.input_ids, c.input_ids)
    assert a.input_ids.dtype == torch.long and a.input_ids.shape == a.targets.shape
    assert int(a.input_ids.max()) < task.vocab_size and int(a.input_ids.min()) >= 0
    assert a.num_answer_tokens > 0
    # training and evaluation streams are different generators
    assert not torch.equal(task.generate(8, (3, 0, 0)).input_ids, task.generate(8, (3, 1, 0)).input_ids)


def test_selective_copying_answer_is_the_data_in_order():
    task = get_task("selective_copying", **SMALL["selective_copying"])
    batch = task.generate(16, 0)
    m, l = task.num_tokens, task.length
    for ids, tgt in zip(batch.input_ids, batch.targets):
        content = ids[: l - m]
        data = content[content != task.noise_token]
        assert data.numel() == m  # data ids are never the noise id
        assert bool((ids[l - m:] == task.marker_token).all())
        assert torch.equal(tgt[l - m:], data)
        assert bool((tgt[: l - m] == IGNORE_INDEX).all())
        assert bool(((data >= 1) & (data <= task.vocab_size - 2)).all())


def test_induction_answer_follows_the_first_special_token():
    task = get_task("induction_heads", **SMALL["induction_heads"])
    batch = task.generate(32, 1)
    for ids, tgt in zip(batch.input_ids, batch.targets):
        where = (ids == task.special_token).nonzero().flatten().tolist()
        assert len(where) == 2 and where[1] == task.length - 1
        assert int(tgt[-1]) == int(ids[where[0] + 1]) != task.special_token
        assert int((tgt != IGNORE_INDEX).sum()) == 1


def test_mqar_every_key_is_asked_once_and_answered_by_its_value():
    task = get_task("mqar", **SMALL["mqar"])
    batch = task.generate(16, 2)
    q = task.num_pairs
    for ids, tgt in zip(batch.input_ids, batch.targets):
        pairs = dict(zip(ids[0:2 * q:2].tolist(), ids[1:2 * q:2].tolist()))
        assert len(pairs) == q and all(0 < k < task.vocab_size // 2 <= v for k, v in pairs.items())
        asked = (tgt != IGNORE_INDEX).nonzero().flatten()
        assert sorted(ids[asked].tolist()) == sorted(pairs)
        assert all(int(tgt[p]) == pairs[int(ids[p])] for p in asked)
        assert int(asked.min()) >= 2 * q


@pytest.mark.parametrize("variant", ["standard", "reversed"])
def test_phonebook_answer_is_the_query_names_number(variant):
    task = get_task("phonebook", num_entries=8, variant=variant)
    batch = task.generate(6, 5)
    for i in range(6):
        prompt, answer = batch.meta["prompts"][i], batch.meta["answers"][i]
        assert len(answer) == 10 and answer.isdigit()
        query = prompt.rsplit("Q: ", 1)[1].split("?")[0]
        book = dict(line.split(": ") for line in prompt.split("Phonebook:\n")[1].split("Q: ")[0].splitlines())
        assert len(book) == 8 and book[query] == answer
        assert prompt.count("Q: ") == 3  # two few-shot questions and the real one
        assert prompt.startswith(f"Find: {query}\n") == (variant == "reversed")
        # the targets are the answer's digits, each predicted from the bytes before it
        asked = batch.targets[i] != IGNORE_INDEX
        assert decode(batch.targets[i][asked]) == answer
        first = int(asked.nonzero()[0])
        assert decode(batch.input_ids[i][: first + 1]) == prompt
    assert batch.input_ids.shape[1] <= task.sequence_length()


@pytest.mark.parametrize("name, params", [
    ("selective_copying", dict(num_tokens=8, length=15)),
    ("selective_copying", dict(vocab_size=2)),
    ("induction_heads", dict(length=2)),
    ("mqar", dict(num_pairs=20, length=64)),
    ("mqar", dict(vocab_size=16, num_pairs=8)),
    ("phonebook", dict(variant="sideways")),
    ("phonebook", dict(num_entries=2)),
])
def test_bad_parameters_are_value_errors(name, params):
    with pytest.raises(ValueError):
        get_task(name, **params)


def test_unknown_task_or_parameter_is_named():
    with pytest.raises(ValueError, match="selective_copying"):
        get_task("selective_coping")
    with pytest.raises(ValueError, match="num_pairs"):
        get_task("mqar", pairs=4)
    with pytest.raises(ValueError, match="batch_size"):
        get_task("mqar").generate(0, 0)


def test_generation_does_not_touch_global_random_state():
    np.random.seed(0)
    torch.manual_seed(0)
    before = (np.random.rand(), torch.rand(1))
    np.random.seed(0)
    torch.manual_seed(0)
    get_task("mqar", **SMALL["mqar"]).generate(4, 9)
    assert (np.random.rand(), torch.rand(1)) == before
