"""Supervised warm-start demonstrations of the protocol: the cold start before GRPO.

A 135M model never writes ``<think>…</think><answer>…</answer>`` by sampling, so GRPO would see no reward to learn
from. The warm start trains on demonstrations of three kinds, built from training files only:

- reasoning (HuatuoGPT-o1): the reference chain of thought, cut at a sentence end to fit the budget, a closing line
  naming the gold option, then the gold answer (HuatuoGPT's `Response` is not used: its first sentence names a
  wrong option, or none, far more often than the gold one);
- mcq (HEAD-QA train): a one-line note that names the gold option (never a copy of the question), then the answer;
- search (PubMedQA non-test and HEAD-QA train by default): a lead-in and a ``<search>`` query, the documents our
  retriever returns inserted exactly as the rollout inserts them (`protocol.documents_text`, mask 0), a quote of the
  evidence, then the gold answer.

Each demo is tokenised span by span and the ids concatenated, as a rollout appends them, so the learner trains on the
ids a rollout would produce. A seeded hash of the question id keeps warm-up and RL questions disjoint.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from medr3.config import WarmupConfig
from medr3.data import Question, load_dataset
from medr3.packing import TrainSample
from medr3.protocol import ResponseBuilder, build_prompt, documents_text, strip_tags, truncate_document
from medr3.rollout import RolloutSettings, SearchFn

log = logging.getLogger(__name__)

KINDS = ("reasoning", "mcq", "search")
QUERY_WORDS = 16  # a search query is the question capped to this many words
QUOTE_WORDS = 30

# Fixed phrasings, one picked per question: enough variety that the model does not learn a single string. The letter
# comes first: naming the option's text first made SmolLM2 paraphrase options and mislabel them (docs/method.md §2).
_MCQ_NOTES = (
    "Option {letter}, {text}, fits best.",
    "Weighing the options, {letter} ({text}) is the most accurate.",
    "Of the choices, {letter} is the best supported: {text}.",
)
_LEADS = (
    "I should check the literature before deciding.",
    "Let me look for evidence on this.",
    "I need published evidence to answer this.",
)
_FILLER = {"is", "are", "was", "were", "does", "do", "did", "can", "could", "should", "would", "will", "has", "have"}
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def is_warmup(question_id: str, seed: int, fraction: float) -> bool:
    """Whether a question belongs to the warm start: a hash of (seed, id) read as a uniform number in [0, 1)."""
    digest = hashlib.blake2b(f"{seed}/{question_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < fraction


def split_warmup(questions: Sequence[Question], seed: int, fraction: float) -> tuple[list[Question], list[Question]]:
    """(warm-up questions, RL questions), disjoint, each in the input order."""
    warm = [is_warmup(q.id, seed, fraction) for q in questions]
    return [q for q, w in zip(questions, warm) if w], [q for q, w in zip(questions, warm) if not w]


@dataclass(frozen=True)
class Demo:
    """One demonstration. `loss_mask` runs over `response_ids`: 1 = tokens the model should learn to write
    (reasoning, queries, answer, EOS), 0 = inserted documents."""

    question_id: str
    kind: str
    prompt_ids: list[int]
    response_ids: list[int]
    loss_mask: list[int]

    def train_sample(self) -> TrainSample:
        """The demo as a learner sample: advantage 1 and zero old logprobs, so the learner's packing applies."""
        n = len(self.response_ids)
        return TrainSample(
            self.prompt_ids + self.response_ids, len(self.prompt_ids), list(self.loss_mask), [0.0] * n, 1.0
        )


@dataclass
class DemoReport:
    """What `build_demos` built per kind, which questions it skipped: (kind, question id, reason), and by how many
    questions a kind's warm-up split fell short of what was requested (`short`)."""

    requested: dict[str, int] = field(default_factory=dict)
    built: dict[str, int] = field(default_factory=dict)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)
    short: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        kinds = ", ".join(f"{k} {self.built.get(k, 0)}/{n}{self._shortfall(k)}" for k, n in self.requested.items())
        return f"demos built (of requested): {kinds}; {len(self.skipped)} skipped"

    def _shortfall(self, kind: str) -> str:
        return f" (its warm-up split is {self.short[kind]} questions short)" if self.short.get(kind) else ""

    def add(self, other: DemoReport) -> None:
        """Count `other`'s demos in with these (one report for demos built from several files)."""
        for kind, n in other.requested.items():
            self.requested[kind] = self.requested.get(kind, 0) + n
            self.built[kind] = self.built.get(kind, 0) + other.built.get(kind, 0)
        for kind, n in other.short.items():
            self.short[kind] = self.short.get(kind, 0) + n
        self.skipped += other.skipped


