"""Cluster configs and multi-node placement: cluster.yaml passes Ray's launcher validation, the 8-GPU config loads, and
a progressive job on a three-node loopback cluster places generator, search and learner on the nodes it was told to.

The loopback cluster is three `ray start --block` processes (head, w1, w2), each in its own session, with a private
temp dir and ports; teardown sends SIGTERM to exactly those three (each then stops the Ray processes it started) and
SIGKILLs whatever is left in their sessions. Never `ray stop`: it would kill every Ray cluster on the machine.
Everything that talks to that cluster runs in a subprocess, so the session's in-process cluster is left alone.
"""

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT, free_port

RAY = str(ROOT / ".venv/bin/ray") if (ROOT / ".venv/bin/ray").exists() else "ray"


def test_cluster_yaml_passes_the_launchers_schema_and_validation():
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(raw, schema)
    validate_config(prepare_config(copy.deepcopy(raw)))  # what `ray up` checks before it calls the cloud
    assert raw["available_node_types"][raw["head_node_type"]]
    setup = " ".join(raw["setup_commands"])
    assert '".[gpu]"' in setup or "MEDR3_EXTRA=gpu" in setup
    start = " ".join(raw["head_start_ray_commands"])
    assert "--dashboard-host=0.0.0.0" in start and "--metrics-export-port" in start


def test_the_8gpu_config_loads_with_the_release_hyperparameters():
    from medr3.config import load_config

    config = load_config(ROOT / "configs/llama3_8b_8gpu.yaml")
    g = config.grpo
    assert (g.samples_per_prompt, g.lr, g.clip_low, g.dual_clip, g.kl_coef, g.temperature) == (16, 1e-6, 0.2, 3, 0, 1)
    assert (g.max_response_tokens, g.overlong_buffer) == (14336, 3072)
    assert (config.rollout.max_searches, config.retriever.top_k) == (4, 5)
    assert config.retriever.backend == "server" and config.retriever.url.startswith("http")
    assert config.model.dtype == "bfloat16" and config.learner.zero_stage == 3
    gen, learner = config.generator, config.learner
    assert gen.replicas * gen.num_gpus + learner.replicas * learner.num_gpus == 8


# --- a three-node cluster on loopback ----------------------------------------------------------------------------


class LoopbackCluster:
    """A Ray head and worker nodes on this machine, each a `ray start --block` process we own."""

    def __init__(self):
        self.temp_dir = tempfile.mkdtemp(prefix="medr3-mn-", dir="/tmp")  # short: Ray's socket paths have a limit
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen] = []
        self.env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        # Token auth off (loopback only); no drain wait on SIGTERM, so teardown takes seconds.
        self.env |= {"RAY_AUTH_MODE": "disabled", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
                     "RAY_USAGE_STATS_ENABLED": "0"}  # fmt: skip

    def add_node(self, name: str, head: bool = False, attempts: int = 3) -> None:
        """Start a node and wait until it is alive. `ray start` gives a raylet 30 s (hard-coded) to register with the
        GCS, which a loaded 2-core machine can miss: a node that gave up is started again."""
        expected = len(self.alive_nodes()) + 1 if not head else 1
        for _ in range(attempts):
            proc = self._start(name, head)
            deadline = time.monotonic() + 120
            while proc.poll() is None and time.monotonic() < deadline:
                if len(self.alive_nodes()) >= expected:
                    return
                time.sleep(1)
        raise AssertionError(f"node {name} did not come up\n{self.logs()}")

    def _start(self, name: str, head: bool) -> subprocess.Popen:
        role = (["--head", f"--port={self.port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={free_port()}",
                 f"--ray-client-server-port={free_port()}"] if head else [f"--address={self.address}"])  # fmt: skip
        args = [RAY, "start", *role, "--block", "--num-cpus=1", f"--resources={json.dumps({name: 1})}",
                f"--temp-dir={self.temp_dir}", "--object-store-memory=200000000", "--disable-usage-stats",
                f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}"]  # fmt: skip
        log = open(Path(self.temp_dir) / f"{name}.log", "a")
        proc = subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def state(self, kind: str) -> list[dict]:
        """`ray list <kind>` of this cluster (the CLI prints a sentence instead of JSON when the list is empty)."""
        cmd = [RAY, "list", kind, f"--address={self.address}", "--format=json", "--detail", "--limit=1000"]
        out = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60).stdout
        return json.loads(out) if out.lstrip().startswith("[") else []

    def alive_nodes(self) -> list[dict]:
        return [n for n in self.state("nodes") if n["state"] == "ALIVE"] if self.procs else []

    def logs(self) -> str:
        return "\n".join(p.read_text()[-1500:] for p in Path(self.temp_dir).glob("*.log"))

    def shutdown(self, timeout: float = 60) -> None:
        import psutil

        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)  # each `ray start --block` stops the processes it started
        for p in self.procs:
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
        # Safety net: anything still alive in our nodes' sessions (never another cluster's processes).
        sessions = {p.pid for p in self.procs}
        for proc in psutil.process_iter():
            try:
                if os.getsid(proc.pid) in sessions:
                    proc.kill()
            except (ProcessLookupError, psutil.Error):
                pass
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture
def loopback_cluster():
    cluster = LoopbackCluster()
    try:
        for name in ("head", "w1", "w2"):  # one at a time: starting nodes together overloads 2 cores
            cluster.add_node(name, head=name == "head")
        yield cluster
    finally:
        cluster.shutdown()


