"""Process groups and FSDP2 sharding, torchtitan style.

`init_distributed` joins the process group torchrun describes (NCCL when CUDA is there, gloo
otherwise) and returns a one-dimensional device mesh over all ranks. `parallelize` applies
`fully_shard` to every transformer block and then to the root, so each block's parameters are
gathered just before it runs and freed after, with an optional activation checkpoint around each
block. Mixed precision: parameters in bf16 and gradients reduced in fp32 on GPU; fp32 throughout
on CPU, where gloo and most kernels have no bf16 speed to gain.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from core.config import option

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ParallelConfig:
    """How the model is sharded over the ranks (FSDP2) and in which precision."""

    param_dtype: str = option(
        "auto",
        "Dtype of the gathered parameters during forward and backward: `auto` is bfloat16 on GPU and float32 on "
        "CPU; or `float32`, `bfloat16`, `float16`. The sharded master copy stays float32.",
    )
    reduce_dtype: str = option("float32", "Dtype in which gradients are reduce-scattered across ranks.")
    activation_checkpointing: bool = option(
        False,
        "Recompute each block's activations in the backward pass instead of keeping them: trades about a third "
        "more compute for memory that no longer grows with the number of blocks.",
    )
    reshard_after_forward: bool = option(
        True,
        "Free each block's gathered parameters after its forward (gather them again for backward): ZeRO-3 memory; "
        "False keeps them (ZeRO-2 like, less communication).",
    )


def init_distributed(timeout_s: float = 600.0) -> tuple[DeviceMesh, torch.device]:
    """Join the process group set up by torchrun (or a single-process group when run directly)."""
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s))
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    return init_device_mesh(device.type, (dist.get_world_size(),)), device


def _dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; one of auto, {', '.join(_DTYPES)}")
    return _DTYPES[name]


def parallelize(model: nn.Module, mesh: DeviceMesh, config: ParallelConfig, device: torch.device) -> nn.Module:
    """Shard `model` (which has an `nn.ModuleList` named `blocks`) over `mesh`, block by block."""
    # The model casts its own inputs and keeps timesteps and modulation in float32.
    policy = MixedPrecisionPolicy(
        param_dtype=_dtype(config.param_dtype, device),
        reduce_dtype=_dtype(config.reduce_dtype, device),
        cast_forward_inputs=False,
    )
    for index, block in enumerate(model.blocks):
        if config.activation_checkpointing:
            block = checkpoint_wrapper(block, preserve_rng_state=False)
            model.blocks[index] = block
        # The last block's parameters are needed again first in backward: keep them gathered.
        last = index == len(model.blocks) - 1
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=config.reshard_after_forward and not last)
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=config.reshard_after_forward)
    return model
