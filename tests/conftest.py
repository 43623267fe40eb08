"""Shared fixtures: offline environment, the tiny model, one Ray cluster and one vLLM engine per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The tiny model that setup builds; built into a temp folder if setup has not run."""
    built = ROOT / "artifacts/models/tiny"
    if (built / "config.json").is_file():
        return built
    from medr3.offline_models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny", DATA / "corpus", seed=0)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole session (logical CPUs > cores so fractional actors all fit)."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=4,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}},
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_config(tiny_model_dir):
    """configs/tiny.yaml pointed at the session's tiny model."""
    from medr3.config import load_config

    return load_config(ROOT / "configs/tiny.yaml", [f"model.path={tiny_model_dir}"])


@pytest.fixture(scope="session")
def tiny_pool(ray_cluster, tiny_config):
    """One GeneratorWorker (vLLM on the tiny model) shared by the whole session."""
    from actors.generator import GeneratorPool

    pool = GeneratorPool(tiny_config)
    pool.wait_ready()
    yield pool
    pool.shutdown()