PLACEMENT = {"GeneratorWorker": "w1", "SearchActor": "w2", "LearnerRank": "head"}


@pytest.mark.slow
@pytest.mark.skipif(not (ROOT / "artifacts/index/default/manifest.json").exists(),
                    reason="the corpus index is built by ./setup.sh")  # fmt: skip
def test_a_progressive_job_places_generator_search_and_learner_on_different_nodes(
    loopback_cluster, tiny_model_dir, tmp_path
):
    sets = [f"run.output_dir={tmp_path}", f"model.path={tiny_model_dir}", "stages.warmup.steps=0",
            "run.final_eval=false", "stages.reasoning.steps=0",
            "stages.retrieval.steps=1", "stages.joint.steps=0", "generator.resources={w1: 1}",
            "retriever.resources={w2: 1}", "learner.resources={head: 1}"]  # fmt: skip
    args = [sys.executable, str(ROOT / "pipelines/progressive.py"), "--config", str(ROOT / "configs/tiny.yaml")]
    env = {**loopback_cluster.env, "RAY_ADDRESS": loopback_cluster.address, "MEDR3_ROOT": str(ROOT)}
    job = subprocess.Popen(args + [a for s in sets for a in ("--set", s)], env=env, cwd=ROOT, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        placed = wait_for_placement(loopback_cluster, job)
        out, _ = job.communicate(timeout=900)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0, out[-4000:]
    assert "[done] 1 steps" in out
    node_of = {name: n["node_id"] for n in loopback_cluster.state("nodes") for name in n["resources_total"]}
    assert placed == {cls: node_of[res] for cls, res in PLACEMENT.items()}
    assert len(set(placed.values())) == 3


def wait_for_placement(cluster: LoopbackCluster, job: subprocess.Popen, timeout: float = 600) -> dict[str, str]:
    """Node id of each actor class of PLACEMENT, read from the cluster's state API while the job runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and job.poll() is None:
        alive = [a for a in cluster.state("actors") if a["state"] == "ALIVE" and a["class_name"] in PLACEMENT]
        placed = {a["class_name"]: a["node_id"] for a in alive}
        if len(placed) == len(PLACEMENT):
            return placed
        time.sleep(2)
    raise AssertionError(f"actors not all placed before the job ended (rc {job.poll()})")
