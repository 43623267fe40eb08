"""The rollout protocol: prompts, tags, format rules, answer extraction and loss masks.

The model reasons in ``<think>…</think>`` and answers in ``<answer>…</answer>``; inside ``<think>`` it may write
``<search>query</search>``, after which the system inserts the top documents as ``<document>…</document>`` spans and
generation continues (DESIGN §2). Tags are plain text, so any tokenizer works (real models split them into several
tokens): stops are strings, never token ids. Inserted documents are masked out of the loss.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from medr3.data import Question

SEARCH_STOP = "</search>"
ANSWER_STOP = "</answer>"
DOCUMENT_OPEN = "<document>"  # a stop too: a model that starts writing a document itself is cut off there
PROTOCOL_TAGS = ("think", "search", "document", "answer")

_TAG = re.compile(r"<\s*/?\s*(?:think|search|document|answer|information|result)s?\s*>", re.IGNORECASE)
_ANY_TAG = re.compile(r"<(/?)(think|search|document|answer)>")

_GUIDE = (
    "Answer the medical question below. First reason step by step inside <think> and </think>. "
    "{search}When you have reasoned enough, give the final answer inside <answer> and </answer>: "
    "for a multiple-choice question the option letter and its text, for example <answer>B. Iron deficiency</answer>."
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


def wrote_document_tag(text: str) -> bool:
    """Whether generated text contains a ``<document>`` tag: the model imitating the system (a format error)."""
    return "<document>" in text or "</document>" in text


@dataclass
class Parsed:
    think: str = ""
    searches: list[str] = field(default_factory=list)
    answer: str | None = None
    documents: int = 0


def parse(text: str) -> Parsed:
    """Pull the parts of a (possibly malformed) response out by tag; never raises."""
    out = Parsed()
    think = re.search(r"<think>(.*?)(?:</think>|$)", text, re.DOTALL)
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
    body = text.strip()
    if not body.startswith("<think>"):
        body = "<think>" + body  # the prompt ends with <think>, so responses usually start inside it
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


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


_LETTER_PATTERNS = (
    re.compile(r"^\(?([A-J])\)?(?:[.):\s]|$)"),
    re.compile(r"(?:answer|option|choice)\s*(?:is|:)?\s*\(?([A-J])\)?(?:[.):\s]|$)", re.IGNORECASE),
)


def extract_answer(answer: str | None, options: dict[str, str]) -> tuple[str | None, str]:
    """(letter, text) of an answer. MCQ: a leading or stated option letter, else the option whose text it contains
    (the longest such option, so "iron deficiency anemia" wins over "anemia"). Open questions: (None, text)."""
    if not answer:
        return None, ""
    answer = answer.strip()
    if not options:
        return None, answer
    for pattern in _LETTER_PATTERNS:
        m = pattern.search(answer)
        if m and m.group(1) in options:
            return m.group(1), options[m.group(1)]
    said = _norm(answer)
    hits = [(len(_norm(t)), letter) for letter, t in options.items() if _norm(t) and _norm(t) in said]
    if hits:
        letter = max(hits)[1]
        return letter, options[letter]
    return None, answer


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
