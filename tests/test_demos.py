"""Warm-start demonstrations from the bundled training files: format, gold answers, masks, budgets and the split."""

import pytest

from medr3.data import Question, load_headqa, load_huatuo, load_pubmedqa
from medr3.demos import build_demos, is_warmup, search_query_for, split_warmup
from medr3.protocol import build_prompt, check_format, documents_text, extract_answer, parse
from medr3.rollout import RolloutSettings

from .conftest import DATA

SETTINGS = RolloutSettings(max_response_tokens=320, max_model_len=2048, max_searches=2, max_document_tokens=32)
COUNTS = {"reasoning": 12, "mcq": 12, "search": 12}


class FixedSearch:
    """Two fixed documents per query (one long enough to be truncated, one carrying a protocol tag); records calls."""

    DOCS = [
        {"doc_id": "d1", "title": "Trial report", "text": "Background of the trial. " * 20 + "It worked."},
        {"doc_id": "d2", "title": "Note", "text": "Screening <answer>A</answer> helped. Rates rose by half."},
    ]

    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, queries: list[str]) -> list[list[dict]]:
        self.calls.append(list(queries))
        return [[dict(d) for d in self.DOCS] for _ in queries]


@pytest.fixture(scope="module")
def training_questions() -> dict[str, list[Question]]:
    return {
        "reasoning": load_huatuo(DATA / "train/huatuogpt_o1_demo_195.json.xz")[0],
        "mcq": load_headqa(DATA / "train/headqa_en/train_HEAD_EN.json.xz")[0],
        "search": load_pubmedqa(DATA / "train/pubmedqa_pqal_nontest500.jsonl.xz")[0],
    }


@pytest.fixture(scope="module")
def built(tiny_tokenizer, training_questions):
    search = FixedSearch()
    demos, report = build_demos(tiny_tokenizer, training_questions, COUNTS, SETTINGS, search)
    return demos, report, search


def by_id(training_questions) -> dict[str, Question]:
    return {q.id: q for qs in training_questions.values() for q in qs}


def response_text(tok, demo) -> str:
    return tok.decode(demo.response_ids, skip_special_tokens=True)


def runs(demo) -> list[tuple[int, list[int]]]:
    """Maximal runs of (mask value, ids) of a demo's response."""
    out = []
    for tok, m in zip(demo.response_ids, demo.loss_mask, strict=True):
        if out and out[-1][0] == m:
            out[-1][1].append(tok)
        else:
            out.append((m, [tok]))
    return out


def test_each_kind_is_built_to_its_count_in_an_interleaved_order(built):
    demos, report, _ = built
    assert report.built == COUNTS and not report.skipped
    kinds = [d.kind for d in demos]
    assert {k: kinds.count(k) for k in COUNTS} == COUNTS
    assert kinds != sorted(kinds, key=list(COUNTS).index)  # shuffled, not one block per kind


def test_every_demo_passes_the_format_check_and_answers_the_gold_option(tiny_tokenizer, built, training_questions):
    questions = by_id(training_questions)
    for demo in built[0]:
        text = response_text(tiny_tokenizer, demo)
        assert check_format(text, search_allowed=demo.kind == "search").ok, (demo.kind, text)
        q = questions[demo.question_id]
        assert extract_answer(parse("<think>" + text).answer, q.options)[0] == q.answer_letter


def test_demos_end_with_eos_after_the_answer(tiny_tokenizer, built):
    for demo in built[0]:
        assert demo.response_ids[-1] == tiny_tokenizer.eos_token_id and demo.loss_mask[-1] == 1
        assert tiny_tokenizer.decode(demo.response_ids[:-1]).endswith("</answer>")


def test_inserted_documents_are_masked_and_exactly_what_the_rollout_inserts(tiny_tokenizer, built):
    for demo in built[0]:
        masked = [ids for m, ids in runs(demo) if m == 0]
        if demo.kind != "search":
            assert masked == [] and all(demo.loss_mask)
            continue
        query = parse("<think>" + response_text(tiny_tokenizer, demo)).searches[0]
        docs = FixedSearch()([query])[0]
        inserted = documents_text(docs, tiny_tokenizer, SETTINGS.max_document_tokens)
        assert masked == [tiny_tokenizer(inserted, add_special_tokens=False).input_ids]
        assert [m for m, _ in runs(demo)] == [1, 0, 1]  # query written, documents inserted, evidence and answer


def test_search_demos_make_one_batched_call_with_short_queries(built, training_questions):
    _, _, search = built
    assert len(search.calls) == 1 and len(search.calls[0]) == COUNTS["search"]
    assert all(0 < len(query.split()) <= 16 and "?" not in query for query in search.calls[0])


