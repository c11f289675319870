"""UTF-8-safe text from a token stream: the one streamer of the chat CLI and the web server."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

REPLACEMENT_CHAR = "\ufffd"


class TextStream:
    """Push-style UTF-8-safe decoding of one reply: ``push(token)`` returns the new whole-character text ("" while held back).

    A character can span byte-level tokens, so tokens are held back while their
    text ends in U+FFFD. Only the held-back tokens are re-decoded (text that ends
    on a whole character cannot change), so a reply costs O(n). ``flush()``
    returns what is still held back.
    """

    def __init__(self, tokenizer):
        self.tokenizer, self.pending, self.count = tokenizer, [], 0

    def push(self, tok: int) -> str:
        self.pending.append(int(tok))
        self.count += 1
        text = self.tokenizer.decode(self.pending)
        if text and not text.endswith(REPLACEMENT_CHAR):
            self.pending = []
            return text
        return ""

    def flush(self) -> str:
        text, self.pending = (self.tokenizer.decode(self.pending) if self.pending else ""), []
        return text


def stream_text(
    tokenizer, token_ids: Iterable[int], stop_ids: Iterable[int], should_stop: Callable[[], bool] = lambda: False
) -> Iterator[tuple[str, int]]:
    """Yield ``(new_text, n_tokens_so_far)``, never half a character (:class:`TextStream`).

    Stops before a stop token (never shown) or once ``should_stop()``; a held-back tail is flushed.
    """
    stop = {int(t) for t in stop_ids}
    stream = TextStream(tokenizer)
    for tok in token_ids:
        if int(tok) in stop or should_stop():
            break
        if text := stream.push(tok):
            yield text, stream.count
    if tail := stream.flush():
        yield tail, stream.count
