"""Tokenizers: a byte-level default that needs no files, and a wrapper for Hugging Face `tokenizers`
(tokenizer.json) files.

Letters: b batch, l length (longest prompt of a batch).

Both share one interface: encode(text) -> ids, decode(ids) -> text, batch_encode(texts) ->
(input_ids (b, l), attention_mask (b, l)) left-padded for generate, and stream_decoder() for
printing tokens as they come without splitting a character (a UTF-8 sequence or a BPE merge that
spans several tokens).
"""
from __future__ import annotations

import copy
import json
import operator
from collections.abc import Iterable
from pathlib import Path

import torch

# Names under which tokenizer.json files commonly hold their end-of-text token, when no
# tokenizer_config.json says which it is (GPT-NeoX / GPT-2, Llama 3, Llama 2, Gemma).
_EOS_GUESSES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>")


def as_token_ids(ids, what: str = "token ids") -> list[int]:
    """An id, an iterable of ids (list, tuple, range, ...), or an integer tensor (flattened) or numpy
    array -> a list of Python ints. Floats, bools, strings, None and nested lists are a ValueError
    naming what was given."""
    if isinstance(ids, torch.Tensor):
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise ValueError(f"{what} must be integers, got a tensor of {ids.dtype}")
        return ids.flatten().tolist()
    if hasattr(ids, "tolist") and hasattr(ids, "dtype"):  # numpy arrays and scalars
        ids = ids.tolist()
    if ids is None or isinstance(ids, (str, bytes, float, dict)):
        raise ValueError(f"{what} must be an int, a list of ints or an integer tensor, got {type(ids).__name__}")
    out = []
    for i in ids if isinstance(ids, Iterable) else [ids]:  # lists, tuples, ranges, sets, generators
        if isinstance(i, bool):
            raise ValueError(f"{what} must be ints, got the bool {i!r}")
        try:
            out.append(operator.index(i))
        except TypeError:
            raise ValueError(f"{what} must be ints, got {i!r} ({type(i).__name__})") from None
    return out


class Tokenizer:
    """Shared helpers; subclasses define encode, decode, vocab_size and the special token ids."""

    vocab_size: int
    eos_token_id: int | None = None
    bos_token_id: int | None = None
    pad_token_id: int | None = None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        raise NotImplementedError

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        raise NotImplementedError

    def batch_encode(self, texts: list[str], padding_side: str = "left", add_special_tokens: bool = True,
                     device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """texts -> input_ids (b, l) long and attention_mask (b, l) long (1 = token, 0 = padding)."""
        if isinstance(texts, Iterable) and not isinstance(texts, str):
            texts = list(texts)  # an iterator is read once
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts) or not texts:
            raise ValueError("batch_encode expects a non-empty list of strings")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        rows = [self.encode(t, add_special_tokens=add_special_tokens) for t in texts]
        if any(not r for r in rows):
            raise ValueError("a text encodes to no token; every prompt needs at least one")
        l = max(len(r) for r in rows)
        pad = next((i for i in (self.pad_token_id, self.eos_token_id) if i is not None), 0)
        ids = torch.full((len(rows), l), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), l), dtype=torch.long)
        for i, r in enumerate(rows):
            span = slice(l - len(r), l) if padding_side == "left" else slice(0, len(r))
            ids[i, span] = torch.tensor(r, dtype=torch.long)
            mask[i, span] = 1
        return ids.to(device), mask.to(device)

    def stream_decoder(self, skip_special_tokens: bool = False, prompt_ids=None) -> "StreamDecoder":
        """A StreamDecoder for the tokens that follow `prompt_ids` (their last tokens give the first
        new token its context: a tokenizer that drops a leading space at the start of a text keeps it)."""
        return StreamDecoder(self, skip_special_tokens, prompt_ids)


