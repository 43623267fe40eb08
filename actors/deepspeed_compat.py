"""Every DeepSpeed-version-specific call the project makes, in one place (checked against DeepSpeed 0.19).

DeepSpeed is imported inside functions so that importing the project does not pay for it.
"""

from __future__ import annotations

import os

import torch


def init_distributed(backend: str, rank: int, world_size: int, master_addr: str, master_port: int) -> None:
    os.environ.update(
        MASTER_ADDR=master_addr,
        MASTER_PORT=str(master_port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK="0" if backend == "gloo" else os.environ.get("LOCAL_RANK", "0"),
    )
    import deepspeed

    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)


def ds_config(zero_stage: int, bf16: bool, grad_clip: float) -> dict:
    """One micro-batch per backward: the learner accumulates variable-size micro-batches itself and marks the
    accumulation boundary explicitly."""
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": grad_clip,
        "zero_optimization": {"stage": zero_stage},
        "bf16": {"enabled": bf16},
        "zero_allow_untested_optimizer": True,  # a plain torch AdamW avoids DeepSpeed's JIT-built fused Adam
        "steps_per_print": 10**9,
    }


def initialize(model, optimizer, scheduler, config: dict):
    import deepspeed

    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config)
    return engine


def backward(engine, loss: torch.Tensor, boundary: bool) -> None:
    """Backward of one micro-batch; gradients are reduced across ranks only at the boundary."""
    engine.set_gradient_accumulation_boundary(boundary)
    engine.backward(loss, scale_wrt_gas=False)


def step(engine) -> float:
    """Optimizer step (with gradient clipping); returns the global gradient norm before clipping."""
    # Without ZeRO, DeepSpeed clips a client optimizer's fp32 gradients but keeps no norm (get_global_grad_norm is
    # None), so it is measured here; the gradients are already reduced across ranks at the accumulation boundary.
    own = None if engine.zero_optimization() else _grad_norm(engine.module)
    engine.step()
    norm = engine.get_global_grad_norm()
    norm = own if norm is None else norm
    return float(norm) if norm is not None else 0.0


def _grad_norm(module: torch.nn.Module) -> float | None:
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(grads)) if grads else None


def full_state_dict(engine, zero_stage: int) -> dict[str, torch.Tensor] | None:
    """The full weights on rank 0 (None elsewhere). Under ZeRO-3 every rank must call this (it gathers)."""
    import deepspeed
    import torch.distributed as dist

    module = engine.module
    if zero_stage < 3:
        return _cpu_copy(module.state_dict()) if dist.get_rank() == 0 else None
    with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
        return _cpu_copy(module.state_dict()) if dist.get_rank() == 0 else None


def _cpu_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def save_checkpoint(engine, folder: str, client_state: dict) -> None:
    engine.save_checkpoint(folder, tag="state", client_state=client_state, save_latest=False)


def snapshot_checkpoint(engine, folder: str, client_state: dict) -> list[tuple[str, object]]:
    """What `save_checkpoint` would write, as in-memory copies `(path, state)` to write later (`write_snapshot`).

    DeepSpeed writes every file through `engine.checkpoint_engine.save(state, path)`; swapping in an engine that
    deep-copies instead of writing lets training go on while another thread writes the copies (folders are made now).
    """
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    class Capture(TorchCheckpointEngine):
        def __init__(self):
            super().__init__(None)
            self.files: list[tuple[str, object]] = []

        def save(self, state_dict, path: str):
            self.files.append((path, _clone(state_dict)))

    original, capture = engine.checkpoint_engine, Capture()
    engine.checkpoint_engine = capture
    try:
        engine.save_checkpoint(folder, tag="state", client_state=client_state, save_latest=False)
    finally:
        engine.checkpoint_engine = original
    return capture.files


def _clone(state):
    """Tensors copied (DeepSpeed's flat partitions are views that `copy.deepcopy` refuses); the rest — sizes, names,
    config — is immutable between a snapshot and its write and is kept by reference."""
    from torch.utils._pytree import tree_map

    return tree_map(lambda x: x.detach().clone() if isinstance(x, torch.Tensor) else x, state)


def write_snapshot(files: list[tuple[str, object]]) -> None:
    for path, state in files:
        torch.save(state, path)


def load_checkpoint(engine, folder: str) -> dict:
    _, client_state = engine.load_checkpoint(
        folder, tag="state", load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if client_state is None:
        raise FileNotFoundError(f"{folder}: no DeepSpeed checkpoint 'state' to load")
    return client_state
