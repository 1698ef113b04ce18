"""A subject's words in prompts: where its token stands, and the prompt without it. No torch."""

from __future__ import annotations

import re

from ..errors import InvalidInputError


def fill(template: str, *, token: str, cls: str) -> str:
    """``template`` with the literal ``{token}`` and ``{cls}`` filled in; every other brace stays
    as written (captions and prompts are text, not format strings)."""
    return template.replace("{token}", token).replace("{cls}", cls)


def _word(token: str) -> str:
    # a whole word, in any case: "SKS dog" names subject sks as "sks dog" does
    return rf"(?i:(?<![\w]){re.escape(token)}(?![\w]))"


def token_in_prompt(token: str, prompt: str) -> bool:
    return re.search(_word(token), prompt) is not None


def class_prompt_of(prompt: str, token: str, cls: str) -> str:
    """``prompt`` with the subject's identifier replaced by its class word, for CLIP-T and
    the prior samples of tuning.

    ``"a sks dog on a wave"`` -> ``"a dog on a wave"`` (the identifier before the class word is
    dropped); ``"a photo of sks"`` -> ``"a photo of dog"``. The identifier is matched as a whole
    word, as ``subjects.token_in_prompt`` does; a prompt without it comes back unchanged.
    """
    if not token or not cls.strip():
        raise ValueError("the subject's token and class word must not be empty")
    word = _word(token)
    out = re.sub(rf"{word}\s+(?={re.escape(cls)}(?:e?s)?(?![\w]))", "", prompt)  # "sks dog(s)" -> "dog(s)"
    out = re.sub(word, lambda _: cls, out)  # a lone identifier becomes the class word
    return re.sub(r"[ \t]{2,}", " ", out).strip()


def word_char_span(prompt: str, word: str) -> tuple[int, int]:
    """Characters of the first whole-word occurrence of ``word`` in ``prompt``."""
    m = re.search(_word(word), prompt)
    if m is None:
        raise InvalidInputError(f"prompt {prompt!r} does not contain the subject token {word!r}")
    return m.span()
