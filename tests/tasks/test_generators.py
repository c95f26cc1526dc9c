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
        # the last question's digits are the last answer group, each predicted from the bytes before it
        last = batch.groups[i] == 2
        assert decode(batch.targets[i][last]) == answer
        first = int(last.nonzero()[0])
        assert decode(batch.input_ids[i][: first + 1]) == prompt
    assert batch.input_ids.shape[1] <= task.sequence_length()


@pytest.mark.parametrize("score_examples", [True, False])
def test_phonebook_loss_mask_is_every_answer_digit_and_nothing_else(score_examples):
    task = get_task("phonebook", num_entries=7, num_examples=3, score_examples=score_examples, min_entries=4)
    batch = task.generate(5, 1)
    for i in range(5):
        text = decode(batch.input_ids[i])
        book = dict(line.split(": ") for line in text.split("Phonebook:\n")[1].split("Q: ")[0].splitlines())
        asked = [q.split("? A: ") for q in text.split("\n") if q.startswith("Q: ")]
        assert len(asked) == 4 and all(book[name[3:]] == number for name, number in asked)
        scored = asked if score_examples else asked[-1:]
        # the mask, built independently: the byte before each scored number and its first 9 digits
        want = torch.full_like(batch.targets[i], IGNORE_INDEX)
        want_groups = torch.full_like(batch.targets[i], -1)
        at = 0
        for j, (name, number) in enumerate(asked):
            at = text.index(f"{name}? A: {number}\n", at) + len(f"{name}? A: ")
            if score_examples or j == len(asked) - 1:
                want[at - 1: at + 9] = torch.tensor([ord(c) for c in number])
                want_groups[at - 1: at + 9] = j if score_examples else 0
        assert torch.equal(batch.targets[i], want) and torch.equal(batch.groups[i], want_groups)
        # teacher forcing: the target at t is the input at t + 1
        pos = (batch.targets[i] != IGNORE_INDEX).nonzero().flatten()
        assert torch.equal(batch.targets[i][pos], batch.input_ids[i][pos + 1])
        assert int((batch.targets[i] != IGNORE_INDEX).sum()) == 10 * len(scored)


def test_phonebook_and_mqar_size_ranges_for_training_exact_sizes_at_evaluation():
    pb = get_task("phonebook", num_entries=9, min_entries=3)
    sizes = {p.split("Phonebook:\n")[1].split("Q: ")[0].count("\n") for p in pb.generate(40, 0).meta["prompts"]}
    assert min(sizes) >= 3 and max(sizes) <= 9 and len(sizes) >= 4
    point = pb.at(20)
    assert (point.num_entries, point.min_entries) == (20, None)
    prompts = point.generate(4, 0).meta["prompts"]
    assert all(p.split("Phonebook:\n")[1].split("Q: ")[0].count("\n") == 20 for p in prompts)
    mq = get_task("mqar", vocab_size=64, length=64, num_pairs=8, min_pairs=2)
    batch = mq.generate(32, 0)
    counts = (batch.targets != IGNORE_INDEX).sum(1)
    assert int(counts.min()) >= 2 and int(counts.max()) <= 8 and len(set(counts.tolist())) >= 4
    for ids, tgt, n in zip(batch.input_ids, batch.targets, counts.tolist()):
        pairs = dict(zip(ids[0:2 * n:2].tolist(), ids[1:2 * n:2].tolist()))
        asked = (tgt != IGNORE_INDEX).nonzero().flatten()
        assert sorted(ids[asked].tolist()) == sorted(pairs) and all(int(tgt[p]) == pairs[int(ids[p])] for p in asked)
    one = get_task("phonebook", num_entries=1).generate(2, 0)  # one entry: one question, a copy
    assert one.meta["prompts"][0].count("Q: ") == 1 and int((one.targets[0] != IGNORE_INDEX).sum()) == 10
    assert (mq.at(4).num_pairs, mq.at(4).min_pairs) == (4, None)
    assert bool(((mq.at(4).generate(8, 0).targets != IGNORE_INDEX).sum(1) == 4).all())


def test_golden_examples():
    """Fixed seeds give these exact examples on every machine (numpy PCG64 through SeedSequence).
    The seed (0,) is the one the int 0 meant until int seeds got a stream of their own."""
    b = get_task("mqar", vocab_size=16, length=16, num_pairs=3).generate(1, (0,))
    assert b.input_ids[0].tolist() == [4, 12, 3, 14, 2, 9, 3, 10, 4, 9, 2, 6, 7, 15, 12, 15]
    X = IGNORE_INDEX
    assert b.targets[0].tolist() == [X] * 6 + [14, X, 12, X, 9] + [X] * 5
    b = get_task("phonebook", num_entries=3, num_examples=1, digits=4).generate(1, (0,))
    assert decode(b.input_ids[0]) == ("Phonebook:\nPiheba Fupu: 4001\nPuroni Huraku: 0656\nBorufa Bidemi: 2673\n"
                                      "Q: Piheba Fupu? A: 4001\nQ: Borufa Bidemi? A: 2673\n")
    assert decode(b.targets[0][b.targets[0] != X]) == "40012673"
    b = get_task("selective_copying", vocab_size=6, num_tokens=2, length=8).generate(1, (0,))
    assert b.input_ids[0].tolist() == [0, 4, 3, 0, 0, 0, 5, 5] and b.targets[0].tolist() == [X] * 6 + [4, 3]
    b = get_task("induction_heads", vocab_size=6, length=8).generate(1, (0,))
    assert b.input_ids[0].tolist() == [4, 5, 2, 1, 1, 0, 0, 5] and b.targets[0].tolist() == [X] * 7 + [2]
    b = get_task("induction_heads", vocab_size=6, length=8).generate(1, 0)
    assert b.input_ids[0].tolist() == [5, 0, 3, 3, 3, 1, 3, 5] and b.targets[0].tolist() == [X] * 7 + [0]


@pytest.mark.parametrize("name", list(TASKS))
def test_an_int_seed_is_no_tuple_seed(name):
    # SeedSequence pads its entropy with zeros: the int s was the tuple (s,), hence (s, 0, 0), the
    # runner's first training batch of seed s (and task.generate(b, s) gave exactly it)
    task = get_task(name, **SMALL[name])
    for s in (0, 3, 2**40):
        ints = task.generate(8, s).input_ids
        assert torch.equal(ints, task.generate(8, np.int64(s)).input_ids)
        for other in ((s,), (s, 0), (s, 0, 0), (s, 0, 0, 0)):
            assert not torch.equal(ints, task.generate(8, other).input_ids), (s, other)
    with pytest.raises(ValueError, match="non-negative"):
        task.generate(8, -1)


@pytest.mark.parametrize("name, params", [
    ("selective_copying", dict(num_tokens=8, length=15)),
    ("selective_copying", dict(vocab_size=2)),
    ("induction_heads", dict(length=2)),
    ("mqar", dict(num_pairs=20, length=64)),
    ("mqar", dict(vocab_size=16, num_pairs=8)),
    ("phonebook", dict(variant="sideways")),
    ("phonebook", dict(num_entries=0)),
    ("phonebook", dict(num_entries=5, min_entries=6)),
    ("phonebook", dict(min_entries=0)),
    ("mqar", dict(num_pairs=8, min_pairs=9)),
    ("mqar", dict(min_pairs=0)),
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
