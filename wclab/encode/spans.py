"""Where each prompt line (and each word of a caption) lands in the tokenized prompt.

The prompt is cleaned like Wan's prompter before tokenizing (ftfy, html unescape, whitespace collapse, so line
breaks become spaces); token character offsets then refer to the cleaned text. As in the reference, a line owns
the separating space after it, so a token starting with "▁" at a line break (``"▁Object"``) belongs to the line
before; within a line, a word owns the tokens whose first non-space character falls in it. Special and padding
tokens (empty offsets, e.g. ``</s>``) belong to no line.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Union

import numpy as np

from wclab.conditions.prompt import LINE_SEPARATOR, Prompt
from wclab.errors import ConditionError
from wclab.encode.text import TEXT_LEN, clean_text

Span = tuple[int, int]
_WORD = re.compile(r"\S+")
METASPACE = "\u2581"  # "▁", sentencepiece's word-start mark


@dataclass(frozen=True)
class _Tokenized:
    text: str  # cleaned prompt
    line_starts: np.ndarray  # int [K]: first character of each line in ``text``
    first: np.ndarray  # int [L]: first non-space character of each token (-1: special/padding token)
    lead: np.ndarray  # int [L]: like ``first``, but the space a leading "▁" stands for when there is one


def _prompt_text(prompt: Union[str, Prompt]) -> str:
    return prompt.text if isinstance(prompt, Prompt) else prompt


def _tokenize(prompt: Union[str, Prompt], tokenizer, text_len: int) -> _Tokenized:
    text = _prompt_text(prompt)
    lines = [clean_text(line) for line in text.split(LINE_SEPARATOR)]
    for k, line in enumerate(lines):
        if not line:
            raise ConditionError(f"prompt line {k + 1}: empty after cleaning; every line must hold a caption")
    cleaned = clean_text(text)
    if " ".join(lines) != cleaned:  # cleaning must act line by line for the spans to be well defined
        raise ConditionError("prompt: cleaning changes text across line breaks; "
                             "cannot locate lines in the cleaned text")
    hf = getattr(tokenizer, "hf", tokenizer)  # wclab Tokenizer or a transformers tokenizer
    enc = hf(cleaned, truncation=True, max_length=text_len, add_special_tokens=True, return_offsets_mapping=True)
    pieces = hf.convert_ids_to_tokens(enc["input_ids"])
    # Offsets of a "▁"-piece start at the space it replaces in some tokenizers versions and after it in others;
    # normalise both to the first non-space character, and keep the space's position as ``lead``.
    first, lead = [], []
    for piece, (a, b) in zip(pieces, enc["offset_mapping"]):
        if b <= a:
            first.append(-1)
            lead.append(-1)
            continue
        a += cleaned[a] == " "
        first.append(a)
        lead.append(a - 1 if piece.startswith(METASPACE) and a > 0 and cleaned[a - 1] == " " else a)
    line_starts = np.cumsum([0] + [len(line) + 1 for line in lines[:-1]])
    return _Tokenized(cleaned, line_starts, np.array(first), np.array(lead))


def _token_range(starts: np.ndarray, char_start: int, char_end: int, what: str, text_len: int) -> Span:
    idx = np.flatnonzero((starts >= char_start) & (starts < char_end))
    if idx.size == 0:
        raise ConditionError(f"{what}: no tokens within the first {text_len}; the prompt is too long")
    return int(idx[0]), int(idx[-1]) + 1


def caption_spans(prompt: Union[str, Prompt], tokenizer, text_len: int = TEXT_LEN) -> list[Span]:
    """Token ranges ``[s0, s1)`` of each prompt line, in line order (caption order k).

    tokenizer: a ``wclab.models.text_encoder.Tokenizer`` or a transformers tokenizer. A line spans from its
    first token to the token before the next line (end-of-sequence token excluded). A prompt without line
    breaks (e.g. the negative prompt) gives one span ``[0, n)``, n = its tokens without ``</s>``.
    """
    tok = _tokenize(prompt, tokenizer, text_len)
    bounds = list(tok.line_starts) + [len(tok.text) + 1]
    return [_token_range(tok.lead, bounds[k], bounds[k + 1], f"prompt line {k + 1}", text_len)
            for k in range(len(tok.line_starts))]


def word_spans(prompt: Union[str, Prompt], tokenizer, line_index: int,
               text_len: int = TEXT_LEN) -> list[tuple[str, Span]]:
    """``(word, [s0, s1))`` for each whitespace-separated word of line ``line_index``'s caption.

    The caption is the text after the line's ``Object k:`` / ``Object k appears:`` label (the whole line when
    it has no ``": "``). Words keep their punctuation, as cleaned (e.g. ``"left."``).
    """
    tok = _tokenize(prompt, tokenizer, text_len)
    n = len(tok.line_starts)
    if not 0 <= line_index < n:
        raise ConditionError(f"line_index: expected 0..{n - 1} (the prompt has {n} lines), got {line_index}")
    begin = int(tok.line_starts[line_index])
    end = int(tok.line_starts[line_index + 1]) - 1 if line_index + 1 < n else len(tok.text)
    line = tok.text[begin:end]
    label_end = line.find(": ")
    caption_start = label_end + 2 if label_end >= 0 else 0
    return [(m.group(), _token_range(tok.first, begin + m.start(), begin + m.end(), f"word {m.group()!r}", text_len))
            for m in _WORD.finditer(line, caption_start)]
