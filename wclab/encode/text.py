"""Prompt text as Wan tokenizes it: the cleaning applied before tokenizing, and the fixed context length."""
from __future__ import annotations

import html

import ftfy
import regex  # transformers dependency; Unicode \s exactly as the reference matches it

TEXT_LEN = 512  # tokens in Wan's text context


def clean_text(text: str) -> str:
    """Wan's prompt cleaning: ftfy fix, html unescape twice, strip, collapse runs of whitespace to one space.

    Newlines become spaces, so token offsets from `wclab.models.text_encoder.Tokenizer` refer to this cleaned
    string.
    """
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return regex.sub(r"\s+", " ", text).strip()
