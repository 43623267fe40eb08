"""Stage scheduling: which questions a step draws, by file weight, deterministically (a resume sees the same)."""

from collections import Counter

import pytest

from medr3.config import ConfigError, load_config
from medr3.data import Question
from medr3.stages import QuestionPool, batch_for_step
from tests.test_config import ROOT


def questions(prefix: str, n: int) -> tuple[Question, ...]:
    return tuple(Question(f"{prefix}-{i}", f"q {i}", {}, None, "a", source=prefix) for i in range(n))


BIG, SMALL = questions("big", 300), questions("small", 20)


def sources(pool: QuestionPool, steps: int, size: int) -> list[list[str]]:
    return [[q.source for q in pool.batch("retrieval", k, size, seed=0)] for k in range(steps)]


def test_without_weights_a_large_file_dominates_as_before():
    pool = QuestionPool((BIG, SMALL))
    drawn = Counter(s for batch in sources(pool, 50, 2) for s in batch)
    assert drawn["big"] > 80  # ~94 % of the questions are in the big file
    assert pool.batch("retrieval", 3, 2, 0) == batch_for_step(BIG + SMALL, "retrieval", 3, 2, 0)


def test_equal_weights_draw_one_prompt_from_each_file_every_step():
    pool = QuestionPool((BIG, SMALL), (1.0, 1.0))
    assert all(sorted(batch) == ["big", "small"] for batch in sources(pool, 30, 2))


def test_weights_set_the_shares_and_each_file_is_walked_without_repeats_within_an_epoch():
    pool = QuestionPool((BIG, SMALL), (3.0, 1.0))
    drawn = [q for k in range(10) for q in pool.batch("retrieval", k, 4, seed=0)]
    assert Counter(q.source for q in drawn) == {"big": 30, "small": 10}
    small = [q.id for q in drawn if q.source == "small"]
    assert len(set(small)) == len(small)  # 10 of the 20, none twice
    more = [q.id for k in range(10, 20) for q in pool.batch("retrieval", k, 4, seed=0) if q.source == "small"]
    assert sorted(small + more) == sorted(q.id for q in SMALL)  # the next ten complete the epoch


def test_a_step_is_the_same_whenever_it_is_asked_for():
    pool = QuestionPool((BIG, SMALL), (2.0, 1.0))
    late = pool.batch("joint", 7, 3, seed=5)
    assert [pool.batch("joint", k, 3, seed=5) for k in range(8)][7] == late
    assert pool.batch("joint", 7, 3, seed=6) != late


def test_a_weighted_file_with_no_questions_is_an_error():
    with pytest.raises(ValueError, match="file 2 .* no questions"):
        QuestionPool((BIG, ()), (1.0, 1.0))


def test_weights_are_all_or_none_and_only_on_train_files():
    spec = "{kind: pubmedqa, path: data/train/pubmedqa_pqal_nontest500.jsonl.xz"
    other = "{kind: headqa, path: data/train/headqa_en/train_HEAD_EN.json.xz"
    both = load_config(
        ROOT / "configs/tiny.yaml", [f"stages.retrieval.train=[{spec}, weight: 1}}, {other}, weight: 2}}]"]
    )
    assert [s.weight for s in both.stages.retrieval.train] == [1.0, 2.0]
    with pytest.raises(ConfigError, match="stages.retrieval.*every file a weight or none"):
        load_config(ROOT / "configs/tiny.yaml", [f"stages.retrieval.train=[{spec}, weight: 1}}, {other}}}]"])
    with pytest.raises(ConfigError, match="weight"):
        load_config(ROOT / "configs/tiny.yaml", [f"stages.retrieval.train=[{spec}, weight: 0}}]"])
    with pytest.raises(ConfigError, match="data.eval.*weight is for a stage's train files"):
        load_config(ROOT / "configs/tiny.yaml", [f"data.eval=[{spec}, weight: 1}}]"])