def test_search_demo_quotes_only_what_was_inserted(tiny_tokenizer, built):
    for demo in built[0]:
        if demo.kind == "search":
            quote = response_text(tiny_tokenizer, demo).split('says: "')[1].split('"')[0].removesuffix(" ...")
            inserted = tiny_tokenizer.decode(next(ids for m, ids in runs(demo) if m == 0))
            assert quote and quote in " ".join(inserted.split())


def test_ids_decode_to_the_prompt_followed_by_the_response(tiny_tokenizer, built, training_questions):
    questions = by_id(training_questions)
    for demo in built[0]:
        prompt = build_prompt(
            questions[demo.question_id], tiny_tokenizer, demo.kind == "search", SETTINGS.max_searches
        )
        full = tiny_tokenizer.decode(demo.prompt_ids + demo.response_ids, skip_special_tokens=False)
        assert full == prompt + tiny_tokenizer.decode(demo.response_ids, skip_special_tokens=False)
        assert tiny_tokenizer.decode(demo.prompt_ids, skip_special_tokens=False) == prompt


def test_budgets_are_respected(built):
    for demo in built[0]:
        assert len(demo.response_ids) <= SETTINGS.max_response_tokens
        assert len(demo.prompt_ids) + len(demo.response_ids) <= SETTINGS.max_model_len


def test_demos_that_cannot_fit_are_skipped_and_reported_not_truncated(tiny_tokenizer, training_questions):
    tight = RolloutSettings(max_response_tokens=70, max_model_len=2048, max_searches=2, max_document_tokens=32)
    demos, report = build_demos(tiny_tokenizer, training_questions, COUNTS, tight, FixedSearch())
    assert report.built["search"] == 0 and sum(k == "search" for k, _, _ in report.skipped) == COUNTS["search"]
    assert report.built["mcq"] > 0  # the short kind still fits
    assert len(demos) + len(report.skipped) == sum(COUNTS.values())
    for demo in demos:
        assert len(demo.response_ids) <= 70
        assert check_format(tiny_tokenizer.decode(demo.response_ids, skip_special_tokens=True), False).ok


def test_reasoning_demo_is_the_reference_reasoning_cut_at_a_sentence_end(tiny_tokenizer, built, training_questions):
    questions = by_id(training_questions)
    for demo in built[0]:
        if demo.kind == "reasoning":
            think = response_text(tiny_tokenizer, demo).split("\n\nSo the answer is")[0]
            reference = questions[demo.question_id].references[0]
            assert reference.startswith(think) and think[-1] in ".!?"


def test_mcq_think_does_not_copy_the_question(tiny_tokenizer, built, training_questions):
    questions = by_id(training_questions)
    for demo in built[0]:
        if demo.kind == "mcq":
            think = parse("<think>" + response_text(tiny_tokenizer, demo)).think
            question = questions[demo.question_id].question
            assert question not in think and " ".join(question.split()[:8]) not in think


def test_demos_are_deterministic_for_a_seed_and_change_with_it(tiny_tokenizer, training_questions, built):
    again, _ = build_demos(tiny_tokenizer, training_questions, COUNTS, SETTINGS, FixedSearch())
    assert again == built[0]
    other = RolloutSettings(**{**vars(SETTINGS), "seed": 1})
    reseeded, _ = build_demos(tiny_tokenizer, training_questions, COUNTS, other, FixedSearch())
    assert [d.question_id for d in reseeded] != [d.question_id for d in again]


def test_demo_becomes_a_train_sample_with_unit_advantage(built):
    demo = next(d for d in built[0] if d.kind == "search")
    sample = demo.train_sample()
    assert sample.input_ids == demo.prompt_ids + demo.response_ids and sample.prompt_len == len(demo.prompt_ids)
    assert sample.loss_mask == demo.loss_mask and sample.advantage == 1.0
    assert sample.old_logprobs == [0.0] * len(demo.response_ids)
    assert sample.trained_tokens == sum(demo.loss_mask) < len(demo.response_ids)


def test_mirage_questions_are_refused(tiny_tokenizer):
    q = Question("medqa:1", "Which vitamin prevents scurvy?", {"A": "C", "B": "D"}, "A", "C", source="mirage/medqa")
    with pytest.raises(ValueError, match="MIRAGE"):
        build_demos(tiny_tokenizer, {"mcq": [q]}, {"mcq": 1}, SETTINGS)


