"""Training strategies whose settings survive `--print_config` and the saved `config.yaml`.

Lightning's `FSDPStrategy` takes its auto-wrap and activation-checkpointing policies as sets of
classes; jsonargparse parses them but drops them when it dumps the config, so a run's saved
config.yaml silently lacks the very setting that made it fit in memory. `FSDP` here takes the same
information as import paths (plain strings), which dump and reload exactly.
"""

from __future__ import annotations

import importlib
from typing import Literal

import torch
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.strategies.fsdp import _move_torchmetrics_to_device, _setup_activation_checkpointing
from torch import nn

__all__ = ["FSDP", "import_class"]


def import_class(path: str) -> type[nn.Module]:
    """Import `package.module.ClassName`; a wrong path fails with a one-line error naming it."""
    module_name, _, class_name = path.rpartition(".")
    if not module_name:
        raise ValueError(f"{path!r} is not an import path of the form package.module.ClassName")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import module class {path!r}: {err}") from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"{path!r} is not an nn.Module subclass")
    return cls


class FSDP(FSDPStrategy):
    """Lightning's FSDPStrategy configured with import paths instead of class objects.

    Args:
        wrap_modules: import paths of the blocks that become FSDP units (one per transformer layer
            is the usual choice), e.g. `timm.models.vision_transformer.Block`.
        checkpoint_modules: import paths of the blocks whose activations are recomputed in the
            backward pass (activation checkpointing); empty for none.
        sharding_strategy: FULL_SHARD (ZeRO-3-like), SHARD_GRAD_OP (ZeRO-2-like), NO_SHARD or
            HYBRID_SHARD (full shard within a node, replicate across nodes).
        state_dict_type: `sharded` saves one file per rank (fast, consolidate with `fabric
            consolidate`); `full` gathers one file on rank 0.
        cpu_offload: keep parameters on the CPU between uses (slower, for models that do not fit).
    """

    def __init__(
        self,
        wrap_modules: list[str] | None = None,
        checkpoint_modules: list[str] | None = None,
        sharding_strategy: Literal["FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD"] = "FULL_SHARD",
        state_dict_type: Literal["sharded", "full"] = "sharded",
        cpu_offload: bool = False,
    ) -> None:
        self.wrap_modules = list(wrap_modules or [])
        self.checkpoint_modules = list(checkpoint_modules or [])
        super().__init__(
            auto_wrap_policy={import_class(p) for p in self.wrap_modules} or None,
            activation_checkpointing_policy={import_class(p) for p in self.checkpoint_modules} or None,
            sharding_strategy=sharding_strategy,
            state_dict_type=state_dict_type,
            cpu_offload=cpu_offload,
        )

    def _setup_model(self, model: nn.Module) -> nn.Module:
        """Wrap as Lightning does; on CPU name the device, which torch's FSDP otherwise refuses.

        Lightning passes `device_id=root_device.index`, None for the CPU, and torch's FSDP then looks for an
        accelerator and stops ("FSDP needs a non-CPU accelerator device"). Given the CPU device explicitly it
        shards over gloo, which is how the recipe rehearsal (tests/recipes) runs this preset on CPU processes.
        """
        if self.root_device.type != "cpu":
            return super()._setup_model(model)
        from torch.distributed.fsdp import FullyShardedDataParallel

        if not any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
            model = FullyShardedDataParallel(
                module=model,
                cpu_offload=self.cpu_offload,
                mixed_precision=self.mixed_precision_config,
                sharding_strategy=self.sharding_strategy,
                device_id=torch.device("cpu"),
                **self.kwargs,
            )
        _move_torchmetrics_to_device(model, self.root_device)
        _setup_activation_checkpointing(model, self._activation_checkpointing_kwargs)
        return model
