"""The papers' synthetic tasks: seeded generators and exact scorers, and a small runner.

No shape letters here beyond those of the modules (b batch, l length, v vocabulary).

    from mambakit.tasks import get_task
    task = get_task("selective_copying", length=256, num_tokens=8)
    batch = task.generate(batch_size=32, seed=0)    # input_ids, targets (b, l)

Tasks: selective_copying, induction_heads, mqar, phonebook. `get_task(name, **params)` checks
the parameters and says which exist. runner.py trains and evaluates a model on a task.
"""
from __future__ import annotations

import dataclasses
import difflib

from .base import IGNORE_INDEX, Task, TaskBatch
from .induction_heads import InductionHeads
from .mqar import MQAR
from .phonebook import Phonebook
from .scoring import Score, score_answer, score_logits, score_predictions
from .selective_copying import SelectiveCopying

TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (SelectiveCopying, InductionHeads, MQAR, Phonebook)}


def get_task(name: str, **params) -> Task:
    """A task by name with its parameters (the others at their defaults)."""
    if name not in TASKS:
        near = difflib.get_close_matches(str(name), list(TASKS), n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ValueError(f"unknown task {name!r}{hint} (known: {', '.join(TASKS)})")
    cls = TASKS[name]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in params:
        if key not in fields:
            raise ValueError(f"task {name} has no parameter {key!r} (it has: {', '.join(fields)})")
    return cls(**params)


def task_parameters(name: str) -> dict:
    """name -> {parameter: default} of a task."""
    return {f.name: f.default for f in dataclasses.fields(TASKS[name])}


__all__ = ["TASKS", "get_task", "task_parameters", "Task", "TaskBatch", "IGNORE_INDEX", "Score",
           "score_predictions", "score_logits", "score_answer", "SelectiveCopying", "InductionHeads", "MQAR",
           "Phonebook"]
