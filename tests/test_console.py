"""What a job's console shows and where everything else goes (medr3/console.py, medr3/run_log.py); no Ray."""

import subprocess
import sys

from medr3.run_log import StepClock, progress_line

from .conftest import ROOT


def test_etas_come_from_each_stage_s_mean_step_time_and_unseen_stages_take_the_grpo_mean():
    clock = StepClock()
    assert clock.remaining({"warmup": 2}) is None
    clock.add("warmup", 1.0)
    clock.add("warmup", 3.0)
    assert clock.remaining({"warmup": 2}) == 4.0
    assert clock.remaining({"warmup": 1, "reasoning": 2}) is None  # no GRPO step measured yet
    assert clock.remaining({"warmup": 1, "reasoning": 2}, extra_s=5.0, known_only=True) == 2.0 + 5  # a lower bound
    clock.add("reasoning", 10.0)
    clock.add("retrieval", 20.0)
    assert clock.remaining({"warmup": 0, "retrieval": 1, "joint": 2}, extra_s=5.0) == 20 + 2 * 15 + 5


def test_a_step_line_shows_the_step_of_its_stage_its_metrics_and_both_etas():
    record = {"stage": "retrieval", "stage_step": 3, "global_step": 9, "reward/total": 0.5, "train/loss": 0.1}
    record |= {"rollout/accuracy": 0.25, "rollout/format_rate": 1.0, "rollout/searches_per_traj": 1.5}
    record["timing/step"] = 12.0
    line = progress_line(record, 6, 36.0, 3725.0)
    assert line.startswith("[retrieval   3/6   | step    9] reward +0.500  acc 0.25  format 1.00  search 1.50")
    assert line.endswith("|  12.0 s/step  ETA stage 0:36  job 1:02:05")
    tied = progress_line(record | {"train/samples": 0}, 6)
    assert "search 1.50  learner skipped |" in tied  # every group tied: no loss to show
    warm = progress_line({"stage": "warmup", "stage_step": 1, "global_step": 1, "train/loss": 2.0}, 16)
    assert "sft loss 2.0000" in warm and warm.endswith("ETA stage ?  job ?")
    floor = progress_line({"stage": "warmup", "stage_step": 2, "global_step": 2}, 16, 28.0, 400.0, job_floor=True)
    assert floor.endswith("ETA stage 0:28  job >6:40")  # the GRPO stages not timed yet: at least this long


LIBRARY = """
import logging, os, sys, warnings
chatty = logging.getLogger("vllm")  # a library that set up its own handler at import, as vLLM and DeepSpeed do
chatty.addHandler(logging.StreamHandler(sys.stdout))
chatty.propagate = False
from medr3.console import say, send_logs_to
send_logs_to(sys.argv[1], "driver")
print("printed by a library")
chatty.warning("a library's logger")
os.write(2, b"written to fd 2 by C code\\n")
warnings.warn("a deprecation")
logging.getLogger("medr3.rollout").warning("one of ours")
say("a progress line")
say("error: an error line", err=True)
"""


def test_library_output_goes_to_the_log_file_and_only_ours_reaches_the_console(tmp_path):
    result = subprocess.run([sys.executable, "-c", LIBRARY, str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "a progress line\n"
    assert result.stderr == "WARNING medr3.rollout: one of ours\nerror: an error line\n"
    log = (tmp_path / "driver.log").read_text()
    for line in ("printed by a library", "a library's logger", "written to fd 2", "a deprecation", "one of ours"):
        assert line in log
