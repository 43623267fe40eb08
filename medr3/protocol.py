"""The rollout protocol: prompts, tags, format rules, answer extraction and correctness, and loss masks.

The model reasons in ``<think>…</think>`` and answers in ``<answer>…</answer>``; inside ``<think>`` it may write
``<search>query</search>``, after which the system inserts the top documents as ``<document>…</document>`` spans and
generation continues (docs/method.md). Tags are plain text, so any tokenizer works (real models split them into several
tokens): stops are strings, never token ids. Inserted documents are masked out of the loss.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from medr3.data import Question
from medr3.rewards.text import normalize, token_f1, words

SEARCH_STOP = "</search>"
ANSWER_STOP = "</answer>"
DOCUMENT_OPEN = "<document>"  # a stop too: a model that starts writing a document itself is cut off there
PROTOCOL_TAGS = ("think", "search", "document", "answer")
ZERO_WIDTH_SPACE = "\u200b"  # breaks a special-token string in user text without changing what a reader sees

_TAG = re.compile(r"<\s*/?\s*(?:think|search|document|answer|information|result)s?\s*>", re.IGNORECASE)
_ANY_TAG = re.compile(r"<(/?)(think|search|document|answer)>")

# No example answer with a letter in it: a fixed letter is a hint a small model can copy. (Removing the old example,
# "<answer>B. Iron deficiency</answer>", did not end SmolLM2's habit of answering B: docs/method.md §2.)
_GUIDE = (
    "Answer the medical question below. First reason step by step inside <think> and </think>. "
    "{search}When you have reasoned enough, give the final answer inside <answer> and </answer>: "
    "for a multiple-choice question the letter of the option you choose, a period and the option's text."
)
_SEARCH_GUIDE = (
    "While reasoning, whenever you lack medical knowledge, search a medical corpus by writing "
    "<search> your query </search> inside your reasoning; the top passages will then appear between "
    "<document> and </document>. You may search up to {max_searches} times. Never write <document> yourself. "
)


def question_text(q: Question) -> str:
    """The question with its options, one per line."""
    lines = [q.question]
    lines += [f"{letter}. {text}" for letter, text in q.options.items()]
    return "\n".join(lines)


def instruction(search: bool, max_searches: int = 4) -> str:
    return _GUIDE.format(search=_SEARCH_GUIDE.format(max_searches=max_searches) if search else "")


def build_prompt(q: Question, tokenizer=None, search: bool = False, max_searches: int = 4) -> str:
    """The prompt text for a question, through the tokenizer's chat template when it has one.

    The generation prompt is followed by ``<think>`` so that every response starts inside the reasoning block.
    """
    user = f"{instruction(search, max_searches)}\n\nQuestion: {question_text(q)}"
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )
    else:
        text = f"{user}\n\nAssistant: "
    return text + "<think>"


def strip_tags(text: str) -> str:
    """Remove anything that looks like a protocol tag, so a retrieved document cannot inject one."""
    return _TAG.sub(" ", text)


def special_token_strings(tokenizer) -> tuple[str, ...]:
    """Every string `tokenizer` reads as a special token: its named ones (`all_special_tokens`) and every added token
    marked special (ChatML's ``<|im_start|>`` often is only that), longest first."""
    found = set(getattr(tokenizer, "all_special_tokens", None) or ())
    found |= {t.content for t in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values() if t.special}
    return tuple(sorted((s for s in found if len(s) > 1 and ZERO_WIDTH_SPACE not in s), key=len, reverse=True))


def escape_special_tokens(text: str, tokenizer) -> str:
    """`text` with every special-token string of `tokenizer` broken by a zero-width space after its first character,
    so that a prompt holding it tokenizes it as ordinary text: never a chat marker such as ``<|im_end|>``.
    Repeated until nothing matches, since breaking one string can leave an overlapping one whole."""
    specials = special_token_strings(tokenizer)
    if not specials:
        return text
    pattern = re.compile("|".join(map(re.escape, specials)))
    while (escaped := pattern.sub(lambda m: m.group()[0] + ZERO_WIDTH_SPACE + m.group()[1:], text)) != text:
        text = escaped
    return text


def plain_text(text: str, tokenizer=None) -> str:
    """User text (a question, an option, a chat message) made plain for a prompt: protocol tags removed
    (`strip_tags`) and special-token strings broken (`escape_special_tokens`), so it can neither open or close a
    turn nor pose as a search, a document or an answer."""
    text = strip_tags(text)
    return text if tokenizer is None else escape_special_tokens(text, tokenizer)


def format_documents(docs: Sequence[dict]) -> str:
    """Retrieved documents as inserted into a trajectory: one ``<document>`` span each, tags stripped."""
    parts = []
    for i, doc in enumerate(docs, 1):
        title = strip_tags(str(doc.get("title", ""))).strip()
        body = strip_tags(str(doc.get("text", ""))).strip()
        parts.append(f"<document>({i}) {title}\n{body}</document>" if title else f"<document>({i}) {body}</document>")
    return "\n" + "\n".join(parts) + "\n"


def turn_stops(can_search: bool) -> tuple[str, ...]:
    """Stop strings of one generation turn: the answer's end, a self-written document, and (while searches are
    left) the end of a search query."""
    return (ANSWER_STOP, DOCUMENT_OPEN) + ((SEARCH_STOP,) if can_search else ())


def truncate_document(doc: dict, tokenizer, max_tokens: int) -> dict:
    """`doc` with its text (tags stripped) cut to `max_tokens` tokens of `tokenizer`."""
    ids = tokenizer(strip_tags(str(doc.get("text", ""))), add_special_tokens=False).input_ids
    return doc if len(ids) <= max_tokens else {**doc, "text": tokenizer.decode(ids[:max_tokens])}


def documents_text(docs: Sequence[dict], tokenizer, max_document_tokens: int) -> str:
    """The exact text inserted after a search: each document truncated, then `format_documents`; a search that
    found nothing inserts a bare newline. Rollout, serving and warm-start demonstrations all insert this."""
    if not docs:
        return "\n"
    return format_documents([truncate_document(d, tokenizer, max_document_tokens) for d in docs])


def search_query(text: str) -> str | None:
    """The query of a response that ends with ``</search>`` (None when it does not, or the query is empty)."""
    stripped = text.rstrip()
    if not stripped.endswith(SEARCH_STOP):
        return None
    start = stripped.rfind("<search>")
    if start < 0:
        return None
    query = " ".join(stripped[start + len("<search>") : -len(SEARCH_STOP)].split())
    return query or None


@dataclass
class Parsed:
    think: str = ""
    searches: list[str] = field(default_factory=list)
    answer: str | None = None
    documents: int = 0


def with_leading_think(text: str) -> str:
    """The response with its opening ``<think>``: the prompt ends with one, so a response starts inside the think
    block and is read as if it had written the tag, unless it opened the block again itself."""
    return text if text.lstrip().startswith("<think>") else "<think>" + text


def parse(text: str) -> Parsed:
    """Pull the parts of a (possibly malformed) response out by tag; never raises. The response starts inside
    ``<think>`` (`with_leading_think`); the reasoning ends at ``</think>``, or at ``<answer>`` when never closed."""
    out = Parsed()
    text = with_leading_think(text)
    think = re.search(r"<think>(.*?)(?:</think>|<answer>|$)", text, re.DOTALL)
    if think:
        out.think = re.sub(r"<search>.*?</search>|<document>.*?</document>", " ", think.group(1), flags=re.DOTALL)
        out.think = " ".join(out.think.split())
    out.searches = [" ".join(q.split()) for q in re.findall(r"<search>(.*?)</search>", text, re.DOTALL)]
    out.documents = len(re.findall(r"<document>", text))
    answers = re.findall(r"<answer>(.*?)</answer>", text, re.DOTALL)
    if answers:
        out.answer = answers[-1].strip()
    return out


@dataclass(frozen=True)
class FormatCheck:
    ok: bool
    reason: str = ""


def check_format(text: str, search_allowed: bool, self_document: bool = False) -> FormatCheck:
    """The release's format rules, over the full response (generated text with inserted documents).

    A well-formed response is ``<think> … </think> <answer> … </answer>`` with nothing after the answer; inside the
    think block only ``<search>q</search>`` each directly followed by inserted ``<document>`` spans (when search is
    allowed). `self_document` marks a response whose model wrote a document tag itself (always a format error).
    """
    if self_document:
        return FormatCheck(False, "model wrote a <document> tag itself")
    body = with_leading_think(text.strip())
    tags = [(m.group(1) == "/", m.group(2), m.start(), m.end()) for m in _ANY_TAG.finditer(body)]
    state, after_search, searches = "start", False, 0
    for closing, tag, _start, _end in tags:
        expect = _next_states(state, search_allowed).get((closing, tag))
        if expect is None:
            return FormatCheck(False, f"unexpected {'</' if closing else '<'}{tag}> in state {state}")
        if (closing, tag) == (True, "search"):
            searches += 1
            after_search = True
        elif (closing, tag) == (False, "document") and not after_search:
            return FormatCheck(False, "<document> not preceded by a search")
        elif (closing, tag) in ((False, "search"), (True, "think")):
            after_search = False
        state = expect
    if state != "done":
        return FormatCheck(False, "missing <answer>…</answer>" if state != "answer" else "unclosed <answer>")
    tail = body[tags[-1][3] :]
    if tail.strip():
        return FormatCheck(False, "text after </answer>")
    answer = re.search(r"<answer>(.*?)</answer>", body, re.DOTALL)
    if not answer.group(1).strip():
        return FormatCheck(False, "empty answer")
    return FormatCheck(True)


def _next_states(state: str, search_allowed: bool) -> dict[tuple[bool, str], str]:
    """Allowed tag transitions of the format automaton; key = (closing, tag)."""
    think = {(True, "think"): "between"}
    if search_allowed:
        think |= {(False, "search"): "search", (False, "document"): "document"}
    return {
        "start": {(False, "think"): "think"},
        "think": think,
        "search": {(True, "search"): "think"},
        "document": {(True, "document"): "think"},
        "between": {(False, "answer"): "answer"},
        "answer": {(True, "answer"): "done"},
        "done": {},
    }[state]


# A letter is read only where it stands as a letter, never as the article in "A viral infection" or the start of
# "B-cell lymphoma"; a lone letter inside a sentence ("Vitamin C") is option text, not a letter.
_LETTER_PATTERNS = (
    re.compile(r"^[\s*]*\(?([A-J])(?:[.):]|[\s*]*$)"),  # "A", "A.", "(A)", "A)", "A:", "**A**" at the start
    re.compile(r"\(([A-J])\)"),  # "(A)" anywhere
    re.compile(r"(?i:\banswer(?:\s+is)?)\s*:?\s*(?!A\s+[a-z])\(?([A-J])(?![\w-])"),  # "answer is B", "Answer: B"
    re.compile(r"(?i:\b(?:option|choice))\s*:?\s*\(?([A-J])(?![\w-])"),  # "Option A", "choice (C)"
    re.compile(r"(?<![\w-])([A-J])\)?\s*(?:,|/|\bor\b|\band\b)\s*\(?(?=([A-J])(?![\w-]))"),  # "C or D", "A, B"
)


def _norm(text: str) -> str:
    return " ".join(words(text))


def _within(part: str, whole: str) -> bool:
    """Whether normalised `part` is a run of whole words of normalised `whole` ("iron" is not in "environmental")."""
    return f" {part} " in f" {whole} "


def _stated_letters(answer: str, options: dict[str, str]) -> tuple[set[str], str]:
    """The option letters the answer states as letters, and its text with those letter markers blanked out. Option
    texts (as written, two characters or more) are masked first: the letters of "V(D)J recombination" or "vitamins
    A, D, E, and K" are not stated, while option "C" of a question whose options are letters still is."""
    masked = answer
    for text in sorted((t.strip() for t in options.values() if len(t.strip()) > 1), key=len, reverse=True):
        masked = re.sub(rf"(?<!\w){re.escape(text)}(?!\w)", lambda m: " " * len(m.group()), masked)
    letters, rest = set(), list(answer)
    for pattern in _LETTER_PATTERNS:
        for m in pattern.finditer(masked):
            letters |= {g for g in m.groups() if g in options}
            rest[m.start() : m.end()] = " " * (m.end() - m.start())
    return letters, "".join(rest)


def _named_texts(text: str, options: dict[str, str]) -> set[str]:
    """Letters of the options whose whole text the text contains, as whole words; an option whose text is part of
    another named option's text is not named on its own ("iron deficiency anemia" names only that, not "anemia")."""
    said = _norm(text)
    hits = {letter: _norm(t) for letter, t in options.items() if _norm(t) and _within(_norm(t), said)}
    return {letter for letter, t in hits.items() if not any(t != u and _within(t, u) for u in hits.values())}


def named_options(answer: str | None, options: dict[str, str]) -> list[str]:
    """The letters of every option an answer names, by letter or by text, sorted. A stated letter followed by a
    prefix of its own text ("B. Anemia" for "Anemia of chronic disease") names that option only; followed by
    another option's text it names both ("B. Intravenous methylprednisolone" while that is option A's text)."""
    if not answer or not options:
        return []
    letters, rest = _stated_letters(answer, options)
    texts = _named_texts(rest, options)
    if len(letters) == 1:  # text inside the stated option's own text names nothing more
        own = _norm(options[next(iter(letters))])
        texts = {t for t in texts if not _within(_norm(options[t]), own)}
    return sorted(letters | texts)


def extract_answer(answer: str | None, options: dict[str, str]) -> tuple[str | None, str]:
    """(letter, text) of an answer. MCQ: the one option it names (`named_options`), else (None, answer): naming
    none or several is no answer. Open questions: (None, text)."""
    if not answer:
        return None, ""
    answer = answer.strip()
    named = named_options(answer, options)
    if len(named) == 1:
        return named[0], options[named[0]]
    return None, answer


SAME_TEXT_F1 = 0.8  # token F1 at which a free-text answer says the gold text (2 of its 3 words)


def is_correct(answer: str | None, question: Question) -> bool:
    """Whether an answer is right: for a multiple-choice question it names the gold option and no other
    (`extract_answer`); for an open one it equals the gold text after normalisation or has token F1 >= 0.8 with it.
    No answer is never right. Training metrics, evaluation and the answer reward's full credit all use this."""
    if not answer or not answer.strip():
        return False
    if question.options and question.answer_letter:
        return extract_answer(answer, question.options)[0] == question.answer_letter
    if normalize(answer) == normalize(question.answer_text):
        return True
    return token_f1(answer, question.answer_text) + 1e-9 >= SAME_TEXT_F1  # 2 of 3 words is exactly 0.8: no float loss


@dataclass
class ResponseBuilder:
    """Builds one trajectory's response token by token span, keeping the loss mask aligned.

    `ids`, `mask` and `logprobs` always have equal length; mask 1 = generated by the policy (trained on),
    0 = inserted by the system (documents; never trained on, logprob 0.0 as a placeholder).
    """

    ids: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)

    def add_generated(self, ids: Sequence[int], logprobs: Sequence[float]) -> None:
        if len(ids) != len(logprobs):
            raise ValueError(f"{len(ids)} generated ids but {len(logprobs)} logprobs")
        self.ids += ids
        self.mask += [1] * len(ids)
        self.logprobs += logprobs

    def add_inserted(self, ids: Sequence[int]) -> None:
        self.ids += ids
        self.mask += [0] * len(ids)
        self.logprobs += [0.0] * len(ids)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def generated_tokens(self) -> int:
        return sum(self.mask)
