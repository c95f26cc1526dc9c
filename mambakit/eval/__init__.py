"""Evaluation: perplexity, multiple choice (the 8B study's MMLU formats), needle in a haystack,
and an lm-evaluation-harness adapter.

No shape letters: see the modules (loglik.py runs the model).

    perplexity.perplexity(model, tokenizer, documents, context=None, stride=None), also
        evaluate_perplexity here (the package's `perplexity` is the module, not the function)
    choice.evaluate_choice(model, tokenizer, questions, fmt="standard", dev=None, shots=0)
    needle.evaluate_needle(model, tokenizer, lengths, depths, num_examples, template="ruler")
    loglik.score_requests(model, [(context ids, continuation ids)]) -> [(log-likelihood, is_greedy)]
    lm_eval_adapter.MambakitLM: the harness model "mambakit" (needs `pip install lm-eval`; not
        imported here, so the rest works without it)

The command line is `mambakit eval perplexity|choice|needle|harness` (docs/evaluation.md).
"""
from .choice import FORMATS, build_prompt, evaluate_choice
from .data import Question, load_documents, load_model, load_questions, read_jsonl
from .loglik import encode_pair, score_requests, score_texts
from .needle import evaluate_needle, make_example, plot_heatmaps
# Not `import perplexity`: a function bound to that name would hide the module of the same name
# (`import mambakit.eval.perplexity as m` gave the function, and m.token_bytes failed).
from .perplexity import hf_windows, perplexity as evaluate_perplexity

__all__ = ["FORMATS", "build_prompt", "evaluate_choice", "Question", "load_documents", "load_model",
           "load_questions", "read_jsonl", "encode_pair", "score_requests", "score_texts", "evaluate_needle",
           "make_example", "plot_heatmaps", "hf_windows", "evaluate_perplexity"]