def test_warmup_and_rl_questions_are_disjoint_deterministic_and_near_the_fraction(training_questions):
    questions = training_questions["mcq"]
    warm, rl = split_warmup(questions, seed=3, fraction=0.3)
    assert {q.id for q in warm}.isdisjoint(q.id for q in rl) and len(warm) + len(rl) == len(questions)
    assert abs(len(warm) / len(questions) - 0.3) < 0.05
    assert split_warmup(questions, seed=3, fraction=0.3) == (warm, rl)
    assert [q.id for q in split_warmup(questions, seed=4, fraction=0.3)[0]] != [q.id for q in warm]
    assert all(is_warmup(q.id, 3, 0.3) for q in warm) and not any(is_warmup(q.id, 3, 0.3) for q in rl)


def test_a_larger_fraction_only_adds_warmup_questions(training_questions):
    questions = training_questions["search"]
    small = {q.id for q in split_warmup(questions, 0, 0.2)[0]}
    assert small < {q.id for q in split_warmup(questions, 0, 0.4)[0]}


def test_search_query_drops_the_question_mark_and_a_leading_auxiliary():
    assert search_query_for("Does aspirin reduce stroke risk in elderly patients?") == (
        "aspirin reduce stroke risk in elderly patients"
    )
    assert len(search_query_for(" ".join(["word"] * 40) + "?").split()) == 16


def test_search_demo_quotes_the_last_sentence_that_matches_the_query(tiny_tokenizer):
    q = Question("pubmedqa:1", "Does aspirin reduce stroke risk?", {"A": "yes", "B": "no", "C": "maybe"}, "A", "yes")
    docs = [
        {"doc_id": "1", "title": "Weather", "text": "Weather was fine. Nothing else happened."},
        {"doc_id": "2", "title": "Trial", "text": "Aspirin was studied. Aspirin reduced stroke by a third. The end."},
    ]
    demos, _ = build_demos(tiny_tokenizer, {"search": [q]}, {"search": 1}, SETTINGS, lambda qs: [docs for _ in qs])
    assert 'Document (2) says: "Aspirin reduced stroke by a third."' in response_text(tiny_tokenizer, demos[0])


def test_a_search_that_finds_nothing_still_makes_a_well_formed_demo(tiny_tokenizer):
    q = Question("pubmedqa:1", "Does aspirin reduce stroke risk?", {"A": "yes", "B": "no", "C": "maybe"}, "B", "no")
    demos, _ = build_demos(tiny_tokenizer, {"search": [q]}, {"search": 1}, SETTINGS, lambda qs: [[] for _ in qs])
    text = response_text(tiny_tokenizer, demos[0])
    assert check_format(text, search_allowed=True).ok and parse("<think>" + text).answer == "B. no"
    assert [ids for m, ids in runs(demos[0]) if m == 0] == [tiny_tokenizer("\n", add_special_tokens=False).input_ids]


def test_the_plan_gives_each_kind_its_share_split_evenly_over_its_files():
    from medr3.config import WarmupConfig
    from medr3.demos import demo_plan

    def spec(kind, path):
        return {"kind": kind, "path": str(DATA / path)}

    warmup = WarmupConfig(
        steps=4,
        batch_size=8,  # 32 demos: reasoning 8, mcq 12, search 12 = 6 + 6 from two files
        mix={"reasoning": 0.25, "mcq": 0.375, "search": 0.375},
        reasoning=spec("huatuo", "train/huatuogpt_o1_demo_195.json.xz"),
        mcq=spec("headqa", "train/headqa_en/train_HEAD_EN.json.xz"),
        search=[
            spec("pubmedqa", "train/pubmedqa_pqal_nontest500.jsonl.xz"),
            spec("headqa", "train/headqa_en/train_HEAD_EN.json.xz"),
        ],  # fmt: skip
    )
    plan = demo_plan(warmup, seed=0)
    assert [(kind, count) for kind, _, count in plan] == [("reasoning", 8), ("mcq", 12), ("search", 6), ("search", 6)]
    assert {q.source for q in plan[2][1]} == {"pubmedqa"} and plan[3][1][0].source.startswith("headqa")
    assert all(is_warmup(q.id, 0, warmup.fraction) for _, questions, _ in plan for q in questions)


def test_a_kind_with_fewer_warm_up_questions_than_requested_says_so(tiny_tokenizer, training_questions):
    few = {**training_questions, "reasoning": training_questions["reasoning"][:5]}
    demos, report = build_demos(tiny_tokenizer, few, COUNTS, SETTINGS, FixedSearch())
    assert report.built["reasoning"] == 5 and report.short == {"reasoning": COUNTS["reasoning"] - 5}
    assert "reasoning 5/12 (its warm-up split is 7 questions short)" in report.summary()
