"""RewardActor through Ray gives the same numbers as the pure reward functions (real embedder, corpus vocabulary)."""

from __future__ import annotations

import pytest

from medr3.config import RewardComposition, RewardConfig
from medr3.data import load_huatuo
from medr3.embedder import load_embedder
from medr3.rewards import get_term
from medr3.rewards.composition import compose
from medr3.rewards.inputs import RewardContext, RewardInput
from medr3.rewards.vocabulary import build_vocabulary

RETRIEVAL = RewardComposition(
    gain={"answer": 1.0, "evidence": 0.5, "search_quality": 0.3},
    floor=0.0,
    penalty={"format": 0.1, "language": 0.1},
    shaping={"overlong": 1.0},
)


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray for the session; reuses a Ray another fixture already started."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def actors(ray_cluster, root):
    from actors.reward import create_reward_actors

    handles = create_reward_actors(RewardConfig(replicas=2, num_cpus=0.5), root / "data/corpus")
    yield handles
    for handle in handles:
        ray_cluster.kill(handle)


@pytest.fixture(scope="module")
def batch(root) -> list[RewardInput]:
    """Trajectories on two HuatuoGPT questions: right with its reference reasoning, wrong, forged document, overlong,
    and two that searched."""
    (q1, q2), _ = load_huatuo(root / "data/train/huatuogpt_o1_demo_195.json.xz", limit=2)
    doc = {
        "id": "d1",
        "doc_id": "d1",
        "title": "Parvovirus B19",
        "source": "medquad",
        "score": 1.0,
        "text": "Parvovirus B19 infection can stop red blood cell production and cause severe anemia.",
    }
    searches = [{"query": "parvovirus B19 anemia", "doc_ids": ["d1"], "documents": [doc]}]

    def make(q, think, answer, **flags):
        text = f"{think}</think><answer>{answer}</answer>"
        return RewardInput(
            q, text, response_tokens=flags.pop("tokens", 300), max_response_tokens=1000, overlong_buffer=200, **flags
        )

    searched = "Low reticulocytes point to parvovirus B19 <search>parvovirus B19 anemia</search>"
    return [
        make(q1, q1.references[0], f"{q1.answer_letter}. {q1.answer_text}"),
        make(q1, "The anemia is from poor diet, so folate deficiency.", "B. Folate deficiency"),
        make(q1, q1.references[0], q1.answer_text, self_document=True),
        make(q2, "Short reasoning.", f"{q2.answer_letter}", tokens=950),
        RewardInput(
            q1,
            searched + "<document>(1) Parvovirus B19 ...</document> so the marrow stopped.</think>"
            f"<answer>{q1.answer_letter}</answer>",
            searches,
            search_allowed=True,
            require_search=True,
        ),
        RewardInput(
            q2,
            f"No search needed.</think><answer>{q2.answer_letter}</answer>",
            search_allowed=True,
            require_search=True,
        ),
    ]


def pure_scores(batch: list[RewardInput], composition: RewardComposition, ctx: RewardContext) -> list[dict]:
    out = []
    for item in batch:
        terms = {name: get_term(name)(item, ctx) for name in composition.term_names()}
        out.append({"total": compose(terms, composition), "terms": terms})
    return out


def assert_same(got: list[dict], expected: list[dict], **tol) -> None:
    assert [g["total"] for g in got] == pytest.approx([e["total"] for e in expected], **tol)
    assert [g["terms"] for g in got] == [pytest.approx(e["terms"], **tol) for e in expected]


def test_reward_actor_matches_the_pure_functions_on_the_release_composition(actors, batch, root):
    import ray

    release = RewardComposition.release()
    remote = ray.get(actors[0].score.remote(batch, release))
    ctx = RewardContext(RewardConfig(), load_embedder().encode, build_vocabulary(root / "data/corpus"))
    expected = pure_scores(batch, release, ctx)
    assert_same(remote.items, expected, rel=1e-5, abs=1e-6)  # embeddings batch differently: float32 rounding
    assert remote.items[0]["terms"]["clinical_consistency"] > 0.99  # the reference reasoning itself
    assert remote.totals[2] == pytest.approx(remote.totals[0] - 0.1, abs=1e-6)  # forged <document>: format penalty


def test_reward_actors_in_parallel_match_the_pure_functions(actors, batch, root):
    from actors.reward import score_batch

    result = score_batch(actors, batch, RETRIEVAL)
    ctx = RewardContext(RewardConfig(), None, build_vocabulary(root / "data/corpus"))
    assert_same(result.items, pure_scores(batch, RETRIEVAL, ctx))
    assert result.items[5]["terms"]["evidence"] == 0.0  # searching was required and none was made
    assert result.counters == {}
