"""Medical entities: a phrase vocabulary built from corpus titles plus a suffix rule.

The entity rule (used by clinical consistency and evidence grounding):

1. **Vocabulary phrases.** MedQuAD titles are disease, condition and drug names ("Wilson disease", "Parvovirus B19
   infection"); OpenStax section titles are physiology and microbiology concepts ("Cardiac Output", "Phagocytosis").
   Each title is split into segments at ``>``, semicolons, colons and parentheses, and each segment into list items
   at commas, " and " and " or "; each item of 2–6 words (leading stopwords dropped) that is not all stopwords or
   book boilerplate ("Learning Objectives") becomes a phrase, and so does a single word that is a whole segment
   ("Osteoporosis"). PubMed and BioASQ titles are questions or PMIDs, not names, so they are left out.
2. **Suffix rule.** A single word of at least 6 letters ending in a medical suffix (-itis, -emia, -osis, -oma, -pathy,
   -ectomy, -cyte, -mycin, …) is an entity even when no title names it, so unseen diseases and drugs still count.

A text's entities are found by greedy longest match of word n-grams against the vocabulary (a trailing plural "s"
is also tried for single words), then the suffix rule on the words no phrase covered. Building from the bundled
corpus takes about a second, so it is not cached; tests inject a small `Vocabulary` instead.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from medr3.rewards.text import STOPWORDS, words

MAX_PHRASE_WORDS = 6
TITLE_SOURCES = ("medquad", "openstax")  # prefixes of corpus `source` fields whose titles name concepts
MEDICAL_SUFFIXES = (
    "itis",
    "emia",
    "aemia",
    "osis",
    "oma",
    "omas",
    "pathy",
    "ectomy",
    "otomy",
    "ostomy",
    "plasty",
    "plasia",
    "trophy",
    "algia",
    "uria",
    "penia",
    "cytosis",
    "cyte",
    "cytes",
    "blast",
    "blasts",
    "genic",
    "lysis",
    "megaly",
    "rrhea",
    "rrhage",
    "mycin",
    "cillin",
    "azole",
    "statin",
    "olol",
    "pril",
    "sartan",
    "mab",
    "vir",
    "coccus",
    "cocci",
    "bacter",
    "virus",
    "viruses",
    "ase",
    "ases",
)
# Common English words that happen to end in a medical suffix.
_SUFFIX_EXCEPTIONS = frozenset(
    "increase increases decrease decreases release releases database purchase diagnose diagnoses because".split()
)
_BOILERPLATE = frozenset(
    """preface introduction summary overview review questions learning objectives key terms chapter glossary
    critical thinking questions about openstax resources customization art program interactive link
    case study focus micro connections ethics""".split()
)
_SEGMENT = re.compile(r">|;|:|\(|\)")
_LIST = re.compile(r",|\band\b|\bor\b", re.IGNORECASE)


@dataclass(frozen=True)
class Vocabulary:
    """A set of normalised medical phrases (lower-case words joined by single spaces)."""

    phrases: frozenset[str]

    @classmethod
    def of(cls, phrases: Iterable[str]) -> Vocabulary:
        """A vocabulary from raw phrases (normalised here), e.g. for tests."""
        return cls(frozenset(p for p in (" ".join(words(x)) for x in phrases) if p))

    def entities(self, text: str) -> list[str]:
        """Medical entities of `text` in order of appearance (repeats kept: the order is a concept path)."""
        tokens, found, i = words(text), [], 0
        while i < len(tokens):
            n, phrase = self._longest_match(tokens, i)
            if n:
                found.append(phrase)
                i += n
                continue
            if _suffix_entity(tokens[i]):
                found.append(tokens[i])
            i += 1
        return found

    def _longest_match(self, tokens: list[str], i: int) -> tuple[int, str]:
        """(words matched, the vocabulary phrase) at position i; (0, "") when no phrase starts there."""
        for n in range(min(MAX_PHRASE_WORDS, len(tokens) - i), 0, -1):
            phrase = " ".join(tokens[i : i + n])
            if phrase in self.phrases:
                return n, phrase
            if n == 1 and phrase.endswith("s") and phrase[:-1] in self.phrases:
                return 1, phrase[:-1]  # "anemias" counts as "anemia"
        return 0, ""


def _suffix_entity(word: str) -> bool:
    return len(word) >= 6 and word not in _SUFFIX_EXCEPTIONS and word.endswith(MEDICAL_SUFFIXES)


def title_phrases(title: str) -> list[str]:
    """The vocabulary phrases one corpus title contributes (rule 1 of the module docstring)."""
    out = []
    for segment in _SEGMENT.split(title):
        parts = _LIST.split(segment)
        for part in parts:
            raw = words(part)
            tokens = raw
            while tokens and tokens[0] in STOPWORDS:  # "The Lungs" -> "lungs"
                tokens = tokens[1:]
            if not 1 <= len(tokens) <= MAX_PHRASE_WORDS or all(t in STOPWORDS or t in _BOILERPLATE for t in tokens):
                continue
            # A lone word is a name only when it is the whole title segment ("Osteoporosis", "The Lungs"); split off
            # a list ("Primary and Secondary Responses") or a phrase ("What to Expect") it is usually an adjective.
            if len(tokens) == 1 and (len(parts) > 1 or len(raw) > 2 or len(tokens[0]) < 4 or tokens[0].isdigit()):
                continue
            out.append(" ".join(tokens))
    return out


def build_vocabulary(corpus: str | Path) -> Vocabulary:
    """The vocabulary of a corpus file or folder: phrases from the titles of MedQuAD and OpenStax passages."""
    from medr3.data import iter_corpus

    phrases: set[str] = set()
    seen: set[str] = set()
    for passage in iter_corpus(corpus):
        if passage.title in seen or not passage.source.startswith(TITLE_SOURCES):
            continue
        seen.add(passage.title)
        if passage.title.lower().startswith("preface"):
            continue
        phrases.update(title_phrases(passage.title))
    return Vocabulary(frozenset(phrases))
