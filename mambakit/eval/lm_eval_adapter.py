"""lm-evaluation-harness model "mambakit": loglikelihood, loglikelihood_rolling and generate_until.

No shape letters: requests are strings and token lists; loglik.py and generation.py run the model.

Importing this module registers the model with the harness (`pip install lm-eval`). lm-eval 0.4
finds models only in its registry, with no plugin discovery, so the shell command goes through
mambakit, which registers it first and then hands every argument to the harness's own CLI:

    mambakit eval harness --model mambakit --model_args path=CKPT --tasks hellaswag --batch_size 16
    python -m mambakit.eval.lm_eval_adapter --model mambakit --model_args path=CKPT --tasks ...

and from Python, after `import mambakit.eval.lm_eval_adapter`, lm_eval.simple_evaluate(model="mambakit").

model_args: path (a checkpoint folder or a preset name: random weights), tokenizer (default: the
folder's tokenizer.json, else bytes), device (auto), dtype (auto: bf16 on CUDA, fp32 on CPU),
batch_size (continuations or prompts per forward), chunk (tokens per forward when scoring long
texts), prefill_chunk, add_bos_token (false, as the harness's HF model), seed (random presets).

loglikelihood: the harness splits each (context, continuation) into tokens; mambakit's scorer
(loglik.score_requests) prefills each distinct context once into the recurrent cache and scores
its continuations from copies of it. An empty context is replaced by the prefix token: the
tokenizer's EOS, else BOS, else token 0 (the byte tokenizer has neither; byte 0 is NUL).
loglikelihood_rolling: a model without a context limit (any pure SSM) scores the whole document in
one pass through the cache; a model with a limit uses the harness's rolling windows of that limit.
generate_until: prompts of one generation setting are left-padded and decoded together by
mambakit.stream (attention_mask, recurrent cache); decoding stops once every row has produced one
of its `until` strings or EOS, and each output is cut before the first stop string.

A model with a context limit (attention.max_seqlen) gets what lm-eval's Hugging Face model does
instead of an error, with a warning the first time: a loglikelihood request longer than the limit
keeps its last max_length + 1 tokens, (context + continuation)[-(max_length + 1):], i.e. its context
is cut from the left (a continuation longer than the limit by itself is refused: it cannot be
scored whole); a generation prompt keeps its last max_length - max_gen_toks tokens, and
max_gen_toks is clipped to max_length - 1 (the harness's default of 256 exceeds a small limit).
Models without a limit (pure SSMs) are never cut.
"""
from __future__ import annotations

import json
import logging
import sys

import torch
from lm_eval.api.model import TemplateLM
from tqdm import tqdm

from .data import load_model
from .loglik import model_device, score_requests

log = logging.getLogger(__name__)
GEN_KEYS = {"until", "max_gen_toks", "max_new_tokens", "do_sample", "temperature", "top_k", "top_p"}


def _int(name: str, value, default: int) -> int:
    if value is None or (isinstance(value, str) and value.startswith("auto")):
        return default  # "auto" batch sizes: mambakit does not probe memory; use the default
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive int, got {value!r}") from None
    if n < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return n


