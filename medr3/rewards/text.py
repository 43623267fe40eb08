"""Text normalisation shared by the reward terms: words, content words and token F1 (SQuAD-style)."""

from __future__ import annotations

import re
from collections import Counter

# Function words and question boilerplate: they carry no medical content, so overlap on them proves nothing.
STOPWORDS = frozenset(
    """a an the and or of in on at to for from by with without as is are was were be been being it its this that
    these those which who whom whose what when where why how than then there their they them he she his her him
    we our you your i me my not no nor do does did done can could should would may might must will shall has have
    had having into onto over under about above below between after before during while if so such also very
    most more less least some any all each other both either neither only same own just too most likely patient
    following question answer option one two three""".split()
)

_WORD = re.compile(r"[a-z0-9]+")


def normalize(text: str) -> str:
    """Lower-case words and digits joined by single spaces; punctuation and articles dropped."""
    return " ".join(w for w in _WORD.findall(text.lower()) if w not in ("a", "an", "the"))


def words(text: str) -> list[str]:
    """Lower-case word and number tokens, in order."""
    return _WORD.findall(text.lower())


def content_words(text: str) -> list[str]:
    """Words that are not stopwords and not single characters, in order."""
    return [w for w in words(text) if w not in STOPWORDS and len(w) > 1]


def token_f1(prediction: str, gold: str) -> float:
    """Token-level F1 in [0, 1] between two texts, over normalised words (multiset overlap)."""
    pred, ref = normalize(prediction).split(), normalize(gold).split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def jaccard(a: set, b: set) -> float:
    """|a ∩ b| / |a ∪ b| in [0, 1]; 0 when both are empty (nothing shared is no agreement)."""
    union = a | b
    return len(a & b) / len(union) if union else 0.0
