"""UTF-8-safe text from a token stream: the one streamer of the chat CLI and the web server."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

REPLACEMENT_CHAR = "\ufffd"


def stream_text(
    tokenizer, token_ids: Iterable[int], stop_ids: Iterable[int], should_stop: Callable[[], bool] = lambda: False
) -> Iterator[tuple[str, int]]:
    """Yield ``(new_text, n_tokens_so_far)``, never half a character.

    A character can span byte-level tokens, so tokens are held back while their
    text ends in U+FFFD. Only the held-back tokens are re-decoded (text that ends
    on a whole character cannot change), so a reply costs O(n). Stops before a
    stop token (never shown) or once ``should_stop()``; a held-back tail is flushed.
    """
    stop = {int(t) for t in stop_ids}
    pending: list[int] = []
    count = 0
    for tok in token_ids:
        tok = int(tok)
        if tok in stop or should_stop():
            break
        pending.append(tok)
        count += 1
        text = tokenizer.decode(pending)
        if text and not text.endswith(REPLACEMENT_CHAR):
            yield text, count
            pending = []
    if pending:
        yield tokenizer.decode(pending), count
