"""Byte-level BPE tokenizer: trained with `rustbpe`, run with `tiktoken`.

This mirrors nanochat's design (GPT-4-style regex pre-split, byte-level BPE,
nine chat special tokens appended after the BPE ranks) because checkpoints,
`token_bytes` (bits-per-byte) and the chat format all depend on token ids
being exactly where nanochat puts them.

Two deliberate differences from nanochat:

* Storage is not a pickle. `save` writes the ranks in tiktoken's plain text
  format (`base64(bytes) rank` per line) plus a JSON metadata file, so loading
  a tokenizer never executes code. nanochat's own `tokenizer.pkl` can still be
  loaded (see `Tokenizer.from_directory`).
* `token_bytes()` counts the raw bytes of every token. nanochat's classic code
  decoded each token to `str` first, which turns partial UTF-8 sequences into
  U+FFFD (3 bytes) and slightly skews bits-per-byte; nanochat HEAD fixed this
  the same way.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import numbers
import os
import pickle
import sys
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import tiktoken

from nanochat_jax.common import atomic_write, get_base_dir

# GPT-4's cl100k split pattern, except numbers are split into runs of 1-2 digits
# (cl100k uses 1-3). nanochat found 1-2 slightly better for small vocabularies.
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)

# Order matters: ids are assigned in this order right after the BPE ranks, so
# `<|bos|>` is vocab_size - 9 (65,527 for nanochat's 65,536 vocabulary).
SPECIAL_TOKENS = [
    "<|bos|>",  # starts every document
    "<|user_start|>",
    "<|user_end|>",
    "<|assistant_start|>",
    "<|assistant_end|>",
    "<|python_start|>",  # assistant calls the python tool
    "<|python_end|>",
    "<|output_start|>",  # the tool's output, fed back to the assistant
    "<|output_end|>",
]

# Smallest vocabulary that still holds every single byte plus the specials.
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)

ENCODING_NAME = "rustbpe"
FORMAT_NAME = "nanochat_jax-tokenizer"
FORMAT_VERSION = 1
RANKS_FILE = "tokenizer.tiktoken"
META_FILE = "tokenizer.json"
TOKEN_BYTES_FILE = "token_bytes.npy"
NANOCHAT_PICKLE_FILE = "tokenizer.pkl"

_TRAIN_HINT = "train one with `python -m train.tokenizer` (see --help for options)"


class TokenizerFormatError(ValueError):
    """A tokenizer directory exists but its files are unreadable or inconsistent."""


def tokenizer_dir(name: str | os.PathLike = "") -> Path:
    """Where a tokenizer lives: `<base dir>/tokenizer` by default, as in nanochat.

    A config's ``tokenizer_dir`` is passed through here: a relative name
    resolves under the base dir (``"sample_tokenizer"``), an absolute path is
    kept as it is.
    """
    return get_base_dir() / (Path(name).expanduser() if str(name) else Path("tokenizer"))


def _encoding_parts(enc: tiktoken.Encoding) -> tuple[str, str, dict[bytes, int], dict[str, int]]:
    """(name, pattern, mergeable ranks, special tokens) of a tiktoken Encoding.

    tiktoken has no public accessors for these; its pickle state is the most
    stable public-ish view (it is exactly the constructor's keyword arguments).
    Registered encodings pickle by name only, so fall back to the attributes.
    """
    state = enc.__getstate__()
    if isinstance(state, dict):
        return state["name"], state["pat_str"], state["mergeable_ranks"], state["special_tokens"]
    return enc.name, enc._pat_str, enc._mergeable_ranks, enc._special_tokens


def _ranks_to_text(ranks: dict[bytes, int]) -> bytes:
    """tiktoken's text format: one `base64(token) rank` line per token, by rank."""
    lines = [base64.b64encode(tok) + b" " + str(rank).encode() for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1])]
    return b"\n".join(lines) + b"\n"


def _ranks_from_text(data: bytes, where: Path) -> dict[bytes, int]:
    """Parse tiktoken's text format strictly, naming the bad line on failure."""
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 2:
                raise ValueError("expected 2 fields")
            tok = base64.b64decode(parts[0], validate=True)
            rank = int(parts[1])
        except (ValueError, binascii.Error) as e:
            raise TokenizerFormatError(f"{where}: line {lineno} is not `base64 rank` ({e}): {line[:80]!r}") from e
        if tok in ranks:
            raise TokenizerFormatError(f"{where}: line {lineno}: token {tok!r} appears twice")
        ranks[tok] = rank
    _check_ranks(ranks, where)
    return ranks


