"""summary.md's stage table: a stage's reward from its first third to its last, with an interval that says whether
the change is more than the questions a step drew."""

from __future__ import annotations

import json

from medr3.report import change_interval, write_report


def stage_rows(groups_per_step: list[list[float]], stage: str = "reasoning") -> list[dict]:
    return [
        {
            "global_step": i,
            "stage": stage,
            "stage_step": i,
            "reward/total": sum(groups) / len(groups),
            "reward/group_means": groups,
            "timing/step": 1.0,
        }
        for i, groups in enumerate(groups_per_step, 1)
    ]


def summary_for(tmp_path, rows: list[dict]) -> str:
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return write_report(tmp_path)[1].read_text()


def test_a_stage_whose_every_later_question_scores_higher_shows_a_change_above_zero(tmp_path):
    low, high = [0.1, 0.2, 0.15, 0.3], [1.1, 1.2, 1.0, 1.3]
    summary = summary_for(tmp_path, stage_rows([low, low, low, high, high, high]))
    row = next(line for line in summary.splitlines() if line.startswith("| reasoning |"))
    assert "+0.188 → +1.150 [+" in row  # the interval's lower end is positive


def test_a_change_the_questions_drawn_could_explain_has_an_interval_holding_zero():
    easy_and_hard = [0.1, 1.2, 0.2, 1.1]
    low, high = change_interval(easy_and_hard, list(reversed(easy_and_hard)))
    assert low < 0 < high
    low, high = change_interval([0.5] * 8, [0.5] * 8)  # every question alike: no uncertainty
    assert low == high == 0.0


def test_a_run_logged_without_group_rewards_still_gets_its_table(tmp_path):
    rows = stage_rows([[0.2, 0.4], [0.6, 0.8], [1.0, 1.0]])
    for row in rows:
        del row["reward/group_means"]
    summary = summary_for(tmp_path, rows)
    row = next(line for line in summary.splitlines() if line.startswith("| reasoning |"))
    assert "| +0.300 → +1.000 |" in row
