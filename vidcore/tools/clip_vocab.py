"""Write a small CLIP BPE tokenizer (``vocab.json`` + ``merges.txt``) from a word list.

Real CLIP vocabularies need a download; this builds one offline. The layout follows CLIP's: the
256 byte characters, the same with ``</w>``, the merge results (so every listed word is a single
token), then ``<|startoftext|>`` and ``<|endoftext|>``. Any text still tokenizes: unknown words
fall back to characters.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

DEFAULT_WORDS = (
    "a an the of in on with and is at to by for from video photo painting "
    "cat dog panda horse astronaut bear teddy man woman robot car boat bird fish "
    "riding playing walking running surfing dancing eating flying swimming "
    "guitar wave beach forest city street sky sea snow space mars moon "
    "red blue green white black golden yellow high quality detailed cinematic "
    "circle square triangle moving left right up down"
).split()


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte -> printable unicode character table."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def bpe(pieces: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-pair encoding of one word: repeatedly merge the adjacent pair with the best rank."""
    while len(pieces) > 1:
        rank, i = min((ranks.get(pair, math.inf), i) for i, pair in enumerate(zip(pieces, pieces[1:])))
        if rank == math.inf:
            break
        pieces[i: i + 2] = [pieces[i] + pieces[i + 1]]
    return pieces


def write_clip_vocab(folder: str | Path, words=DEFAULT_WORDS) -> Path:
    """Write ``vocab.json`` and ``merges.txt`` into ``folder``; load with ``CLIPTokenizer.from_pretrained``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    base = list(bytes_to_unicode().values())
    vocab_list = base + [c + "</w>" for c in base]
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        # add merges until BPE turns the word into one token; later merges have lower priority,
        # so they never change how earlier words split
        while len(pieces := bpe(list(word[:-1]) + [word[-1] + "</w>"], ranks)) > 1:
            ranks[(pieces[0], pieces[1])] = len(ranks)
            vocab_list.append(pieces[0] + pieces[1])
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in ranks), encoding="utf-8")
    return folder
