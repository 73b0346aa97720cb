"""Prompt screening against an editable term list (settings.blocked_terms_file).

The file holds one term or phrase per line; `#` starts a comment. A prompt is blocked when it
contains any term as whole words, ignoring case; the words of a phrase may be separated by any
run of spaces, hyphens or underscores. This is a plain list, not a model: it catches what the
operator wrote down, and the image classifier (runners/safety.py) judges what was generated.
"""

from __future__ import annotations

import re
from pathlib import Path

COMMENT = "#"
# What may stand between the words of a listed phrase: "explicit sex", "explicit-sex", ...
_WORD_SEPARATOR = r"[\s_-]+"


def read_terms(path: Path) -> list[str]:
    """The terms of a term-list file: stripped, lowercased, without comments or blank lines."""
    terms = []
    for line in path.read_text(encoding="utf-8").splitlines():
        term = line.split(COMMENT, 1)[0].strip().lower()
        if term:
            terms.append(term)
    return terms


def _pattern(term: str) -> re.Pattern[str]:
    words = [re.escape(word) for word in term.split()]
    # \b on both ends: whole words only, so a term never matches inside a longer word.
    return re.compile(r"\b" + _WORD_SEPARATOR.join(words) + r"\b", re.IGNORECASE)


class PromptFilter:
    def __init__(self, terms: list[str]) -> None:
        self.terms = terms
        self._patterns = [(term, _pattern(term)) for term in terms]

    @classmethod
    def from_file(cls, path: Path) -> PromptFilter:
        return cls(read_terms(path))

    def blocked_term(self, prompt: str) -> str | None:
        """The first listed term that `prompt` contains, or None when it contains none."""
        for term, pattern in self._patterns:
            if pattern.search(prompt):
                return term
        return None