def demo_plan(warmup: WarmupConfig, seed: int) -> list[tuple[str, list[Question], int]]:
    """`(kind, warm-up questions of one training file, demos to build from it)` for every kind with a share in
    `warmup.mix`: a kind gets its share of `steps × batch_size`, split evenly over its files."""
    total = warmup.steps * warmup.batch_size
    plan = []
    for kind, share in warmup.mix.items():
        count, specs = round(total * share / sum(warmup.mix.values())), warmup.specs()[kind]
        for i, spec in enumerate(specs if share else ()):
            questions = split_warmup(load_dataset(spec)[0], seed, warmup.fraction)[0]
            plan.append((kind, questions, count // len(specs) + (i < count % len(specs))))
    return plan


def build_demos(
    tokenizer,
    questions_by_kind: Mapping[str, Sequence[Question]],
    counts: Mapping[str, int],
    settings: RolloutSettings,
    search_fn: SearchFn | None = None,
) -> tuple[list[Demo], DemoReport]:
    """Up to `counts[kind]` demos of each kind from `questions_by_kind[kind]`, interleaved in a seeded order.

    Questions are drawn in a seeded shuffle; one that cannot fit `settings.max_response_tokens` and
    `settings.max_model_len` is skipped and reported, never truncated. Search demos make one batched `search_fn`
    call. Returns the demos and a report of what was built and skipped.
    """
    unknown = sorted(set(counts) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown demo kind(s) {unknown}; known: {list(KINDS)}")
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token to end demonstrations with")
    report = DemoReport(requested=dict(counts))
    built = []
    for kind, count in counts.items():
        chosen = _choose(questions_by_kind.get(kind, ()), kind, count, settings.seed)
        if len(chosen) < count:
            report.short[kind] = count - len(chosen)
        if kind == "search":
            pieces = _search_pieces(tokenizer, chosen, settings, search_fn)
        elif kind == "reasoning":
            pieces = [_reasoning_pieces(tokenizer, q, settings) for q in chosen]
        else:
            pieces = [_mcq_pieces(q, settings.seed) for q in chosen]
        for q, spans in zip(chosen, pieces, strict=True):
            demo = _assemble(tokenizer, q, kind, spans, settings)
            if isinstance(demo, str):
                report.skipped.append((kind, q.id, demo))
                log.debug("demo %s/%s skipped: %s", kind, q.id, demo)
            else:
                built.append(demo)
        report.built[kind] = sum(d.kind == kind for d in built)
    random.Random(f"{settings.seed}/demos/order").shuffle(built)
    return built, report


def _choose(questions: Sequence[Question], kind: str, count: int, seed: int) -> list[Question]:
    mirage = [q.id for q in questions if q.source.startswith("mirage")]
    if mirage:
        raise ValueError(f"{kind} demos from MIRAGE questions ({mirage[:3]}…): MIRAGE is evaluation data only")
    order = list(questions)
    random.Random(f"{seed}/demos/{kind}").shuffle(order)
    return order[:count]


# A demo's response as spans of (text, inserted), in order; a plain string instead is why the question is skipped.
Spans = list[tuple[str, bool]] | str


def _option(q: Question) -> str:
    """The gold option's text as said inside a sentence (tags stripped, no final period)."""
    return strip_tags(q.answer_text).strip().rstrip(".")


def _answer(q: Question) -> str:
    return f"</think>\n<answer>{q.answer_letter}. {strip_tags(q.answer_text).strip()}</answer>"


def _mcq_pieces(q: Question, seed: int) -> Spans:
    note = random.Random(f"{seed}/{q.id}").choice(_MCQ_NOTES)
    return [(note.format(letter=q.answer_letter, text=_option(q)) + _answer(q), False)]


def _reasoning_pieces(tokenizer, q: Question, settings: RolloutSettings) -> Spans:
    if not q.references:
        return "no reference reasoning"
    tail = f"\n\nSo the answer is {q.answer_letter}, {_option(q)}." + _answer(q)
    prompt = build_prompt(q, tokenizer, search=False)
    fixed = _count(tokenizer, prompt), _count(tokenizer, tail) + 1  # + EOS
    room = min(settings.max_response_tokens - fixed[1], settings.max_model_len - fixed[0] - fixed[1])
    head = _fit_sentences(tokenizer, strip_tags(q.references[0]).strip(), room)
    if not head:
        return "no room for a sentence of reasoning"
    return [(head + tail, False)]


def _search_pieces(tokenizer, chosen: list[Question], settings: RolloutSettings, search_fn) -> list[Spans]:
    if not chosen:
        return []
    if search_fn is None or settings.max_searches < 1:
        raise ValueError("search demos need a search function and max_searches >= 1")
    queries = [search_query_for(q.question) for q in chosen]
    results = search_fn(queries)
    if len(results) != len(queries):
        raise ValueError(f"search_fn returned {len(results)} results for {len(queries)} queries")
    out = []
    for q, query, docs in zip(chosen, queries, results, strict=True):
        lead = random.Random(f"{settings.seed}/{q.id}").choice(_LEADS)
        inserted = documents_text(docs, tokenizer, settings.max_document_tokens)
        evidence = _evidence(tokenizer, docs, query, settings.max_document_tokens)
        decision = f"\n\nGiven this evidence, the answer is {_option(q)}."
        out.append(
            [(f"{lead} <search>{query}</search>", False), (inserted, True), (evidence + decision + _answer(q), False)]
        )
    return out


def _assemble(tokenizer, q: Question, kind: str, spans: Spans, settings: RolloutSettings) -> Demo | str:
    """Tokenise the prompt and each span separately (as a rollout appends them) and check the budgets."""
    if isinstance(spans, str):
        return spans
    prompt_ids = tokenizer(
        build_prompt(q, tokenizer, search=kind == "search", max_searches=settings.max_searches),
        add_special_tokens=False,
    ).input_ids
    response = ResponseBuilder()
    for text, inserted in spans:
        ids = tokenizer(text, add_special_tokens=False).input_ids
        if inserted:
            response.add_inserted(ids)
        else:
            response.add_generated(ids, [0.0] * len(ids))
    response.add_generated([tokenizer.eos_token_id], [0.0])
    if len(response) > settings.max_response_tokens:
        return f"response of {len(response)} tokens exceeds max_response_tokens {settings.max_response_tokens}"
    if len(prompt_ids) + len(response) > settings.max_model_len:
        return f"prompt + response of {len(prompt_ids) + len(response)} tokens exceeds max_model_len"
    return Demo(q.id, kind, prompt_ids, response.ids, response.mask)


def search_query_for(question: str) -> str:
    """A search query from a question: tags and the question mark dropped, a leading auxiliary verb ("Does",
    "Is", …) dropped, at most `QUERY_WORDS` words."""
    words = strip_tags(question).replace("?", " ").split()
    if len(words) > 1 and words[0].lower() in _FILLER:
        words = words[1:]
    return " ".join(words[:QUERY_WORDS]).strip(" ,;:.")


def _count(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False).input_ids)


def _sentences(text: str) -> list[str]:
    """Complete sentences of `text` (a trailing fragment without end punctuation is dropped), whitespace collapsed."""
    cuts = [m.end() for m in _SENTENCE_END.finditer(text)]
    return [" ".join(text[a:b].split()) for a, b in zip([0, *cuts], cuts)]


def _fit_sentences(tokenizer, text: str, room: int) -> str:
    """The longest prefix of `text` that ends a sentence and has at most `room` tokens ("" if none)."""
    best = ""
    for m in _SENTENCE_END.finditer(text):
        head = text[: m.end()]
        if _count(tokenizer, head) > room:
            break
        best = head
    return best


def _evidence(tokenizer, docs: Sequence[dict], query: str, max_document_tokens: int) -> str:
    """A quote citing its document: the last inserted sentence of the first document that shares a content word
    with the query (an abstract's later sentences are its results), else the first document's last sentence.

    Quotes come from the text as inserted (after truncation), so the demo never cites what the model did not see.
    """
    wanted = {w for w in _norm(query).split() if len(w) > 3}  # content words, roughly
    quotes = []  # (document number, its sentences), documents in order
    for i, doc in enumerate(docs, 1):
        text = strip_tags(str(truncate_document(doc, tokenizer, max_document_tokens).get("text", "")))
        quotes.append((i, _sentences(text) or ([" ".join(text.split())] if text.strip() else [])))
    relevant = [(i, [s for s in ss if wanted & set(_norm(s).split())]) for i, ss in quotes]
    found = next(((i, ss[-1]) for i, ss in relevant + quotes if ss), None)
    if found is None:
        return "The search found nothing useful, so I rely on what I know."
    number, quote = found
    words = quote.split()
    quote = " ".join(words[:QUOTE_WORDS]) + (" ..." if len(words) > QUOTE_WORDS else "")
    return f'Document ({number}) says: "{quote}"'


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())
