"""Token models: token ids from .npy files or text, the tokenizer, the other inputs such models
take (attention mask, token types, positions), and baselines made in token space.

A token model's attributed input holds integer ids, so IG walks in the space of the embedding
lookup they feed (see cut.py). Its baseline is made in token space, as an image baseline is made
in pixel space: the pad token (or [MASK]) at every position except the special tokens that
frame the sentence ([CLS], [SEP], <s>, </s>), then passed through the embedding.

The tokenizer is a Hugging Face `tokenizer.json` beside the model (`<model>.tokenizer.json`,
else `tokenizer.json`) or given with --tokenizer. Its vocabulary and special tokens are read
as plain JSON, so token ids need nothing more; turning text into ids needs the `tokenizers`
package (`pip install 'igcli[text]'`), which implements every tokenizer.json model exactly
as the model's authors trained it (WordPiece, BPE, Unigram, normalisers, pre-tokenizers).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from igcli.baselines import ArrayBaseline
from igcli.errors import InputError, UsageError
from igcli.files import (
    file_size,
    first_line,
    open_regular,
    parse_json,
    path_stamp,
    read_npy,
    read_text,
    text_lines,
)
from igcli.inputs import RowError
from igcli.model import Feed, TensorSpec, feed_batch_axis

TEXT_SUFFIXES = {".txt", ".jsonl"}
TOKEN_BASELINES = ("pad", "mask", "zero")
MAX_TOKENIZER_BYTES = 64 << 20
MAX_TEXT_BYTES = 256 << 20
_PAD_NAMES = ("[PAD]", "<pad>", "<PAD>", "<|pad|>", "[pad]")
_MASK_NAMES = ("[MASK]", "<mask>", "<MASK>", "[mask]")
_UNK_NAMES = ("[UNK]", "<unk>", "<UNK>", "<|unk|>")


@dataclass
class Vocabulary:
    """What igcli needs to know of a tokenizer: id -> token, and its special tokens."""

    tokens: dict[int, str] = field(default_factory=dict)
    pad_id: int | None = None
    mask_id: int | None = None
    unk_id: int | None = None
    keep_ids: set[int] = field(default_factory=set)  # special tokens a baseline keeps
    path: Path | None = None  # the tokenizer.json; None: no tokenizer (ids only)

    @property
    def size(self) -> int | None:
        return max(self.tokens) + 1 if self.tokens else None

    def token(self, i: int) -> str:
        return self.tokens.get(int(i), f"#{int(i)}")

    def id_of(self, token: str) -> int | None:
        return next((i for i, t in self.tokens.items() if t == token), None)

    @classmethod
    def load(cls, path: Path) -> Vocabulary:
        """Read a tokenizer.json (any model type) without the tokenizers package."""
        with open_regular(path, UsageError) as fh:
            if file_size(fh) > MAX_TOKENIZER_BYTES:
                raise UsageError(f"over {MAX_TOKENIZER_BYTES >> 20} MiB; not a tokenizer", path)
            try:
                data = parse_json(fh.read().decode("utf-8-sig"))
            except (OSError, ValueError) as exc:
                raise UsageError(f"tokenizer is not valid JSON ({first_line(exc)})", path) from None
        model = data.get("model") if isinstance(data, dict) else None
        if not isinstance(model, dict) or "vocab" not in model:
            raise UsageError("not a Hugging Face tokenizer.json (no model.vocab)", path)
        vocab = model["vocab"]
        tokens: dict[int, str] = {}
        try:
            if isinstance(vocab, dict):  # WordLevel, WordPiece, BPE: token -> id
                tokens = {int(i): str(t) for t, i in vocab.items()}
            elif isinstance(vocab, list):  # Unigram: [[piece, score], ...], id = position
                tokens = {i: str(entry[0]) for i, entry in enumerate(vocab)}
            added = data.get("added_tokens") or []
            specials = {}
            for entry in added:
                tokens[int(entry["id"])] = str(entry["content"])
                if entry.get("special"):
                    specials[str(entry["content"])] = int(entry["id"])
        except (TypeError, ValueError, KeyError, IndexError):
            raise UsageError("tokenizer.json has a malformed vocabulary", path) from None
        by_token = {t: i for i, t in tokens.items()}

        def find(names) -> int | None:
            return next((by_token[n] for n in names if n in by_token), None)

        padding = data.get("padding") if isinstance(data.get("padding"), dict) else {}
        pad = padding.get("pad_id") if isinstance(padding.get("pad_id"), int) else None
        pad = pad if pad is not None and padding.get("pad_token") in by_token else find(_PAD_NAMES)
        unk_name = model.get("unk_token")
        unk = by_token.get(unk_name) if isinstance(unk_name, str) else None
        unk = unk if unk is not None else find(_UNK_NAMES)
        mask = find(_MASK_NAMES)
        framing = set(specials.values()) | inserted_ids(data.get("post_processor"), by_token)
        keep = {i for i in framing if i in tokens and i not in (pad, unk, mask)}
        return cls(tokens, pad, mask, unk, keep, path)


def inserted_ids(processor: object, by_token: dict[str, int]) -> set[int]:
    """The ids a tokenizer.json's post_processor puts around the text ([CLS] and [SEP], <s>
    and </s>): they are special even when added_tokens does not flag them, and a baseline
    that replaced them changed F(baseline). Ids outside the vocabulary are the caller's to
    drop; a malformed part is skipped (only text needs the post_processor, and the tokenizers
    package judges it then)."""
    ids: set[int] = set()

    def add(token: object, i: object = None) -> None:
        if isinstance(i, int) and not isinstance(i, bool):
            ids.add(i)
        elif isinstance(token, str) and token in by_token:
            ids.add(by_token[token])

    stack = [processor]  # a stack, not recursion: Sequences may nest deep
    while stack:
        proc = stack.pop()
        if not isinstance(proc, dict):
            continue
        kind = proc.get("type")
        if kind == "Sequence" and isinstance(proc.get("processors"), list):
            stack.extend(proc["processors"])
        elif kind in ("BertProcessing", "RobertaProcessing"):
            for pair in (proc.get("cls"), proc.get("sep")):  # [token, id]
                if isinstance(pair, list) and len(pair) == 2:
                    add(*pair)
        elif kind == "TemplateProcessing":
            table = proc.get("special_tokens")
            table = table if isinstance(table, dict) else {}
            for entry in table.values():  # name -> {"id": name, "ids": [...], "tokens": [...]}
                if not isinstance(entry, dict):
                    continue
                given, names = entry.get("ids"), entry.get("tokens")
                if isinstance(given, list) and given:
                    for i in given:
                        add(None, i)
                elif isinstance(names, list):
                    for token in names:
                        add(token)
            for template in (proc.get("single"), proc.get("pair")):
                for piece in template if isinstance(template, list) else []:
                    special = piece.get("SpecialToken") if isinstance(piece, dict) else None
                    name = special.get("id") if isinstance(special, dict) else None
                    if isinstance(name, str) and name not in table:  # then the vocabulary's
                        add(name)
    return ids


def find_tokenizer(model_path: Path, given: str | Path | None) -> Path | None:
    """--tokenizer, else `<model stem>.tokenizer.json` or `tokenizer.json` beside the model."""
    if given is not None:
        path = Path(given)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise UsageError("no such tokenizer file", path)
        return path
    for name in (model_path.stem + ".tokenizer.json", "tokenizer.json"):
        path = model_path.with_name(name)
        if path.is_file():
            return path
    return None


# -- the other inputs of a token model -----------------------------------------------------------

ROLES = ("attention_mask", "token_type_ids", "position_ids")


def input_role(spec: TensorSpec) -> str | None:
    """What igcli can fill in for an input of a token model, from its name."""
    name = spec.name.lower()
    if "mask" in name:
        return "attention_mask"
    if "type" in name or "segment" in name:
        return "token_type_ids"
    if "position" in name:
        return "position_ids"
    return None


@dataclass
class TokenInputs:
    """A token model's inputs: the ids, and the others igcli derives per sample."""

    ids: TensorSpec
    vocab: Vocabulary
    derived: dict[str, TensorSpec]  # input name -> spec, filled in per sample (see feeds)
    tokenizer_path: Path | None = None
    _tokenizer: object = None

    @property
    def length(self) -> int | None:
        """The fixed sequence length the model declares, if any."""
        dims = self.ids.shape[1:]
        if len(dims) == 1 and isinstance(dims[0], int) and dims[0] > 0:
            return dims[0]
        return None

    def feeds(self, ids: np.ndarray, mask: np.ndarray | None = None, types=None) -> dict:
        """Values of the derived inputs for one sample of ids ([L]), batch axis of 1: the
        attention mask is 1 for real tokens and 0 for padding; token types are 0 (or the
        tokenizer's); positions count from 0."""
        if mask is None:
            pad = self.vocab.pad_id
            mask = (ids != pad).astype(np.int64) if pad is not None else np.ones_like(ids)
        values = {
            "attention_mask": mask,
            "token_type_ids": np.zeros_like(ids) if types is None else types,
            "position_ids": np.arange(ids.shape[-1]),
        }
        out = {}
        for name, spec in self.derived.items():
            axis = feed_batch_axis(spec, self.ids)
            value = np.asarray(values[input_role(spec)]).astype(spec.dtype)
            out[name] = Feed(np.expand_dims(value, axis if axis is not None else 0), axis)
        return out

    def describe(self) -> str:
        source = f"tokenizer {self.tokenizer_path.name}" if self.tokenizer_path else "no tokenizer"
        derived = f"; derives {', '.join(self.derived)}" if self.derived else ""
        return f"token ids ({source}){derived}"

    # -- samples -------------------------------------------------------------------------
    def sample(self, path: Path, name: str, ids: np.ndarray, *, mask=None, types=None,
               text: str | None = None, tokens: list[str] | None = None):  # fmt: skip
        from igcli.inputs import Sample

        ids = np.asarray(ids).astype(self.ids.dtype)
        check_vocabulary(ids, self.vocab.size, path, InputError)
        kept = set(self.vocab.keep_ids)
        if self.vocab.pad_id is not None:
            kept.add(self.vocab.pad_id)
        keep = np.isin(ids, sorted(kept))
        return Sample(
            path, name, "tokens", ids,
            feeds=self.feeds(ids, mask, types),
            tokens=tokens or [self.vocab.token(i) for i in ids],
            special=keep, text=text,
        )  # fmt: skip

    def from_npy(self, path: Path, name: str, error=InputError):
        arr = read_npy(path, error)
        return self.sample(path, name, self.fit_ids(arr, path, error))

    def fit_ids(self, arr: np.ndarray, path: Path, error=InputError) -> np.ndarray:
        """One sequence of ids ([L]) from an array with or without its batch axis of 1."""
        arr = np.asarray(arr)
        if arr.dtype.kind == "f":
            if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
                raise error("token ids must be whole numbers", path)
        elif arr.dtype.kind not in "iu":
            raise error(f"dtype {arr.dtype} is not token ids (integers)", path)
        if arr.size and arr.dtype.kind in "fu":  # 1e20 as int64 was -2**63 (numpy warned)
            big = arr.max() if arr.dtype.kind == "u" else arr.flat[np.argmax(np.abs(arr))]
            if abs(float(big)) >= 2.0**63:
                raise error(f"token id {float(big):g} is too large to be an id", path)
        if arr.ndim == 2 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.ndim != 1:
            raise error(f"shape {list(arr.shape)}: give one sequence of token ids ([L] or "
                        "[1, L])", path)  # fmt: skip
        if arr.size == 0:
            raise error("holds no token ids", path)
        length = self.length
        if length is not None and arr.size != length:
            raise error(f"{arr.size} token ids; the model takes {length}", path)
        return arr.astype(np.int64)

    def tokenizer(self):
        """The `tokenizers` Tokenizer (text inputs only)."""
        if self._tokenizer is not None:
            return self._tokenizer
        if self.tokenizer_path is None:
            raise UsageError(
                "text inputs need the model's tokenizer: put tokenizer.json beside the model "
                "or give --tokenizer FILE"
            )
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise UsageError(
                "text inputs need the tokenizers package: pip install 'igcli[text]'"
            ) from None
        try:
            self._tokenizer = Tokenizer.from_file(str(self.tokenizer_path))
        except Exception as exc:
            raise UsageError(
                f"cannot load tokenizer ({first_line(exc)})", self.tokenizer_path
            ) from None
        return self._tokenizer

    def from_text(self, text: str, path: Path, name: str):
        """Tokenize one text; pad (or refuse) to the model's fixed length."""
        tokenizer = self.tokenizer()
        # A text far too long is refused before tokenizing: tokenizers holds about 120 bytes
        # per character of it (a 10 MB line took 1.3 GB, a 40 MB one 5.2 GB and 65 s)
        limit = self.length or (tokenizer.truncation or {}).get("max_length")
        most = MAX_CHARS_PER_TOKEN * limit if limit else MAX_TEXT_CHARS
        if len(text) > most:
            held = f" ({limit} tokens at most)" if limit else ""
            raise InputError(
                f"the text has {len(text):,} characters, more than this model can take{held}; "
                "shorten it",
                path,
            )
        try:  # a JSON "\ud800" escape decodes to a lone surrogate; tokenizers raise TypeError
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError("the text holds a lone surrogate (\\ud800-\\udfff)", path) from None
        enc = tokenizer.encode(text)
        if enc.overflowing:  # the tokenizer truncates: explaining a part would mislead
            raise InputError(
                f"the text has more tokens than the tokenizer's limit of {len(enc.ids)} (the "
                "rest would be cut off); shorten it",
                path,
            )
        ids = np.asarray(enc.ids, dtype=np.int64)
        mask = np.asarray(enc.attention_mask, dtype=np.int64)
        types = np.asarray(enc.type_ids, dtype=np.int64)
        tokens = list(enc.tokens)
        length = self.length
        if length is not None and ids.size != length:
            if ids.size > length:
                raise InputError(f"{ids.size} tokens; the model takes at most {length}", path)
            if self.vocab.pad_id is None:
                raise InputError(f"{ids.size} tokens, the model takes {length}, and the "
                                 "tokenizer names no pad token", path)  # fmt: skip
            extra = length - ids.size
            pad = self.vocab.pad_id
            ids = np.concatenate([ids, np.full(extra, pad, np.int64)])
            mask = np.concatenate([mask, np.zeros(extra, np.int64)])
            types = np.concatenate([types, np.zeros(extra, np.int64)])
            tokens += [self.vocab.token(pad)] * extra
        if ids.size == 0:
            raise InputError("the text gives no tokens", path)
        return self.sample(path, name, ids, mask=mask, types=types, text=text, tokens=tokens)

    def from_text_file(self, path: Path, name: str) -> list:
        """One sample per line of a .txt file (blank lines skipped), or per JSON Lines record
        (a string, or an object with a "text" field); named `<name>_row<k>`. Strict: the
        first bad line fails the file (iter_text_file reports bad lines one by one)."""
        rows = list(self.iter_text_file(path, name))
        bad = next((r for r in rows if isinstance(r, RowError)), None)
        if bad is not None:
            raise bad.error
        return rows

    def iter_text_file(self, path: Path, name: str):
        """Samples of a text file's lines, a RowError for each line that cannot be
        explained (too many tokens, not JSON, no "text"): the other lines can. What fails
        the whole file (not UTF-8, too large, no text at all) raises."""
        before = path_stamp(path)  # the file as read (see inputs.Sample.stamp): "" where
        texts = read_texts(path)  # it changed during the read, so no record of it resumes
        stamp = path_stamp(path)
        stamp = stamp if stamp == before else ""
        if not texts:
            raise InputError("holds no text to explain", path)
        for k, (number, text) in enumerate(texts):
            row = f"{name}_row{k}"
            if isinstance(text, InputError):
                yield RowError(row, text)
                continue
            try:
                sample = self.from_text(text, path, row)
                sample.stamp = stamp  # (the file as read: see inputs.Sample)
                yield sample
            except InputError as exc:
                yield RowError(row, InputError(f"line {number}: {exc.reason}", path))