class StreamDecoder:
    """Turns tokens arriving one by one into text pieces, holding back an unfinished character.

    Decodes a short window (the tokens since the last emitted piece plus the ones before them,
    for context such as a leading space) and emits what it adds, unless it ends in U+FFFD, the
    mark of an incomplete UTF-8 sequence. flush() emits whatever is left at the end.
    """

    CONTEXT = 5  # prompt tokens kept as context before the first new token
    MAX_PENDING = 8  # tokens held back at most while the text ends in an unfinished character

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False, prompt_ids=None):
        self.tokenizer = tokenizer
        self.skip = skip_special_tokens
        prompt_ids = [] if prompt_ids is None else as_token_ids(prompt_ids, "prompt_ids")
        self.tokens: list[int] = prompt_ids[-self.CONTEXT:]
        self.prefix_offset = 0  # start of the context window
        self.read_offset = len(self.tokens)  # tokens before this are already printed (or the prompt's)

    def _decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip)

    def push(self, ids) -> str:
        """Add token ids (an int, a list or a tensor); return the text they complete ('' if none yet)."""
        self.tokens.extend(as_token_ids(ids))
        before = self._decode(self.tokens[self.prefix_offset:self.read_offset])
        text = self._decode(self.tokens[self.prefix_offset:])
        # An unfinished character waits for its next bytes, but not forever: a UTF-8 character is at most
        # 4 bytes, so after MAX_PENDING tokens the replacement marks go out (and the window stays short).
        pending = len(self.tokens) - self.read_offset
        if len(text) > len(before) and (not text.endswith("\ufffd") or pending >= self.MAX_PENDING):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.tokens)
            return text[len(before):]
        return ""

    def flush(self) -> str:
        """The text still held back (an incomplete character prints as U+FFFD)."""
        before = self._decode(self.tokens[self.prefix_offset:self.read_offset])
        text = self._decode(self.tokens[self.prefix_offset:])
        self.prefix_offset = self.read_offset = len(self.tokens)
        return text[len(before):]


def stream_text(tokenizer: Tokenizer, tokens, prompt_ids=None, stops=(), eos_token_id=None):
    """Text of a stream of new tokens (ints, or tensors of one id), cut at eos and at stop strings.

    eos_token_id: None, an id or a list of ids (any of them ends the text).
    Yields (piece, None, n) while going, then (last piece, finish, n): finish "stop" when eos came
    (not printed) or a stop string appeared (it and what follows are cut), else "length"; n is the
    tokens read so far. A piece is held back while it could still be the start of a stop string, so
    a stop string is never yielded, even one spread over several tokens. The stream is read no
    further than the token that ends the text.
    """
    decoder = tokenizer.stream_decoder(prompt_ids=prompt_ids)
    eos = set() if eos_token_id is None else set(as_token_ids(eos_token_id, "eos_token_id"))
    hold = max((len(s) for s in stops), default=1) - 1  # chars that may start a stop string
    text, sent, n, finish, cut = "", 0, 0, "length", None
    for token in tokens:
        if isinstance(token, torch.Tensor) and token.numel() != 1:
            raise ValueError(f"stream_text: each token must be one id (an int or a tensor of one), got a tensor "
                             f"of shape {tuple(token.shape)}")
        token_id = int(token.reshape(())) if isinstance(token, torch.Tensor) else int(token)
        n += 1
        if token_id in eos:
            finish = "stop"
            break
        start = max(0, len(text) - hold)
        text += decoder.push(token_id)
        cut = _first_stop(text, stops, start)
        if cut is not None:
            break
        if len(text) - hold > sent:
            yield text[sent:len(text) - hold], None, n
            sent = len(text) - hold
    if cut is None:  # the end (eos or the last token): what the decoder held back, then a last look for stops
        start = max(0, len(text) - hold)
        text += decoder.flush()
        cut = _first_stop(text, stops, start)
    if cut is not None:
        text, finish = text[:cut], "stop"
    yield text[sent:], finish, n


