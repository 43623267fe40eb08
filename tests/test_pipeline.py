"""The progressive job end to end on the tiny model, as users run it: a subprocess driver on the session's cluster."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from .conftest import ROOT

JOB = [sys.executable, str(ROOT / "pipelines/progressive.py"), "--config", str(ROOT / "configs/tiny.yaml")]


def job_args(out_dir, steps=(2, 2, 2), extra=(), warmup=0, final_eval=False):
    names = ("reasoning", "retrieval", "joint")
    sets = [f"run.output_dir={out_dir}", f"stages.warmup.steps={warmup}", f"run.final_eval={str(final_eval).lower()}"]
    sets += [f"stages.{n}.steps={s}" for n, s in zip(names, steps)]
    return JOB + [a for s in [*sets, *extra] for a in ("--set", s)]


def start(args, ray_cluster):
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address, "MEDR3_ROOT": str(ROOT)}
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)


def finish(proc, timeout=600):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def records(out_dir):
    path = out_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_for(predicate, timeout=600):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for the job"
        time.sleep(0.5)


needs_index = pytest.mark.skipif(
    not (ROOT / "artifacts/index/default/manifest.json").exists(), reason="the corpus index is built by ./setup.sh"
)


@pytest.mark.slow
@needs_index
def test_three_stage_run_completes_even_when_a_generator_dies(ray_cluster, tmp_path, tiny_model_dir):
    from ray.util.state import list_actors

    proc = start(job_args(tmp_path, extra=[f"model.path={tiny_model_dir}"]), ray_cluster)
    wait_for(lambda: len(records(tmp_path)) >= 1 or proc.poll() is not None)
    generators = [
        a
        for a in list_actors(
            address=ray_cluster.get_runtime_context().gcs_address,
            filters=[("class_name", "=", "GeneratorWorker"), ("state", "=", "ALIVE")],
        )
        if a.pid
    ]
    for actor in generators:
        try:  # the job's engine (the session's own tiny_pool may be alive too: killing it is survivable as well)
            os.kill(actor.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    out = finish(proc)
    rows = records(tmp_path)
    assert [r["global_step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["stage"] for r in rows] == ["reasoning"] * 2 + ["retrieval"] * 2 + ["joint"] * 2
    assert all("reward/total" in r and "timing/generate" in r and "train/loss" in r for r in rows)
    assert all(r["rollout/searches_per_traj"] == 0 for r in rows[:2])
    last = sorted((tmp_path / "checkpoints").glob("step-*"))[-1]
    assert last.name == "step-000006" and (last / "hf/config.json").exists()
    assert (tmp_path / "report.png").stat().st_size > 10_000 and "| joint | 2 |" in (
        tmp_path / "summary.md"
    ).read_text()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents*"))
    assert "[done] 6 steps" in out


@pytest.mark.slow
@needs_index
def test_a_killed_job_resumes_with_continuous_steps(ray_cluster, tmp_path, tiny_model_dir):
    args = job_args(tmp_path, steps=(1, 3, 1), extra=[f"model.path={tiny_model_dir}", "run.checkpoint_every=1"])
    proc = start(args, ray_cluster)
    # Kill the driver mid-stage 2, right after its first retrieval step was checkpointed.
    wait_for(lambda: (tmp_path / "checkpoints/step-000002/meta.json").exists() or proc.poll() is not None)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = records(tmp_path)
    assert before and before[-1]["stage"] == "retrieval" and len(before) < 5
    out = finish(start(args, ray_cluster))
    assert "[resume]" in out
    rows = records(tmp_path)
    assert [r["global_step"] for r in rows] == [1, 2, 3, 4, 5]
    assert [(r["stage"], r["stage_step"]) for r in rows] == [
        ("reasoning", 1),
        ("retrieval", 1),
        ("retrieval", 2),
        ("retrieval", 3),
        ("joint", 1),
    ]


@pytest.mark.slow
@needs_index
def test_the_console_shows_progress_and_the_engines_log_to_the_run_folder(ray_cluster, tmp_path, tiny_model_dir):
    """By default no vLLM, DeepSpeed or Ray line reaches the console: the header, one line per step with its ETAs and
    the summary do. The engines' logs are in logs/, and the per-sync rotary warning is not among them."""
    args = job_args(tmp_path, steps=(1, 1, 0), warmup=1, extra=[f"model.path={tiny_model_dir}"])
    out = finish(start(args, ray_cluster))
    lines = out.splitlines()
    assert lines[0].startswith("Med-R³ progressive job: configs/tiny.yaml") and "  cluster  " in out
    steps = [line for line in lines if "ETA stage" in line]
    assert [line.split()[0:2] for line in steps] == [["[warmup", "1/1"], ["[reasoning", "1/1"], ["[retrieval", "1/1"]]
    assert "[stage] reasoning:" in out and "[done] 3 steps" in out and "README" in out
    for noise in ("pid=", "INFO", "WARNING", "vLLM", "vllm", "DeepSpeed", "deepspeed", "Loading weights", "it/s]"):
        assert noise not in out, noise
    logs = tmp_path / "logs"
    generator = (logs / "generator-0.log").read_text()
    assert "Reloading weights inplace" in generator and "RotaryEmbedding: Failed to load weights" not in generator
    assert "DeepSpeed" in (logs / "learner-0.log").read_text() and (logs / "driver.log").exists()
    assert (logs / "search-0.log").exists() and (logs / "reward-0.log").exists()