MAX_CHARS_PER_TOKEN = 64  # more characters than this per token the model takes: refused
MAX_TEXT_CHARS = 1_000_000  # the same, where neither model nor tokenizer says a length


def read_texts(path: Path) -> list[tuple[int, str | InputError]]:
    """(line number, text) for each non-blank line; for JSON Lines, a line that is not JSON
    or has no "text" string gives its error in place of the text."""
    content = read_text(path, MAX_TEXT_BYTES)
    rows = text_lines(content)
    lines = [(n, line) for n, line in enumerate(rows, start=1) if line.strip()]
    if path.suffix.lower() != ".jsonl":
        return [(n, line.strip()) for n, line in lines]
    texts: list[tuple[int, str | InputError]] = []
    for number, line in lines:
        try:
            value = parse_json(line)
        except ValueError as exc:
            reason = f"line {number} is not JSON ({first_line(exc)})"
            texts.append((number, InputError(reason, path)))
            continue
        if isinstance(value, dict):
            value = value.get("text")
        if not isinstance(value, str):
            texts.append((number, InputError(f'line {number} has no "text" string', path)))
            continue
        if not value.strip():
            texts.append((number, InputError(f"line {number}: the text is empty", path)))
            continue
        texts.append((number, value))
    return texts


def token_inputs(
    model_path: Path,
    ids: TensorSpec,
    inputs: list[TensorSpec],
    fed: set[str],
    tokenizer: str | Path | None,
) -> TokenInputs:
    """The token set-up of a model whose attributed input holds integer ids."""
    path = find_tokenizer(model_path, tokenizer)
    vocab = Vocabulary.load(path) if path is not None else Vocabulary()
    derived = {}
    for spec in inputs:
        if spec.name == ids.name or spec.name in fed:
            continue
        if input_role(spec) and len(spec.shape) == len(ids.shape) and spec.kind == "tensor":
            derived[spec.name] = spec
    return TokenInputs(ids, vocab, derived, path)