class MambakitLM(TemplateLM):
    def __init__(self, path=None, model=None, tokenizer=None, device="auto", dtype="auto", batch_size=16,
                 max_batch_size=None, chunk=2048, prefill_chunk=None, add_bos_token=False, seed=0, **unknown):
        super().__init__()
        self._warned: set[str] = set()  # the kinds of cut already warned about (once each)
        if unknown:
            raise ValueError(f"unknown mambakit model_args {sorted(unknown)}; known: path, tokenizer, device, dtype, "
                             "batch_size, chunk, prefill_chunk, add_bos_token, seed")
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            # the harness's CLI asks for cuda:0 unless told otherwise
            log.warning("mambakit: device %s asked for but CUDA is not available; running on the CPU", device)
            device = "cpu"
        spec = model if model is not None else path
        if spec is None:
            raise ValueError("give the model: --model_args path=CHECKPOINT_FOLDER (or a preset name)")
        self.model, self.tok, notes = load_model(spec, tokenizer, device=device, dtype=dtype, seed=int(seed))
        for note in notes:
            log.warning("mambakit: %s", note)
        self._device = model_device(self.model)
        self.batch_size = _int("batch_size", batch_size, 16)
        self.chunk = _int("chunk", chunk, 2048)
        self.prefill_chunk = None if prefill_chunk is None else _int("prefill_chunk", prefill_chunk, 2048)
        self.add_bos_token = bool(add_bos_token)
        self.name = str(spec) if not hasattr(spec, "config") else "LM instance"

    # --- what TemplateLM needs -------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        t = self.tok
        return next((i for i in (t.eos_token_id, t.bos_token_id) if i is not None), 0)

    @property
    def max_length(self) -> int | None:
        return self.model.config.max_seqlen

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        special = self.add_bos_token if add_special_tokens is None else add_special_tokens
        return self.tok.encode(string, add_special_tokens=special)

    def tok_decode(self, tokens) -> str:
        return self.tok.decode(tokens)

    def _warn_once(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning("mambakit: %s (warned once)", message)

    def _fit_request(self, ctx: list[int], cont: list[int]) -> tuple[list[int], list[int]]:
        """(context, continuation) cut from the left to the model's limit, as lm-eval's HF model cuts:
        (ctx + cont)[-(max_length + 1):], the last token being the one no position predicts from."""
        limit = self.max_length
        if limit is None or len(ctx) + len(cont) - 1 <= limit:
            return ctx, cont
        if len(cont) > limit:
            raise ValueError(f"a loglikelihood continuation of {len(cont)} tokens is longer than this model's "
                             f"context limit of {limit} tokens; it cannot be scored whole")
        self._warn_once("loglikelihood", f"a loglikelihood request of {len(ctx)} context + {len(cont)} "
                        f"continuation tokens exceeds the model's context limit of {limit}; the contexts of such "
                        "requests are cut from the left, as lm-eval's Hugging Face model cuts them")
        return ctx[len(ctx) + len(cont) - (limit + 1):], cont

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        bar = tqdm(total=len(requests), desc="mambakit loglikelihood", disable=disable_tqdm)
        scores = score_requests(self.model, [self._fit_request(list(c), list(t)) for _, c, t in requests],
                                batch_size=self.batch_size, chunk=self.chunk, prefill_chunk=self.prefill_chunk,
                                on_done=bar.update)
        bar.close()
        for (key, _, _), score in zip(requests, scores):
            self.cache_hook.add_partial("loglikelihood", key, score)
        return scores

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
        windows, owner = [], []
        for k, req in enumerate(requests):
            tokens = self.tok_encode(req.args[0])
            if not tokens:
                continue
            if self.max_length is None or len(tokens) <= self.max_length:
                parts = [([self.prefix_token_id], tokens)]  # the whole document, conditioned on the prefix
            else:
                parts = [make_disjoint_window(w) for w in get_rolling_token_windows(
                    tokens, self.prefix_token_id, self.max_length, context_len=1)]
            windows += parts
            owner += [k] * len(parts)
        bar = tqdm(total=len(windows), desc="mambakit loglikelihood_rolling", disable=disable_tqdm)
        scores = score_requests(self.model, windows, batch_size=self.batch_size, chunk=self.chunk,
                                prefill_chunk=self.prefill_chunk, on_done=bar.update)
        bar.close()
        out = [0.0] * len(requests)
        for k, (ll, _) in zip(owner, scores):
            out[k] += ll
        for req, ll in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood_rolling", (req.args[0],), ll)
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for k, req in enumerate(requests):
            kwargs = dict(req.args[1]) if len(req.args) > 1 and req.args[1] else {}
            groups.setdefault(json.dumps(kwargs, sort_keys=True, default=str), []).append(k)
        bar = tqdm(total=len(requests), desc="mambakit generate_until", disable=disable_tqdm)
        for key, idx in groups.items():
            settings = self._gen_settings(json.loads(key))
            idx.sort(key=lambda k: -len(requests[k].args[0]))  # similar lengths together: less padding
            for s in range(0, len(idx), self.batch_size):
                part = idx[s:s + self.batch_size]
                for k, text in zip(part, self._generate([requests[k].args[0] for k in part], **settings)):
                    out[k] = text
                    self.cache_hook.add_partial("generate_until", requests[k].args, text)
                bar.update(len(part))
        bar.close()
        return out  # type: ignore[return-value]

    # --- generation --------------------------------------------------------------------------------
    def _gen_settings(self, kwargs: dict) -> dict:
        unknown = set(kwargs) - GEN_KEYS
        if unknown:
            raise ValueError(f"unsupported generation_kwargs {sorted(unknown)}; mambakit takes {sorted(GEN_KEYS)}")
        until = kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        eos = self.tok.eos_token_id
        if eos is not None:
            text = self.tok.decode([eos])
            if text and text not in until:
                until.append(text)
        max_new = int(kwargs.get("max_gen_toks", kwargs.get("max_new_tokens", 256)))
        limit = self.max_length
        if limit is not None and max_new >= limit:
            # lm-eval's HF model asserts here; a small-limit model would fail every generation task
            self._warn_once("max_gen_toks", f"max_gen_toks={max_new} leaves no room for a prompt within the "
                            f"model's context limit of {limit} tokens; generating at most {limit - 1} tokens")
            max_new = limit - 1
        temperature = float(kwargs.get("temperature", 0.0) or 0.0) if kwargs.get("do_sample", False) else 0.0
        if kwargs.get("do_sample") and temperature == 0.0:
            temperature = 1.0
        return {"until": until, "max_new": max_new, "temperature": temperature,
                "top_k": kwargs.get("top_k"), "top_p": kwargs.get("top_p")}

    @torch.inference_mode()
    def _generate(self, contexts: list[str], until: list[str], max_new: int, temperature: float, top_k, top_p):
        import mambakit
        rows = [self.tok_encode(c) or [self.prefix_token_id] for c in contexts]
        room = None if self.max_length is None else self.max_length - max_new  # >= 1: see _gen_settings
        if room is not None and any(len(r) > room for r in rows):
            longest = max(len(r) for r in rows)
            self._warn_once("generate", f"a generation prompt of {longest} tokens + max_gen_toks={max_new} exceeds "
                            f"the model's context limit of {self.max_length}; such prompts keep their last "
                            f"max_length - max_gen_toks tokens, as lm-eval's Hugging Face model keeps them")
            rows = [r[-room:] for r in rows]
        width = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):  # left padding
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = 1
        ids, mask = ids.to(self._device), mask.to(self._device)
        decoders = [self.tok.stream_decoder() for _ in rows]
        texts = [""] * len(rows)
        done = [False] * len(rows)
        generator = torch.Generator(device=self._device).manual_seed(1234) if temperature > 0 else None
        stream = mambakit.stream(self.model, ids, max_new, temperature=temperature, top_k=top_k, top_p=top_p,
                                 eos_token_id=self.tok.eos_token_id, generator=generator, attention_mask=mask,
                                 prefill_chunk=self.prefill_chunk)
        for token in stream:
            for i, t in enumerate(token.tolist()):
                if done[i]:
                    continue
                if t == self.tok.eos_token_id:
                    # the row's end: the decoder may hold back the start of a character (out as U+FFFD,
                    # as decoding the generated tokens at once gives it)
                    texts[i] += decoders[i].flush()
                    done[i] = True
                    continue
                texts[i] += decoders[i].push(t)
                done[i] = any(u in texts[i] for u in until)
            if all(done):
                stream.close()
                break
        # rows that ran to max_gen_toks: what their decoder held back (EOS rows were flushed at the EOS)
        texts = [t if d else t + dec.flush() for t, d, dec in zip(texts, done, decoders)]
        return [_cut(t, until) for t in texts]

    def get_model_info(self) -> dict:
        return {"model": self.name, "num_parameters": self.model.num_parameters(),
                "config": self.model.config.to_dict()}


def _cut(text: str, until: list[str]) -> str:
    for u in until:
        if u:
            text = text.split(u, 1)[0]
    return text


def register() -> None:
    """Put "mambakit" in the harness's model registry (done on import; safe to repeat). The entry
    names this module's class by its import path, so running the file as __main__ and importing it
    both register the same target."""
    from lm_eval.api.registry import model_registry
    if "mambakit" not in model_registry:
        model_registry.register("mambakit", target="mambakit.eval.lm_eval_adapter:MambakitLM")


register()


def main(argv=None) -> int:
    """The harness's command line with the "mambakit" model registered (argv: lm_eval's arguments)."""
    from lm_eval.__main__ import cli_evaluate
    sys.argv = ["lm_eval", *(sys.argv[1:] if argv is None else argv)]
    cli_evaluate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