@pytest.mark.slow
@needs_index
def test_the_job_heals_itself_when_its_generator_search_reward_and_learner_actors_die(
    ray_cluster, tmp_path, tiny_model_dir
):
    """Kills the job's generator, search actor, reward actor and learner rank in turn mid-run: Ray restarts the first
    two, the job restarts the others from the last checkpoint, and it finishes with every step logged once (in
    TensorBoard too) and a final checkpoint that loads."""
    from ray.util.state import list_actors
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from transformers import AutoModelForCausalLM

    address = ray_cluster.get_runtime_context().gcs_address
    ours = f"MEDR3_LOG_DIR={(tmp_path / 'logs').resolve()}".encode()

    def kill(class_name: str) -> None:
        """SIGKILL this job's live actor of `class_name` (the session's other actors have another log folder)."""
        for actor in list_actors(address=address, filters=[("class_name", "=", class_name), ("state", "=", "ALIVE")]):
            try:
                if actor.pid and ours in open(f"/proc/{actor.pid}/environ", "rb").read().split(b"\0"):
                    os.kill(actor.pid, signal.SIGKILL)
                    return
            except OSError:
                continue
        raise AssertionError(f"no live {class_name} of this job")

    args = job_args(tmp_path, steps=(2, 4, 6), extra=[f"model.path={tiny_model_dir}", "run.checkpoint_every=2"])
    proc = start(args, ray_cluster)
    for after, victim in ((1, "GeneratorWorker"), (3, "SearchActor"), (5, "RewardActor"), (7, "LearnerRank")):
        wait_for(lambda after=after: len(records(tmp_path)) >= after or proc.poll() is not None)
        assert proc.poll() is None, "the job ended before the kill of " + victim
        kill(victim)
    out = finish(proc, timeout=900)
    assert "[restart] RewardActor died" in out and "[restart] LearnerRank died" in out
    assert [r["global_step"] for r in records(tmp_path)] == list(range(1, 13))
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("reward/total")] == list(range(1, 13))
    last = sorted((tmp_path / "checkpoints").glob("step-*"))[-1]
    assert last.name == "step-000012" and AutoModelForCausalLM.from_pretrained(last / "hf") is not None


def test_a_bad_config_fails_before_any_actor_starts(tmp_path):
    started = time.monotonic()
    result = subprocess.run(
        job_args(tmp_path, extra=["grpo.samples_per_prompt=1"]),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "RAY_ADDRESS": ""},
        timeout=120,
    )
    assert result.returncode == 2
    assert "grpo.samples_per_prompt" in result.stderr and "configs/tiny.yaml" in result.stderr
    assert "Ray" not in result.stdout + result.stderr.replace("ray", "")  # no cluster was started
    assert time.monotonic() - started < 60


def test_missing_inputs_are_named_before_any_actor_starts(tmp_path):
    result = subprocess.run(
        job_args(tmp_path, extra=["model.path=/nonexistent/model"]),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "RAY_ADDRESS": ""},
        timeout=120,
    )
    assert result.returncode == 2 and "model.path: /nonexistent/model/config.json does not exist" in result.stderr


