"""Deterministic pseudo-text for tokenizer tests: English-ish words, numbers, CJK, emoji, code, newlines."""

from __future__ import annotations

import random

WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which but have an they you were "
    "her she there been one all we their has would when if so no will can more other its about what up out them into "
    "don't it's we're you'll they've I'm café naïve über façade jalapeño Ñandú smörgåsbord"
).split()
CJK = [chr(c) for c in range(0x4E00, 0x4E00 + 400, 3)]  # many distinct 3-byte chars sharing lead bytes
EMOJI = ["🎉", "🚀", "😀", "👍🏽", "🇫🇷", "❤️"]
PUNCT = [".", ",", "!", "?", ";", ":", " -", "(", ")", '"', "'"]


def make_docs(n_docs: int, seed: int, marker: str = "") -> list[str]:
    """Deterministic pseudo-text: English-ish words, numbers, CJK, emoji, code, newlines."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        parts = []
        for _ in range(rng.randint(40, 160)):
            r = rng.random()
            if r < 0.70:
                parts.append(rng.choice(WORDS))
            elif r < 0.78:
                parts.append(str(rng.randint(0, 10**rng.randint(1, 7))))
            elif r < 0.88:
                parts.append("".join(rng.choice(CJK) for _ in range(rng.randint(1, 6))))
            elif r < 0.91:
                parts.append(rng.choice(EMOJI))
            elif r < 0.96:
                parts[-1:] = [(parts[-1] if parts else "") + rng.choice(PUNCT)]
            else:
                parts.append(rng.choice(["\n", "\n\n", "\tdef f(x):\n    return x**2\n", "  "]))
        docs.append(marker + " ".join(parts))
    return docs
