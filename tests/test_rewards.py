"""Reward terms and the release composition on hand-built trajectories with known outcomes (no Ray, no model)."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from medr3.config import RewardComposition, RewardConfig
from medr3.data import Question
from medr3.protocol import format_documents, is_correct
from medr3.rewards import get_term, registered_terms
from medr3.rewards.composition import compose, gain_weights
from medr3.rewards.inputs import RewardContext, RewardInput
from medr3.rewards.scorer import BatchScores, RewardScorer
from medr3.rewards.vocabulary import Vocabulary, build_vocabulary

REFERENCE = (
    "The hemoglobin is low, so this is severe anemia. The reticulocyte count is low, so the bone marrow is not "
    "responding. In a patient with sickle cell disease, parvovirus B19 infects erythroid precursors and causes an "
    "aplastic crisis. So the answer is parvovirus B19 infection."
)
UNRELATED = "Smoking and alcohol raise blood pressure over years; hypertension then damages the kidneys."
OPTIONS = {
    "A": "Benign genetic carrier condition",
    "B": "Folate deficiency",
    "C": "Iron deficiency",
    "D": "Parvovirus B19 infection",
    "E": "Vitamin B12 deficiency",
}
MCQ = Question(
    "q-mcq",
    "A man with sickle cell disease has hemoglobin 6 g/dL and reticulocytes 0.4%. Which of the "
    "following is associated with the most likely diagnosis?",
    OPTIONS,
    "D",
    OPTIONS["D"],
    references=(UNRELATED, REFERENCE),
    source="huatuo",
)
OPEN = Question("q-open", "Which virus causes aplastic crisis in sickle cell disease?", {}, None, OPTIONS["D"])
PUBMED = Question(
    "q-pm",
    "Does parvovirus B19 cause aplastic crisis?",
    {"A": "yes", "B": "no", "C": "maybe"},
    "A",
    "yes",
    evidence_ids=("111",),
)
VOCAB = Vocabulary.of(
    [
        "anemia",
        "hemoglobin",
        "reticulocyte count",
        "bone marrow",
        "sickle cell disease",
        "parvovirus b19",
        "aplastic crisis",
        "erythroid precursors",
        "iron deficiency",
        "blood pressure",
        "kidneys",
        "smoking",
        "alcohol",
    ]
)
DOC_HIT = {
    "id": "pubmed:111",
    "doc_id": "111",
    "title": "Parvovirus B19 and aplastic crisis",
    "text": "Parvovirus B19 infects erythroid precursors in the bone marrow and causes aplastic crisis in "
    "sickle cell disease.",
    "source": "pubmedqa_abstract",
    "score": 0.9,
}
DOC_MISS = {
    "id": "medquad:1",
    "doc_id": "medquad:1",
    "title": "Iron deficiency",
    "text": "Iron deficiency anemia is common in women.",
    "source": "medquad",
    "score": 0.5,
}
RELEASE = RewardComposition.release()
LONG_THINK = "The reticulocyte count is low in this anemia, so the bone marrow fails as in an aplastic crisis."


def bag_of_words_embedder(texts):
    """Deterministic fake embedder: hashed word counts, unit-normalised (identical texts → cosine 1)."""
    out = np.zeros((len(texts), 64))
    for i, text in enumerate(texts):
        for word in text.lower().split():
            out[i, zlib.crc32(word.encode()) % 64] += 1.0
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


CTX = RewardContext(RewardConfig(think_min_words=10, think_max_words=100), bag_of_words_embedder, VOCAB)


def response(
    think: str = LONG_THINK, answer: str | None = "D. Parvovirus B19 infection", searches=(), tail: str = ""
) -> str:
    """A response as the rollout builds it: think (with searches and inserted documents), then the answer."""
    parts = [think]
    for search in searches:
        parts.append(f" <search>{search['query']}</search>{format_documents(search['documents'])}")
    parts.append("</think>")
    if answer is not None:
        parts.append(f"<answer>{answer}</answer>")
    return "".join(parts) + tail


def item(
    question: Question = MCQ,
    *,
    think: str = LONG_THINK,
    answer: str | None = "D. Parvovirus B19 infection",
    tail: str = "",
    text: str | None = None,
    searches=(),
    **flags,
) -> RewardInput:
    """A trajectory for `question`; Lmax 1000 tokens with a 200-token overlong buffer."""
    searches = list(searches)
    text = response(think, answer, searches, tail) if text is None else text
    flags.setdefault("search_allowed", bool(searches))
    flags.setdefault("response_tokens", 100)
    return RewardInput(question, text, searches, max_response_tokens=1000, overlong_buffer=200, **flags)


def term(name: str, it: RewardInput, ctx: RewardContext = CTX):
    return get_term(name)(it, ctx)


def search(query: str, *docs: dict) -> dict:
    return {"query": query, "doc_ids": [d["doc_id"] for d in docs], "documents": list(docs)}


def test_all_release_terms_are_registered():
    assert registered_terms() >= {
        "answer",
        "format",
        "think_length",
        "language",
        "overlong",
        "clinical_consistency",
        "evidence",
        "search_quality",
        "judge",
    }


# --- answer ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("question", "answer", "expected"),
    [
        (MCQ, "D. Parvovirus B19 infection", 1.0),  # right letter
        (MCQ, "It is parvovirus B19 infection", 1.0),  # right option named without its letter
        (MCQ, "C. Iron deficiency", 0.1),  # wrong letter
        (MCQ, "a parvovirus", 0.4),  # no option named: free text, partial overlap with the gold option
        (MCQ, "Parvovirus B19", 0.4),  # close to the gold text but naming no option: at most partial
        (MCQ, "Parvovirus B19 infection or iron deficiency", 0.1),  # naming two options earns nothing for hedging
        (MCQ, "D. Iron deficiency", 0.1),  # the gold letter with another option's text
        (OPEN, "parvovirus B19 infection.", 1.0),  # normalised exact match
        (OPEN, "Parvovirus B19", 1.0),  # token F1 0.8
        (OPEN, "a viral infection", 0.4),  # token F1 0.4: partial
        (OPEN, "Iron deficiency", 0.1),  # wrong
        (OPEN, None, 0.0),  # missing answer scores below a wrong one
        (OPEN, "   ", 0.0),
    ],
)
def test_answer_term_grades_full_partial_wrong_missing(question, answer, expected):
    assert term("answer", item(question, answer=answer)) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("question", "answer"),
    [
        (MCQ, "D"),
        (MCQ, "parvovirus b19 infection"),
        (MCQ, "Parvovirus B19"),
        (MCQ, "D or C"),
        (MCQ, "Iron deficiency"),
        (OPEN, "Parvovirus B19"),
        (OPEN, "a viral infection"),
        (PUBMED, "Yes."),
        (PUBMED, "Unknown"),
        (PUBMED, None),
    ],
)
def test_answer_term_gives_full_credit_exactly_when_the_answer_is_correct(question, answer):
    assert (term("answer", item(question, answer=answer)) == 1.0) is is_correct(answer, question)


# --- format, think length, language, overlong -----------------------------------------------------------------------


def test_format_term_accepts_a_well_formed_response_with_searches():
    it = item(searches=[search("parvovirus aplastic crisis", DOC_HIT)])
    assert term("format", it) == 1.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"answer": None},  # no answer
        {"tail": " and more text"},  # text after </answer>
        {"self_document": True},  # the model wrote <document> itself
        {"searches": [search("parvovirus", DOC_HIT)], "search_allowed": False},  # search in the no-search stage
    ],
)
def test_format_term_scores_bad_format_zero(kwargs):
    assert term("format", item(**kwargs)) == 0.0


def test_think_length_term_is_one_in_range_and_falls_off_outside():
    assert term("think_length", item(think="word " * 20)) == 1.0
    assert term("think_length", item(think="word " * 5)) == pytest.approx(0.5)  # half the minimum of 10
    assert term("think_length", item(think="word " * 150)) == pytest.approx(0.5)  # 50 over a maximum of 100
    assert term("think_length", item(think="word " * 250)) == 0.0
    assert term("think_length", item(text="<answer>D</answer>")) == 0.0


def test_think_length_ignores_inserted_documents():
    long_doc = dict(DOC_HIT, text="filler " * 500)
    assert term("think_length", item(think="word " * 20, searches=[search("parvovirus anemia", long_doc)])) == 1.0


def test_language_term_matches_the_question_script_and_ignores_documents():
    assert term("language", item()) == 1.0
    assert term("language", item(think="这是再生障碍危象，由细小病毒引起。" * 3, answer="D")) < 0.2
    chinese_doc = dict(DOC_HIT, title="细小病毒", text="细小病毒感染骨髓中的红系前体细胞。" * 5)
    assert term("language", item(searches=[search("parvovirus crisis", chinese_doc)])) == 1.0


@pytest.mark.parametrize(("tokens", "expected"), [(100, 0.0), (800, 0.0), (900, -0.5), (1000, -1.0), (1500, -1.0)])
def test_overlong_term_is_dapo_soft_penalty(tokens, expected):
    # Lmax 1000, buffer 200: no penalty up to 800 tokens, then linear to -1 at 1000.
    assert term("overlong", item(response_tokens=tokens)) == pytest.approx(expected)


@given(st.integers(0, 3000), st.integers(0, 999))
def test_overlong_term_stays_in_range_and_never_rewards(tokens, buffer):
    it = RewardInput(OPEN, "", response_tokens=tokens, max_response_tokens=1000, overlong_buffer=buffer)
    assert -1.0 <= term("overlong", it) <= 0.0


# --- clinical consistency -------------------------------------------------------------------------------------------


def test_clinical_consistency_is_best_agreement_with_any_reference():
    same = term("clinical_consistency", item(think=REFERENCE))
    assert same == pytest.approx(1.0)  # identical to the second reference: every component is 1
    off = term("clinical_consistency", item(think="Iron deficiency from poor diet explains the anemia."))
    assert 0.0 <= off < 0.4


def test_clinical_consistency_rewards_shared_entities_and_concept_path():
    close = "Severe anemia, low reticulocyte count: the bone marrow stops, an aplastic crisis from parvovirus B19."
    far = "Hemoglobin is low. Iron deficiency from poor diet is likely."
    assert term("clinical_consistency", item(think=close)) > term("clinical_consistency", item(think=far))


def test_clinical_consistency_is_skipped_without_references():
    assert term("clinical_consistency", item(OPEN)) is None


def test_clinical_consistency_without_reasoning_scores_zero():
    assert term("clinical_consistency", item(text="<answer>D</answer>")) == 0.0


def test_clinical_consistency_needs_an_embedder():
    with pytest.raises(ValueError, match="embedder"):
        term("clinical_consistency", item(), RewardContext(vocabulary=VOCAB))


# --- evidence and search quality ------------------------------------------------------------------------------------


def test_evidence_is_zero_when_search_is_required_and_none_made():
    required = item(PUBMED, search_allowed=True, require_search=True)
    assert term("evidence", required) == 0.0
    assert term("search_quality", required) == 0.0


def test_evidence_is_skipped_only_where_search_is_not_allowed():
    assert term("evidence", item(PUBMED, search_allowed=False)) is None
    assert term("evidence", item(PUBMED, search_allowed=True)) == 0.0  # could have searched and did not
    assert term("search_quality", item(PUBMED)) is None
    assert term("search_quality", item(PUBMED, search_allowed=True)) is None  # only required search scores it


JOINT = RewardComposition(
    gain={"answer": 1.0, "clinical_consistency": 0.8, "evidence": 0.5},
    floor=0.0,
    penalty={"format": 0.1, "think_length": 0.1, "language": 0.1},
    shaping={"overlong": 1.0},
)


@pytest.mark.parametrize("doc", [DOC_HIT, DOC_MISS])
def test_not_searching_never_outscores_searching_when_search_is_allowed(doc):
    silent = item(think=REFERENCE, search_allowed=True)
    searching = item(think=REFERENCE, searches=[search("parvovirus aplastic crisis", doc)], search_allowed=True)
    silent_scores, searching_scores = scores_of(silent, JOINT), scores_of(searching, JOINT)
    assert searching_scores["evidence"] >= 0.0 and silent_scores["evidence"] == 0.0
    # A skipped evidence term would hand its 0.5 to the others: 1.8 * 2.3 / 1.8 = 2.3 > 1.8 + 0.5 * evidence.
    assert compose(searching_scores, JOINT) >= compose(silent_scores, JOINT)


def test_evidence_scores_gold_hit_and_grounding():
    think = "Parvovirus B19 infects erythroid precursors and causes aplastic crisis."
    hit = item(PUBMED, think=think, answer="A. yes", searches=[search("parvovirus B19 aplastic crisis", DOC_HIT)])
    assert term("evidence", hit) == pytest.approx(1.0)  # gold PMID found; all three entities in the document
    miss = item(PUBMED, think=think, answer="A. yes", searches=[search("iron deficiency anemia", DOC_MISS)])
    assert term("evidence", miss) == pytest.approx(0.0)  # wrong document, none of its entities grounded


def test_evidence_grounding_alone_when_no_gold_ids():
    think = "Parvovirus B19 causes aplastic crisis; smoking is unrelated."
    it = item(OPEN, think=think, answer="Parvovirus B19", searches=[search("parvovirus aplastic crisis", DOC_HIT)])
    assert term("evidence", it) == pytest.approx(2 / 3)  # parvovirus b19, aplastic crisis found; smoking not


def test_search_quality_rewards_distinct_relevant_queries():
    good = item(searches=[search("parvovirus B19 aplastic crisis", DOC_HIT), search("iron deficiency", DOC_MISS)])
    assert term("search_quality", good) == pytest.approx(1.0)
    repeated = item(searches=[search("parvovirus B19 aplastic crisis", DOC_HIT)] * 2)
    assert term("search_quality", repeated) == pytest.approx(0.75)  # one of two queries is a duplicate
    vague = item(searches=[search("kidney transplant rejection", DOC_HIT)])
    assert term("search_quality", vague) == pytest.approx(0.5)  # well-formed but its documents do not match it
    one_word = item(searches=[search("parvovirus", DOC_HIT)])
    assert term("search_quality", one_word) == pytest.approx(0.5)


# --- composition ----------------------------------------------------------------------------------------------------


def scores_of(it: RewardInput, composition: RewardComposition = RELEASE) -> dict:
    return {name: term(name, it) for name in composition.term_names()}


def test_release_composition_right_answer_with_matching_reasoning():
    it = item(think=REFERENCE)
    s = scores_of(it)
    assert s["answer"] == 1.0 and s["clinical_consistency"] == pytest.approx(1.0)
    assert s["format"] == s["think_length"] == s["language"] == 1.0 and s["overlong"] == 0.0
    assert compose(s, RELEASE) == pytest.approx(1.8)


def test_release_composition_wrong_answer():
    s = scores_of(item(think=REFERENCE, answer="C. Iron deficiency"))
    assert compose(s, RELEASE) == pytest.approx(0.1 + 0.8 * s["clinical_consistency"])


def test_release_composition_redistributes_a_skipped_term():
    s = scores_of(item(OPEN, think="word " * 20, answer="Parvovirus B19 infection"))
    assert s["clinical_consistency"] is None
    assert gain_weights(s, RELEASE) == {"answer": pytest.approx(1.8)}
    assert compose(s, RELEASE) == pytest.approx(1.8)  # not 1.0, as scoring the missing term 0 would give


def test_release_composition_penalises_a_self_written_document_by_the_format_weight():
    clean = compose(scores_of(item(think=REFERENCE)), RELEASE)
    forged = compose(scores_of(item(think=REFERENCE, self_document=True)), RELEASE)
    assert forged == pytest.approx(clean - 0.1)


def test_release_composition_bad_format_and_no_answer_is_negative():
    s = scores_of(item(OPEN, think="", answer=None))
    # gain clamps at the floor 0; format 0, think length 0 and no letters (language 0) each cost 0.1
    assert compose(s, RELEASE) == pytest.approx(-0.3)


def test_release_composition_adds_the_overlong_penalty():
    base = compose(scores_of(item(think=REFERENCE)), RELEASE)
    long = compose(scores_of(item(think=REFERENCE, response_tokens=900)), RELEASE)
    assert long == pytest.approx(base - 0.5)


def test_floor_none_lets_negative_gain_through():
    composition = RewardComposition(gain={"judge": 1.0}, floor=None)
    assert compose({"judge": -1.0}, composition) == -1.0
    assert compose({"judge": -1.0}, RewardComposition(gain={"judge": 1.0})) == 0.0


def test_composition_rejects_negative_weights():
    with pytest.raises(ValueError, match="penalty.format"):
        RewardComposition(penalty={"format": -0.1})


# --- scorer and vocabulary ------------------------------------------------------------------------------------------


def test_scorer_totals_equal_the_composed_pure_terms():
    forged_long = item(self_document=True, response_tokens=950)
    batch = [item(think=REFERENCE), item(OPEN, answer="Iron deficiency"), forged_long]
    scorer = RewardScorer(
        RewardConfig(think_min_words=10, think_max_words=100), embedder=bag_of_words_embedder, vocabulary=VOCAB
    )
    result = scorer.score(batch, RELEASE)
    assert [r["terms"] for r in result.items] == [pytest.approx(scores_of(it)) for it in batch]
    assert result.totals == pytest.approx([compose(scores_of(it), RELEASE) for it in batch])
    metrics = result.metrics()
    assert metrics["reward/total"] == pytest.approx(sum(result.totals) / 3)
    assert metrics["reward/clinical_consistency"] == pytest.approx(
        (result.items[0]["terms"]["clinical_consistency"] + result.items[2]["terms"]["clinical_consistency"]) / 2
    )


def test_batch_scores_merge_keeps_order_and_sums_counters():
    a = BatchScores([{"total": 1.0, "terms": {}}], {"judge/failures": 1})
    b = BatchScores([{"total": 0.0, "terms": {}}], {"judge/failures": 2})
    merged = BatchScores.merge([a, b])
    assert merged.totals == [1.0, 0.0] and merged.counters == {"judge/failures": 3}


def test_vocabulary_from_corpus_titles_names_diseases_not_boilerplate(root):
    vocab = build_vocabulary(root / "data/corpus")
    assert {"wilson disease", "osteoporosis", "cardiac output"} <= vocab.phrases
    assert not {"preface", "learning objectives", "expect", "primary"} & vocab.phrases
    found = vocab.entities("Wilson disease damages the liver; hepatitis and cirrhosis follow.")
    assert found[0] == "wilson disease" and {"hepatitis", "cirrhosis"} <= set(found)


def test_entity_rule_prefers_longest_phrase_and_applies_suffix_rule():
    vocab = Vocabulary.of(["anemia", "iron deficiency anemia", "iron"])
    assert vocab.entities("Iron deficiency anemia, then anemias and glomerulonephritis.") == [
        "iron deficiency anemia",
        "anemia",
        "glomerulonephritis",
    ]