def _check_ranks(ranks: dict[bytes, int], where: object) -> None:
    """Ranks must be exactly 0..n-1 (ids are dense) and cover all 256 bytes.

    Without every single byte some strings could not be encoded at all, and a
    gap or duplicate rank would make two tokens share an id.
    """
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise TokenizerFormatError(f"{where}: ranks are not exactly 0..{len(ranks) - 1} (duplicates or gaps)")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise TokenizerFormatError(f"{where}: {len(missing)} single-byte tokens missing (e.g. byte {missing[0]})")


class Tokenizer:
    """nanochat's tokenizer API on top of a `tiktoken.Encoding`.

    Plain text is always encoded with `encode_ordinary`, so a document that
    happens to contain the string "<|bos|>" can never inject a special token;
    specials are only produced through `encode_special` / `prepend` / `append`
    and the chat renderers.
    """

    def __init__(self, enc: tiktoken.Encoding, bos_token: str = "<|bos|>"):
        if not isinstance(enc, tiktoken.Encoding):
            raise TypeError(f"expected a tiktoken.Encoding, got {type(enc).__name__}")
        if bos_token not in enc.special_tokens_set:
            raise ValueError(f"BOS token {bos_token!r} is not a special token of this encoding ({sorted(enc.special_tokens_set)})")
        self.enc = enc
        self.bos_token = bos_token
        self._special_cache: dict[str, int] = {}
        self._token_bytes: np.ndarray | None = None
        self.bos_token_id = self.encode_special(bos_token)

    # ------------------------------------------------------------------ build
    @classmethod
    def from_ranks(cls, mergeable_ranks: dict[bytes, int], pattern: str = SPLIT_PATTERN, name: str = ENCODING_NAME) -> "Tokenizer":
        """Build from BPE ranks, appending SPECIAL_TOKENS right after them (nanochat's layout)."""
        _check_ranks(mergeable_ranks, "mergeable_ranks")
        offset = len(mergeable_ranks)
        specials = {tok: offset + i for i, tok in enumerate(SPECIAL_TOKENS)}
        enc = tiktoken.Encoding(name=name, pat_str=pattern, mergeable_ranks=mergeable_ranks, special_tokens=specials)
        return cls(enc)

    @classmethod
    def train_from_iterator(cls, text_iterator: Iterable[str], vocab_size: int = 65536) -> "Tokenizer":
        """Train byte-level BPE with rustbpe on an iterable of documents.

        rustbpe learns `vocab_size - 9` ranks (256 bytes + merges); the 9
        specials fill the last ids. If the text runs out of pairs to merge
        first, rustbpe stops early: the vocabulary is then smaller, the
        specials still follow the ranks directly, and a warning says so.
        """
        import rustbpe

        if isinstance(vocab_size, bool) or not isinstance(vocab_size, numbers.Integral):
            raise TypeError(f"vocab_size must be an int, got {vocab_size!r}")
        vocab_size = int(vocab_size)
        if vocab_size < MIN_VOCAB_SIZE:
            raise ValueError(
                f"vocab_size must be >= {MIN_VOCAB_SIZE} (256 byte tokens + {len(SPECIAL_TOKENS)} special tokens), got {vocab_size}"
            )
        if isinstance(text_iterator, str):
            raise TypeError("text_iterator must yield documents (str), not be a single str")
        trainer = rustbpe.Tokenizer()
        trainer.train_from_iterator(iter(text_iterator), vocab_size - len(SPECIAL_TOKENS), pattern=SPLIT_PATTERN)
        ranks = {bytes(tok): int(rank) for tok, rank in trainer.get_mergeable_ranks()}
        tok = cls.from_ranks(ranks, SPLIT_PATTERN)
        if tok.get_vocab_size() < vocab_size:
            warnings.warn(
                f"training text only supported {len(ranks) - 256} merges: vocab_size is {tok.get_vocab_size()}, "
                f"not the requested {vocab_size} (use more text)",
                stacklevel=2,
            )
        return tok

    # ----------------------------------------------------------------- encode
    def _special_id(self, token: str | int, what: str) -> int:
        """Resolve a prepend/append argument (special-token name or id) to an id."""
        if isinstance(token, str):
            return self.encode_special(token)
        if isinstance(token, numbers.Integral) and not isinstance(token, bool):
            tid = int(token)
            if not 0 <= tid < self.get_vocab_size():
                raise ValueError(f"{what} id {tid} is outside the vocabulary [0, {self.get_vocab_size()})")
            return tid
        raise TypeError(f"{what} must be a special-token string or an int id, got {type(token).__name__}")

    def encode(self, text: str | Sequence[str], prepend: str | int | None = None, append: str | int | None = None, num_threads: int = 8):
        """str -> list[int]; list of str -> list[list[int]] (batched, multi-threaded)."""
        pre = None if prepend is None else self._special_id(prepend, "prepend")
        post = None if append is None else self._special_id(append, "append")
        if isinstance(text, str):
            ids = self.enc.encode_ordinary(text)
            if pre is not None:
                ids.insert(0, pre)
            if post is not None:
                ids.append(post)
            return ids
        if isinstance(text, (list, tuple)):
            for i, t in enumerate(text):
                if not isinstance(t, str):
                    raise TypeError(f"encode: element {i} of the batch is {type(t).__name__}, expected str")
            batch = self.enc.encode_ordinary_batch(list(text), num_threads=num_threads)
            for ids in batch:
                if pre is not None:
                    ids.insert(0, pre)
                if post is not None:
                    ids.append(post)
            return batch
        raise TypeError(f"encode expects a str or a list of str, got {type(text).__name__}")

    def __call__(self, *args, **kwargs):
        return self.encode(*args, **kwargs)

    def decode(self, ids) -> str:
        """ids -> text. Accepts lists and numpy/JAX integer arrays."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        return self.enc.decode(ids)

    def encode_special(self, name: str) -> int:
        """Id of a special token by name (cached: called per conversation turn)."""
        tid = self._special_cache.get(name)
        if tid is None:
            if name not in self.enc.special_tokens_set:
                raise ValueError(f"{name!r} is not a special token; known: {sorted(self.enc.special_tokens_set)}")
            tid = self.enc.encode_single_token(name)
            self._special_cache[name] = tid
        return tid

    def get_bos_token_id(self) -> int:
        return self.bos_token_id

    def get_vocab_size(self) -> int:
        return self.enc.n_vocab

    def get_special_tokens(self) -> set[str]:
        return set(self.enc.special_tokens_set)

    def id_to_token(self, id: int) -> str:
        """Text of one token (partial UTF-8 shows as U+FFFD, as in nanochat)."""
        return self.enc.decode([id])

    def token_bytes(self) -> np.ndarray:
        """int32 (V,): raw byte length of every token, 0 for special tokens.

        Used to turn summed token losses into bits per byte: specials carry no
        text so contribute no bytes. Raw bytes (not decoded text) so a token
        holding part of a multi-byte character counts its true length.
        """
        if self._token_bytes is None:
            specials = {self.enc.encode_single_token(s) for s in self.enc.special_tokens_set}
            out = np.zeros(self.get_vocab_size(), dtype=np.int32)
            for i in range(self.get_vocab_size()):
                if i in specials:
                    continue
                try:
                    out[i] = len(self.enc.decode_single_token_bytes(i))
                except KeyError:  # an unused id in a sparse foreign encoding
                    out[i] = 0
            out.setflags(write=False)
            self._token_bytes = out
        return self._token_bytes.copy()

    # ------------------------------------------------------------------- chat
    def render_conversation(self, conversation: dict, max_tokens: int = 2048) -> tuple[list[int], list[int]]:
        """Tokenize a chat for SFT: (ids, mask), mask 1 where the model is trained.

        Only what the assistant itself writes is supervised: its text, its
        python tool calls and its `<|assistant_end|>`. Prompts, the
        `<|assistant_start|>` cue and tool outputs (produced by the
        environment, not the model) get mask 0.
        """
        if not isinstance(conversation, dict) or not isinstance(conversation.get("messages"), list):
            raise ValueError("conversation must be a dict with a 'messages' list")
        messages = conversation["messages"]
        if not messages:
            raise ValueError("conversation has no messages")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise ValueError(f"message {i} must be a dict with 'role' and 'content'")
        if messages[0]["role"] == "system":
            # nanochat has no system token: fold the system prompt into the first user turn.
            if len(messages) < 2 or messages[1]["role"] != "user":
                raise ValueError("a system message must be followed by a user message")
            if not isinstance(messages[0]["content"], str) or not isinstance(messages[1]["content"], str):
                raise ValueError("system and user message contents must be strings")
            merged = dict(messages[1], content=messages[0]["content"] + "\n\n" + messages[1]["content"])
            messages = [merged] + list(messages[2:])

        ids: list[int] = []
        mask: list[int] = []

        def add(tokens: int | list[int], m: int) -> None:
            if isinstance(tokens, int):
                tokens = [tokens]
            ids.extend(tokens)
            mask.extend([m] * len(tokens))

        sp = self.encode_special
        add(self.get_bos_token_id(), 0)
        for i, message in enumerate(messages):
            expected = "user" if i % 2 == 0 else "assistant"
            if message["role"] != expected:
                raise ValueError(
                    f"message {i} (after merging any system message) has role {message['role']!r}, expected {expected!r}: "
                    "roles must alternate user/assistant starting with user"
                )
            content = message["content"]
            if expected == "user":
                if not isinstance(content, str):
                    raise ValueError(f"user message {i} content must be a str, got {type(content).__name__}")
                add(sp("<|user_start|>"), 0)
                add(self.encode(content), 0)
                add(sp("<|user_end|>"), 0)
                continue
            add(sp("<|assistant_start|>"), 0)
            if isinstance(content, str):
                add(self.encode(content), 1)
            elif isinstance(content, list):
                for j, part in enumerate(content):
                    if not isinstance(part, dict) or not isinstance(part.get("text"), str):
                        raise ValueError(f"assistant message {i} part {j} must be a dict with a str 'text'")
                    kind = part.get("type")
                    value = self.encode(part["text"])
                    if kind == "text":
                        add(value, 1)
                    elif kind == "python":
                        add(sp("<|python_start|>"), 1)
                        add(value, 1)
                        add(sp("<|python_end|>"), 1)
                    elif kind == "python_output":
                        add(sp("<|output_start|>"), 0)
                        add(value, 0)
                        add(sp("<|output_end|>"), 0)
                    else:
                        raise ValueError(f"assistant message {i} part {j} has unknown type {kind!r} (text, python, python_output)")
            else:
                raise ValueError(f"assistant message {i} content must be a str or a list of parts, got {type(content).__name__}")
            add(sp("<|assistant_end|>"), 1)
        return ids[:max_tokens], mask[:max_tokens]

    def render_for_completion(self, conversation: dict) -> list[int]:
        """Prompt tokens for the next assistant turn: the conversation as SFT renders it, then `<|assistant_start|>`.

        The one chat-prompt builder (CLI, server, RL, evals). A final assistant
        message (a task's reference answer, as nanochat passes it) is left out.
        """
        messages = conversation.get("messages") if isinstance(conversation, dict) else None
        if isinstance(messages, list) and messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant":
            messages = messages[:-1]
        ids, _ = self.render_conversation({"messages": messages}, max_tokens=sys.maxsize)
        return ids + [self.encode_special("<|assistant_start|>")]

    # ---------------------------------------------------------------- storage
    def save(self, directory: str | Path) -> Path:
        """Write tokenizer.tiktoken, token_bytes.npy, tokenizer.json (atomically, each).

        The JSON is written last and records the SHA-256 of the ranks file,
        so an interrupted re-save or a mismatched pair of files is detected
        on load instead of silently producing different ids.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        name, pattern, ranks, specials = _encoding_parts(self.enc)
        ranks_text = _ranks_to_text(ranks)
        with atomic_write(directory / RANKS_FILE, "wb") as f:
            f.write(ranks_text)
        with atomic_write(directory / TOKEN_BYTES_FILE, "wb") as f:
            np.save(f, self.token_bytes())
        meta = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "name": name,
            "pattern": pattern,
            "vocab_size": self.get_vocab_size(),
            "num_ranks": len(ranks),
            "special_tokens": dict(sorted(specials.items(), key=lambda kv: kv[1])),
            "bos_token": self.bos_token,
            "ranks_file": RANKS_FILE,
            "ranks_sha256": hashlib.sha256(ranks_text).hexdigest(),
        }
        with atomic_write(directory / META_FILE, "w") as f:
            json.dump(meta, f, indent=2, ensure_ascii=False)
            f.write("\n")
        return directory

    @classmethod
    def from_directory(cls, path: str | Path) -> "Tokenizer":
        """Load this project's format, or nanochat's `tokenizer.pkl`.

        SECURITY: `tokenizer.pkl` is unpickled, and unpickling runs arbitrary
        code from the file. That path exists only to read tokenizers written
        by nanochat itself; never point it at a file you did not produce.
        The project's own format (tokenizer.json + tokenizer.tiktoken) is
        plain data and is preferred when both are present.
        """
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"no tokenizer directory at {path}: {_TRAIN_HINT}")
        if (path / META_FILE).exists():
            return cls._load_project_format(path)
        if (path / NANOCHAT_PICKLE_FILE).exists():
            return cls._load_nanochat_pickle(path / NANOCHAT_PICKLE_FILE)
        if (path / RANKS_FILE).exists():
            raise TokenizerFormatError(f"{path} has {RANKS_FILE} but no {META_FILE} (interrupted save?): re-save or {_TRAIN_HINT}")
        raise FileNotFoundError(f"no tokenizer in {path} (expected {META_FILE} + {RANKS_FILE}, or nanochat's {NANOCHAT_PICKLE_FILE}): {_TRAIN_HINT}")

    @classmethod
    def _load_project_format(cls, path: Path) -> "Tokenizer":
        meta_path = path / META_FILE
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise TokenizerFormatError(f"{meta_path} is not valid JSON ({e}): {_TRAIN_HINT}") from e
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
            raise TokenizerFormatError(f"{meta_path} is not a {FORMAT_NAME} metadata file")
        if meta.get("format_version") != FORMAT_VERSION:
            raise TokenizerFormatError(f"{meta_path}: unsupported format_version {meta.get('format_version')!r} (this code reads {FORMAT_VERSION})")
        required = ["name", "pattern", "vocab_size", "num_ranks", "special_tokens", "bos_token", "ranks_file", "ranks_sha256"]
        missing = [k for k in required if k not in meta]
        if missing:
            raise TokenizerFormatError(f"{meta_path} lacks fields {missing}")
        ranks_path = path / meta["ranks_file"]
        if not ranks_path.is_file():
            raise TokenizerFormatError(f"{ranks_path} is missing (named by {meta_path})")
        data = ranks_path.read_bytes()
        if hashlib.sha256(data).hexdigest() != meta["ranks_sha256"]:
            raise TokenizerFormatError(f"{ranks_path} does not match the checksum in {meta_path}: the files are corrupt or from different saves")
        ranks = _ranks_from_text(data, ranks_path)
        if len(ranks) != meta["num_ranks"]:
            raise TokenizerFormatError(f"{ranks_path} has {len(ranks)} ranks, {meta_path} says {meta['num_ranks']}")
        specials = meta["special_tokens"]
        if not isinstance(specials, dict) or not all(isinstance(k, str) and isinstance(v, int) for k, v in specials.items()):
            raise TokenizerFormatError(f"{meta_path}: special_tokens must map str -> int")
        if sorted(specials.values()) != list(range(len(ranks), len(ranks) + len(specials))):
            raise TokenizerFormatError(f"{meta_path}: special token ids must directly follow the {len(ranks)} ranks")
        try:
            enc = tiktoken.Encoding(name=meta["name"], pat_str=meta["pattern"], mergeable_ranks=ranks, special_tokens=specials)
        except Exception as e:  # e.g. an invalid regex
            raise TokenizerFormatError(f"{path}: cannot build the encoding: {e}") from e
        if enc.n_vocab != meta["vocab_size"]:
            raise TokenizerFormatError(f"{meta_path}: vocab_size {meta['vocab_size']} != {enc.n_vocab} loaded")
        return cls(enc, bos_token=meta["bos_token"])

    @classmethod
    def _load_nanochat_pickle(cls, pkl_path: Path) -> "Tokenizer":
        try:
            with open(pkl_path, "rb") as f:
                enc = pickle.load(f)  # noqa: S301 - nanochat's own file, see from_directory
        except Exception as e:  # truncated or garbage files raise many different types
            raise TokenizerFormatError(f"{pkl_path} is not a readable pickle ({type(e).__name__}: {e}): {_TRAIN_HINT}") from e
        if not isinstance(enc, tiktoken.Encoding):
            raise TokenizerFormatError(f"{pkl_path} holds a {type(enc).__name__}, expected a pickled tiktoken.Encoding")
        specials = enc.special_tokens_set
        bos = "<|bos|>" if "<|bos|>" in specials else "<|endoftext|>" if "<|endoftext|>" in specials else None
        if bos is None:
            raise TokenizerFormatError(f"{pkl_path}: encoding has no <|bos|> (or <|endoftext|>) special token")
        return cls(enc, bos_token=bos)


def get_tokenizer() -> Tokenizer:
    """The tokenizer every stage uses: `<base dir>/tokenizer`."""
    return Tokenizer.from_directory(tokenizer_dir())
