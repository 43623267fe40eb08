"""Comparing models on the same questions (medr3/comparison.py): accuracies, intervals and paired differences on
hand-built records whose numbers are known (no engine)."""

import pytest

from medr3.comparison import compare, markdown, plot
from medr3.final_eval import bootstrap_interval


def record(qid: str, *correct: bool) -> dict:
    """A question record as `evaluation.question_record` writes it: one answer per sample, right or wrong."""
    return {"id": qid, "gold": "A", "answers": ["A" if c else "B" for c in correct], "correct": list(correct),
            "format": [True] * len(correct), "searches": [0] * len(correct)}  # fmt: skip


def task(right: set[int], n: int) -> list[dict]:
    return [record(f"q{i}", i in right) for i in range(n)]


# t1: 100 questions; the tuned model answers every question the base model does (q0–q49) and ten more (q50–q59).
# t2: 4 questions, two samples each, scored by the mean: base 1, ½, 0, 0 (37.5 %); tuned 1, 1, 1, 0 (75 %).
BASE = {"cot": {"t1": task(set(range(50)), 100),
                "t2": [record("a", True, True), record("b", True, False), record("c", False, False),
                       record("d", False, False)]}}  # fmt: skip
TUNED = {"cot": {"t1": task(set(range(60)), 100),
                 "t2": [record("a", True, True), record("b", True, True), record("c", True, True),
                        record("d", False, False)]}}  # fmt: skip
SETTINGS = {"n": 2, "aggregate": "mean", "temperature": 0.6, "top_p": 0.9, "max_response_tokens": 64}


def test_each_models_accuracy_is_the_macro_mean_over_tasks_with_its_interval():
    result = compare({"base": BASE, "tuned": TUNED}, "mean")
    assert result["baseline"] == "base" and list(result["modes"]) == ["cot"]
    block = result["modes"]["cot"]
    assert block["tasks"] == {"t1": 100, "t2": 4}
    base, tuned = block["models"]["base"], block["models"]["tuned"]
    assert base["tasks"] == {"t1": 50.0, "t2": 37.5} and base["average"] == 43.75
    assert tuned["tasks"] == {"t1": 60.0, "t2": 75.0} and tuned["average"] == 67.5
    t1_base = [1.0] * 50 + [0.0] * 50
    t2_base = [1.0, 0.5, 0.0, 0.0]
    assert base["interval"] == list(bootstrap_interval([t1_base, t2_base]))
    assert base["interval"][0] < 43.75 < base["interval"][1]


def test_the_paired_difference_resamples_questions_for_both_models_at_once():
    result = compare({"base": BASE, "tuned": TUNED}, "mean")["modes"]["cot"]["models"]
    assert result["base"]["difference"] == 0.0 and result["base"]["difference_interval"] == [0.0, 0.0]
    tuned = result["tuned"]
    assert tuned["difference"] == pytest.approx(23.75)  # (10 + 37.5) / 2
    paired = [[0.0] * 50 + [1.0] * 10 + [0.0] * 40, [0.0, 0.5, 1.0, 0.0]]
    assert tuned["difference_interval"] == list(bootstrap_interval(paired))
    low, high = tuned["difference_interval"]
    assert 0 < low < 23.75 < high


def test_pairing_tells_apart_a_gain_that_overlapping_intervals_hide():
    one_task = {label: {"cot": {"t1": records["cot"]["t1"]}} for label, records in (("b", BASE), ("t", TUNED))}
    rows = compare(one_task, "mean")["modes"]["cot"]["models"]
    assert rows["b"]["average"] == 50.0 and rows["t"]["average"] == 60.0
    assert rows["t"]["interval"][0] < rows["b"]["interval"][1]  # the two intervals overlap ...
    low, high = rows["t"]["difference_interval"]
    assert 3.0 <= low < 10.0 < high <= 17.0  # ... yet every resample of the 10 extra right answers is a gain


def test_a_model_compared_with_itself_differs_by_exactly_zero():
    rows = compare({"a": BASE, "b": BASE}, "mean")["modes"]["cot"]["models"]
    assert rows["b"]["difference"] == 0.0 and rows["b"]["difference_interval"] == [0.0, 0.0]
    assert rows["b"]["interval"] == rows["a"]["interval"]


def test_only_modes_and_tasks_every_model_has_are_compared_and_questions_must_match():
    partial = {"cot": {"t1": BASE["cot"]["t1"]}, "rag": {"t1": BASE["cot"]["t1"]}}
    result = compare({"base": partial, "tuned": TUNED}, "mean")
    assert list(result["modes"]) == ["cot"] and result["modes"]["cot"]["tasks"] == {"t1": 100}
    other = {"cot": {"t1": task(set(), 99), "t2": TUNED["cot"]["t2"]}}
    with pytest.raises(ValueError, match="cot/t1: the models were evaluated on different questions"):
        compare({"base": BASE, "other": other}, "mean")


def test_the_report_has_a_table_per_mode_and_a_bar_chart(tmp_path):
    result = compare({"base": BASE, "tuned": TUNED}, "mean")
    table = markdown(result, {"base": "/m/base", "tuned": "/m/tuned"}, SETTINGS, note="a caveat")
    lo, hi = result["modes"]["cot"]["models"]["tuned"]["interval"]
    dlo, dhi = result["modes"]["cot"]["models"]["tuned"]["difference_interval"]
    assert "| model | t1 (n=100) | t2 (n=4) | average [95 % CI] | Δ [95 % CI] |" in table
    assert "| base | 50.0 | 37.5 | 43.8 [" in table and table.count("| – |") == 1
    assert f"| tuned | 60.0 | 75.0 | 67.5 [{lo:.1f}, {hi:.1f}] | +23.8* [{dlo:+.1f}, {dhi:+.1f}] |" in table
    assert "- `tuned`: `/m/tuned`" in table and table.rstrip().endswith("a caveat")
    png = plot(result, tmp_path / "report.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