def check_vocabulary(ids: np.ndarray, size: int | None, path: object, error=InputError) -> None:
    """Refuse ids outside 0..size-1: the model's Gather wraps a negative id to another
    token (a silently different input) and fails on a large one with ONNX Runtime's words."""
    if size is not None and ids.size and (ids.min() < 0 or ids.max() >= size):
        bad = int(ids.max() if ids.max() >= size else ids.min())
        raise error(f"token id {bad} is outside the vocabulary (0 to {size - 1})", path)


def token_baseline(spec: str | ArrayBaseline, sample, vocab: Vocabulary) -> np.ndarray | None:
    """The baseline's ids for one sample (None: zeros at the attributed tensor).

    `pad` / `mask`: that token at every position except the special tokens that frame the
    text and the padding; `zero`: the zero vector at the embedding; a .npy file: ids."""
    ids = sample.x
    if spec == "zero":
        return None
    if spec in ("pad", "mask"):
        token = vocab.pad_id if spec == "pad" else vocab.mask_id
        if token is None and spec == "pad" and vocab.path is None:
            token = 0  # no tokenizer at all: id 0, the usual pad (the session warns)
        if token is None:
            where = f"tokenizer {vocab.path.name}" if vocab.path else "no tokenizer"
            raise UsageError(
                f"baseline {spec}: {where} names no {spec} token; use another --baseline "
                "(pad, mask, zero) or a .npy file of token ids"
            )
        keep = sample.special if sample.special is not None else np.zeros(ids.shape, bool)
        return np.where(keep, ids, token).astype(ids.dtype)
    if isinstance(spec, ArrayBaseline):
        path, arr = Path("<baseline array>"), spec.values
    else:
        path = Path(spec)
        if path.suffix.lower() != ".npy":
            if not os.path.lexists(path):
                raise UsageError(
                    f"baseline {spec!r} is neither one of {', '.join(TOKEN_BASELINES)} nor a file"
                )
            raise UsageError(f"baseline file {spec!r}: token models take a .npy of token ids")
        arr = read_npy(path, UsageError)
    if arr.dtype.kind not in "iu":
        raise UsageError("a token model's baseline holds token ids (integers)", path)
    check_vocabulary(arr, vocab.size, path, UsageError)
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.shape != ids.shape:
        raise InputError(
            f"baseline {path} has shape {list(arr.shape)}, this input {list(ids.shape)}",
            sample.path,
        )
    return arr.astype(ids.dtype)