@pytest.mark.slow
@needs_index
def test_ray_job_submit_against_the_local_head(ray_cluster, tmp_path, tiny_model_dir):
    dashboard = ray_cluster._private.worker.get_dashboard_url()
    runtime_env = {"env_vars": {"MEDR3_ROOT": str(ROOT)}, "excludes": EXCLUDES}
    args = job_args(tmp_path, steps=(1, 0, 0), extra=[f"model.path={tiny_model_dir}"])
    args = [sys.executable, "pipelines/progressive.py"] + args[2:]
    result = subprocess.run(
        [
            str(ROOT / ".venv/bin/ray") if (ROOT / ".venv/bin/ray").exists() else "ray",
            "job",
            "submit",
            "--address",
            f"http://{dashboard}",
            "--working-dir",
            str(ROOT),
            "--runtime-env-json",
            json.dumps(runtime_env),
            "--",
            *args,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "succeeded" in result.stdout and "[done] 1 steps" in result.stdout
    assert [r["stage"] for r in records(tmp_path)] == ["reasoning"]


EXCLUDES = [
    ".venv/",
    "artifacts/",
    "runs/",
    "checkpoints/",
    ".git/",
    "**/__pycache__/",
    ".pytest_cache/",
    ".ruff_cache/",
    ".hypothesis/",
    "*.egg-info/",
]


@pytest.mark.slow
def test_pipelined_mode_trains_every_step_once(ray_cluster, tmp_path, tiny_model_dir):
    """Generation of step t+1 overlaps training of step t; every step is still trained and logged exactly once."""
    args = job_args(tmp_path, steps=(3, 0, 0), extra=[f"model.path={tiny_model_dir}", "grpo.pipelined=true"])
    finish(start(args, ray_cluster))
    rows = records(tmp_path)
    assert [(r["stage_step"], r["weights_version"]) for r in rows] == [(1, 1), (2, 2), (3, 3)]
    assert all("train/loss" in r for r in rows)


@pytest.mark.slow
@needs_index
def test_warm_start_then_stages_end_with_a_before_after_evaluation(ray_cluster, tmp_path, tiny_model_dir):
    extra = [f"model.path={tiny_model_dir}", "run.warmup_eval=true"]
    args = job_args(tmp_path, steps=(1, 1, 0), warmup=2, final_eval=True, extra=extra)
    out = finish(start(args, ray_cluster))
    rows = records(tmp_path)
    assert [(r["stage"], r["stage_step"]) for r in rows] == [("warmup", 1), ("warmup", 2), ("reasoning", 1),
                                                             ("retrieval", 1)]  # fmt: skip
    assert all(r["train/loss"] > 0 and r["train/tokens_per_s"] > 0 for r in rows[:2])
    assert "train/logprob_gap" in rows[2]
    result = json.loads((tmp_path / "final_eval.json").read_text())
    for key in ("base", "warmup", "final"):
        for mode in ("cot", "rag"):
            assert set(result[key][mode]) == {"mmlu", "pubmedqa", "average"}
            assert all(0 <= v <= 100 for v in result[key][mode].values())
    assert result["chance"]["mmlu"] == pytest.approx(25.0) and result["chance"]["pubmedqa"] == pytest.approx(100 / 3)
    samples = [json.loads(line) for line in (tmp_path / "final_eval_samples.jsonl").read_text().splitlines()]
    limit = 8  # configs/tiny.yaml run.final_eval_limit
    assert len(samples) == 3 * 2 * 2 * limit  # base, warm start and final × cot and rag × two tasks
    for key in ("base", "warmup", "final"):  # the samples agree with the accuracies they explain
        mine = [s for s in samples if s["model"] == key and s["mode"] == "cot" and s["task"] == "mmlu"]
        assert 100 * sum(s["correct"] for s in mine) / limit == pytest.approx(result[key]["cot"]["mmlu"])
    assert (
        "Before / after" in (tmp_path / "summary.md").read_text()
        and "| warmup | 2 |" in (tmp_path / "summary.md").read_text()
    )
    positions = [out.index(line) for line in ("[eval] base:", "[eval] warmup:", "[reasoning", "[eval] final:")]
    assert positions == sorted(positions)  # the warm start's model is evaluated before any GRPO step


@pytest.mark.slow
@needs_index
def test_warm_start_teaches_the_tiny_model_the_protocol_format(ray_cluster, tmp_path, tiny_model_dir):
    """The base tiny model never writes the format; a test-sized warm start (multiple-choice demos, seconds of
    training) lowers its loss and makes it write the format in at least half of its answers to held-out questions."""
    extra = [
        f"model.path={tiny_model_dir}",
        "stages.warmup.mix={mcq: 1.0}",
        "stages.warmup.lr=2e-3",
        "run.final_eval_tasks=[mmlu]",
        "run.final_eval_limit=16",
    ]
    finish(start(job_args(tmp_path, steps=(0, 0, 0), warmup=WARM_STEPS, final_eval=True, extra=extra), ray_cluster))
    losses = [r["train/loss"] for r in records(tmp_path)]
    assert len(losses) == WARM_STEPS and sum(losses[-5:]) < sum(losses[:5])
    samples = [json.loads(line) for line in (tmp_path / "final_eval_samples.jsonl").read_text().splitlines()]

    def format_rate(model: str) -> float:
        mine = [s["format_ok"] for s in samples if s["model"] == model and s["mode"] == "cot"]
        return sum(mine) / len(mine)

    assert format_rate("base") == 0.0 and format_rate("final") >= 0.5


WARM_STEPS = 300
