"""Training (parts III and IV): the settings of a run, its loss, optimizers and precision, the loop, its
checkpoints, data parallelism and fine-tuning.

Modules, in the order the book meets them: :mod:`~llama.training.config`,
:mod:`~llama.training.precision`, :mod:`~llama.training.loss`, :mod:`~llama.training.optim`,
:mod:`~llama.training.flops`, :mod:`~llama.training.memory`, :mod:`~llama.training.allocator`,
:mod:`~llama.training.tokenizer`,
:mod:`~llama.training.run_folder`, :mod:`~llama.training.state`, :mod:`~llama.training.distributed`,
:mod:`~llama.training.fsdp`, :mod:`~llama.training.sharded`, :mod:`~llama.training.lora`,
:mod:`~llama.training.finetune`, :mod:`~llama.training.loop`.
Every public name of these modules can be imported from the package itself
(``from llama.training import ...``): it is loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llama._exports import lazy_exports

_EXPORTS = {
    "MODEL_SIZES": "config", "RECIPES": "config", "SettingError": "config", "TrainConfig": "config",
    "model_config": "config", "base_config": "config", "memory_needed": "config", "check_memory": "config",
    "DTYPES": "precision", "BF16_FEATURES": "precision", "resolve_dtype": "precision",
    "bf16_support": "precision", "fast_dtype": "precision", "cpu_bf16_features": "precision",
    "measure_bf16_slowdown": "precision", "emulation_warning": "precision", "choose_dtype": "precision",
    "log_sum_exp": "loss", "CrossEntropy": "loss", "cross_entropy": "loss",
    "lr_at": "optim", "AdamW": "optim", "Muon": "optim", "newton_schulz": "optim", "clip_grad_norm": "optim",
    "make_optimizer": "optim", "OPTIMIZERS": "optim",
    "matmul_params": "flops", "flops_per_token": "flops", "training_memory": "flops",
    "STRATEGIES": "memory", "parameter_shapes": "memory", "shard_numel": "memory", "bytes_per_rank": "memory",
    "communication_bytes": "memory",
    "MMAP_THRESHOLD": "allocator", "TRIM_THRESHOLD": "allocator", "reuse_freed_memory": "allocator",
    "build_tokenizer": "tokenizer",
    "LOCK_NAME": "run_folder", "RUN_FILES": "run_folder", "RunLock": "run_folder", "check_out": "run_folder",
    "latest_name": "run_folder", "remove_partial": "run_folder", "remove_new_run": "run_folder",
    "kept_after_stop": "run_folder",
    "merge_resume": "state", "preflight": "state", "prepare_run": "state", "save_checkpoint": "state",
    "publish_checkpoint": "state", "latest_checkpoint": "state", "resume_checkpoint": "state",
    "load_checkpoint": "state", "restore_generators": "state", "read_log": "state", "append_log": "state",
    "finish_run": "state", "trim_log": "state",
    "RENDEZVOUS_TIMEOUT": "distributed", "Dist": "distributed", "setup": "distributed",
    "teardown": "distributed", "wrap_model": "distributed", "no_grad_sync": "distributed",
    "local_part": "distributed", "all_finite": "distributed", "on_rank0": "distributed",
    "broadcast_from_rank0": "distributed",
    "shard": "fsdp", "checkpoint_activations": "fsdp", "full_state_dict": "fsdp", "local_bytes": "fsdp",
    "held_bytes": "fsdp",
    "is_sharded_checkpoint": "sharded", "save_sharded": "sharded", "load_sharded": "sharded",
    "read_sharded": "sharded",
    "TARGETS": "lora", "LoRAConfig": "lora", "LoRALinear": "lora", "add_lora": "lora", "lora_modules": "lora",
    "lora_state_dict": "lora", "merge": "lora", "unmerge": "lora", "merge_into_base": "lora",
    "trainable_parameters": "lora", "count_lora_parameters": "lora", "save_adapter": "lora",
    "load_adapter": "lora", "read_adapter": "lora",
    "build_model": "finetune", "save_final": "finetune", "base_tokenizer": "finetune",
    "evaluate": "loop", "train_step": "loop", "train": "loop",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # what type checkers and the API pages read
    from llama.training.config import (
        MODEL_SIZES, RECIPES, SettingError, TrainConfig, base_config, check_memory, memory_needed,
        model_config,
    )
    from llama.training.precision import (
        BF16_FEATURES, DTYPES, bf16_support, choose_dtype, cpu_bf16_features, emulation_warning, fast_dtype,
        measure_bf16_slowdown, resolve_dtype,
    )
    from llama.training.loss import CrossEntropy, cross_entropy, log_sum_exp
    from llama.training.optim import (
        AdamW, Muon, OPTIMIZERS, clip_grad_norm, lr_at, make_optimizer, newton_schulz,
    )
    from llama.training.flops import flops_per_token, matmul_params, training_memory
    from llama.training.memory import (
        STRATEGIES, bytes_per_rank, communication_bytes, parameter_shapes, shard_numel,
    )
    from llama.training.allocator import MMAP_THRESHOLD, TRIM_THRESHOLD, reuse_freed_memory
    from llama.training.tokenizer import build_tokenizer
    from llama.training.run_folder import (
        LOCK_NAME, RUN_FILES, RunLock, check_out, kept_after_stop, latest_name, remove_new_run,
        remove_partial,
    )
    from llama.training.state import (
        append_log, finish_run, latest_checkpoint, load_checkpoint, merge_resume, preflight, prepare_run,
        publish_checkpoint, read_log, restore_generators, resume_checkpoint, save_checkpoint, trim_log,
    )
    from llama.training.distributed import (
        Dist, RENDEZVOUS_TIMEOUT, all_finite, broadcast_from_rank0, local_part, no_grad_sync, on_rank0,
        setup, teardown, wrap_model,
    )
    from llama.training.fsdp import checkpoint_activations, full_state_dict, held_bytes, local_bytes, shard
    from llama.training.sharded import is_sharded_checkpoint, load_sharded, read_sharded, save_sharded
    from llama.training.lora import (
        LoRAConfig, LoRALinear, TARGETS, add_lora, count_lora_parameters, load_adapter, lora_modules,
        lora_state_dict, merge, merge_into_base, read_adapter, save_adapter, trainable_parameters, unmerge,
    )
    from llama.training.finetune import base_tokenizer, build_model, save_final
    from llama.training.loop import evaluate, train, train_step