def _first_stop(text: str, stops, start: int):
    """Index of the earliest stop string in text[start:] (as an index into text), or None."""
    found = [i for i in (text.find(s, start) for s in stops) if i >= 0]
    return min(found) if found else None


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as tokens: id = byte value, 256 ids, no special tokens, no files.

    Ids outside [0, 256) (a model with a larger vocabulary) decode to U+FFFD.
    """

    vocab_size = 256

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if not isinstance(text, str):
            raise ValueError(f"encode expects a str, got {type(text).__name__}")
        return list(text.encode("utf-8"))

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        ids = as_token_ids(ids)
        out, run = [], bytearray()
        for i in ids:
            if 0 <= i < 256:
                run.append(i)
            else:
                out.append(run.decode("utf-8", errors="replace") + "\ufffd")
                run = bytearray()
        out.append(run.decode("utf-8", errors="replace"))
        return "".join(out)

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=256)"


class HFTokenizer(Tokenizer):
    """A Hugging Face `tokenizers.Tokenizer` (tokenizer.json) behind the interface above."""

    def __init__(self, tokenizer, eos_token: str | None = None, bos_token: str | None = None,
                 pad_token: str | None = None):
        if tokenizer.padding is not None or tokenizer.truncation is not None:
            # a tokenizer.json saved with padding or truncation on (some exports are) would pad every
            # encode to a fixed length and cut long prompts: batch_encode does the padding here
            tokenizer = copy.deepcopy(tokenizer)
            tokenizer.no_padding()
            tokenizer.no_truncation()
        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        if eos_token is None:
            eos_token = next((t for t in _EOS_GUESSES if tokenizer.token_to_id(t) is not None), None)
        self.eos_token_id = self._id(eos_token, "eos_token")
        self.bos_token_id = self._id(bos_token, "bos_token")
        self.pad_token_id = self._id(pad_token, "pad_token")

    def _id(self, token: str | None, what: str) -> int | None:
        if token is None:
            return None
        i = self.tokenizer.token_to_id(token)
        if i is None:
            raise ValueError(f"{what} {token!r} is not in the tokenizer's vocabulary")
        return i

    @classmethod
    def from_file(cls, path) -> "HFTokenizer":
        """path: a tokenizer.json file, or a folder holding one (and maybe tokenizer_config.json,
        whose eos_token / bos_token / pad_token are used)."""
        try:
            from tokenizers import Tokenizer as _HF
        except ImportError as err:  # pragma: no cover - installed with transformers
            raise ImportError("reading tokenizer.json needs the `tokenizers` package: pip install tokenizers") from err
        p = Path(path)
        file = p / "tokenizer.json" if p.is_dir() else p
        if not file.is_file():
            raise FileNotFoundError(f"no tokenizer file at {file}; expected a tokenizer.json "
                                    "(Hugging Face `tokenizers` format) or a folder holding one")
        try:
            tok = _HF.from_file(str(file))
        except Exception as err:  # the Rust side raises its own exception type
            raise ValueError(f"{file}: not a valid tokenizer.json ({err})") from err
        return cls(tok, **_special_tokens(file.parent))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if not isinstance(text, str):
            raise ValueError(f"encode expects a str, got {type(text).__name__}")
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """Text of ids; an id the tokenizer does not have (a model's vocabulary padded past it) is U+FFFD,
        as in ByteTokenizer (the Rust side would drop it, or fail on a huge one)."""
        ids = as_token_ids(ids)
        if any(i < 0 for i in ids):
            raise ValueError(f"token ids must be >= 0, got {min(ids)}")
        if all(i < self.vocab_size for i in ids):
            return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
        out, run = [], []
        for i in ids + [None]:
            if i is not None and i < self.vocab_size:
                run.append(i)
                continue
            if run:
                out.append(self.tokenizer.decode(run, skip_special_tokens=skip_special_tokens))
            if i is not None:
                out.append("\ufffd")
            run = []
        return "".join(out)

    def __repr__(self) -> str:
        return f"HFTokenizer(vocab_size={self.vocab_size}, eos_token_id={self.eos_token_id})"


def _special_tokens(folder: Path) -> dict:
    """eos/bos/pad token strings from tokenizer_config.json or special_tokens_map.json, if present."""
    found = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the latter wins
        f = folder / name
        if not f.is_file():
            continue
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{f}: cannot read it as JSON ({err})") from err
        if not isinstance(data, dict):
            raise ValueError(f"{f}: expected a JSON object (its eos_token, bos_token, pad_token), got "
                             f"{type(data).__name__}")
        for key in ("eos_token", "bos_token", "pad_token"):
            value = data.get(key)
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str):
                found[key] = value
    return found


def check_text(where: str, field: str, value) -> None:
    """ValueError naming where and field if value (a str or a list of them) holds a lone UTF-16
    surrogate: JSON's \\ud83d escape of half a character (an emoji cut in two) reads as a str that
    no UTF-8 encoder takes, so every tokenizer failed on it later, naming no file or line."""
    for text in [value] if isinstance(value, str) else value:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            raise ValueError(f"{where}: field {field!r} holds {text[err.start]!r}, half of a UTF-16 surrogate "
                             "pair (the JSON escape of a cut character, e.g. an emoji split in two): no text that "
                             "UTF-8 can encode; mend or drop the line") from None


def end_of_text_ids(tokenizer: Tokenizer, config) -> list[int]:
    """The ids that end a text: the tokenizer's end-of-text id, then those of the checkpoint's config
    (its eos_token_id may list several, as Llama 3 instruct's end_of_text, eom and eot), each once and
    inside the model's vocabulary. Any of them ends the text, as in transformers."""
    config_eos = config.token_ids.get("eos_token_id")
    config_eos = config_eos if isinstance(config_eos, list) else [] if config_eos is None else [config_eos]
    eos = []
    for i in [tokenizer.eos_token_id, *config_eos]:
        if i is not None and 0 <= i < config.vocab_size and i not in eos:
            eos.append(i)
    return eos


def load_tokenizer(spec=None) -> Tokenizer:
    """None or "byte": the byte tokenizer; a path: a tokenizer.json file or a folder holding one."""
    if spec is None or spec == "byte":
        return ByteTokenizer()
    if isinstance(spec, Tokenizer):
        return spec
    if not isinstance(spec, (str, Path)):
        raise ValueError(f"a tokenizer is None, 'byte', a Tokenizer or a path to tokenizer.json, got {type(spec).__name__}")
    return HFTokenizer.from_file(spec)
