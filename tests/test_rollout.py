"""The multi-turn rollout on a scripted generator: masks, caps, budgets and the batching of searches."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medr3.data import Question
from medr3.protocol import format_documents
from medr3.rollout import Rollout, RolloutSettings

from .fakes import FakeSearch, ScriptedGenerator


def question(qid: str) -> Question:
    return Question(qid, f"QID{qid} Which vitamin prevents scurvy?", {"A": "C", "B": "D"}, "A", "C")


def run(tok, scripts, search=True, n=2, max_searches=4, budget=512, k=2):
    gen, finder = ScriptedGenerator(tok, scripts), FakeSearch(k)
    settings_ = RolloutSettings(
        max_response_tokens=budget, max_model_len=4096, max_searches=max_searches, max_document_tokens=64
    )
    trajs = Rollout(tok, gen, finder, settings_).run([question(q) for q in scripts], n=n, search=search)
    return trajs, gen, finder


def spans(traj):
    """Maximal runs of (mask value, ids)."""
    out = []
    for tok, m in zip(traj.response_ids, traj.loss_mask, strict=True):
        if out and out[-1][0] == m:
            out[-1][1].append(tok)
        else:
            out.append((m, [tok]))
    return out


def test_search_results_are_inserted_as_masked_documents(tiny_tokenizer):
    script = "I need facts <search>scurvy cause</search> so it is C</think><answer>A</answer>"
    (traj, _), _, finder = run(tiny_tokenizer, {"q1": script})
    assert finder.calls == [["scurvy cause", "scurvy cause"]]  # both samples, one batched call
    assert traj.finish_reason == "answer" and traj.searches[0]["query"] == "scurvy cause"
    assert traj.searches[0]["doc_ids"] == ["scurvy cause:0", "scurvy cause:1"]
    inserted = [ids for m, ids in spans(traj) if m == 0]
    expected = tiny_tokenizer(format_documents(finder(["scurvy cause"])[0]), add_special_tokens=False).input_ids
    assert inserted == [expected]
    assert "<document>(1) About scurvy cause" in traj.text and traj.text.endswith("</answer>")
    assert all(lp == 0.0 for lp, m in zip(traj.logprobs, traj.loss_mask) if m == 0)


turn = st.one_of(st.just("x <search>q</search>"), st.just("y <search></search>"), st.just("z"))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(turns=st.lists(turn, max_size=6), max_searches=st.integers(0, 4))
def test_mask_zero_exactly_on_inserted_documents(tiny_tokenizer, turns, max_searches):
    script = " ".join(turns) + "</think><answer>A</answer>"
    trajs, _, finder = run(tiny_tokenizer, {"q1": script}, n=1, max_searches=max_searches)
    traj = trajs[0]
    served = [s for s in traj.searches if s["documents"]]
    expected_inserted = [
        tiny_tokenizer(format_documents(s["documents"]), add_special_tokens=False).input_ids for s in served
    ]
    inserted = [ids for m, ids in spans(traj) if m == 0 and ids != tiny_tokenizer("\n").input_ids]
    assert inserted == expected_inserted
    generated = [t for t, m in zip(traj.response_ids, traj.loss_mask) if m == 1]
    assert tiny_tokenizer.decode(generated) == script
    assert len(traj.searches) <= max_searches


def test_max_searches_cap_holds(tiny_tokenizer):
    script = "a <search>one</search> b <search>two</search> c <search>three</search> d</think><answer>A</answer>"
    (traj,), gen, finder = run(tiny_tokenizer, {"q1": script}, n=1, max_searches=2)
    assert [s["query"] for s in traj.searches] == ["one", "two"]
    assert len(finder.calls) == 2 and "</search>" not in gen.calls[-1][0].stop
    assert traj.finish_reason == "answer" and traj.text.endswith("</answer>")


def test_token_budget_holds(tiny_tokenizer):
    script = "word " * 200 + "</think><answer>A</answer>"
    (traj,), gen, _ = run(tiny_tokenizer, {"q1": script}, n=1, budget=50)
    assert len(traj.response_ids) == 50 and traj.finish_reason == "length"


def test_budget_counts_inserted_documents(tiny_tokenizer):
    script = "a <search>long query</search>" + " more" * 100 + "</think><answer>A</answer>"
    (traj,), gen, _ = run(tiny_tokenizer, {"q1": script}, n=1, budget=40, k=3)
    assert len(traj.response_ids) <= 40 and traj.finish_reason == "length"
    for (request,) in gen.calls:  # every call asks only for what is left of the budget
        assert request.max_tokens == 40 - (len(request.prompt_ids) - len(traj.prompt_ids))
    assert traj.inserted_tokens > 0


def test_retrieval_off_stage_never_searches(tiny_tokenizer):
    script = "maybe <search>scurvy</search> it is C</think><answer>A</answer>"
    (traj,), gen, finder = run(tiny_tokenizer, {"q1": script}, n=1, search=False)
    assert finder.calls == [] and traj.searches == [] and len(gen.calls) == 1
    assert "</search>" not in gen.calls[0][0].stop and "<search>" not in tiny_tokenizer.decode(traj.prompt_ids)


def test_self_written_document_stops_and_is_flagged(tiny_tokenizer):
    script = "I recall <document>made up facts</document></think><answer>A</answer>"
    (traj,), _, _ = run(tiny_tokenizer, {"q1": script}, n=1)
    assert traj.self_document and traj.finish_reason == "self_document"
    assert traj.text.endswith("<document>") and all(traj.loss_mask)


def test_tokens_are_appended_never_retokenised(tiny_tokenizer):
    script = "a <search>one</search> b <search>two</search> c</think><answer>A</answer>"
    (traj,), gen, _ = run(tiny_tokenizer, {"q1": script}, n=1)
    prompts = [c[0].prompt_ids for c in gen.calls]
    for earlier, later in zip(prompts, prompts[1:]):
        assert later[: len(earlier)] == earlier
    assert prompts[-1] == (traj.prompt_ids + traj.response_ids)[: len(prompts[-1])]


def test_samples_of_one_question_get_distinct_seeds_and_batches_mix_questions(tiny_tokenizer):
    scripts = {"q1": "a <search>one</search> b</think><answer>A</answer>", "q2": "c</think><answer>B</answer>"}
    trajs, gen, finder = run(tiny_tokenizer, scripts, n=3)
    assert [(t.question.id, t.sample) for t in trajs] == [(q, i) for q in ("q1", "q2") for i in range(3)]
    assert len({r.seed for r in gen.calls[0]}) == 6
    assert len(gen.calls[1]) == 3 and finder.calls == [["one"] * 3]


def test_a_retrieval_stage_needs_a_search_function(tiny_tokenizer):
    rollout = Rollout(tiny_tokenizer, ScriptedGenerator(tiny_tokenizer, {}), None, RolloutSettings(64, 1024))
    with pytest.raises(ValueError, match="search function"):
        rollout.run([question("q1")], n=1, search=True)
