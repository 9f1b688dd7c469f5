"""Fine-tuning a trained model with the training loop of :mod:`llama.training.loop`.

A fine-tuning run is a training run whose :class:`~llama.training.config.TrainConfig` names a
``base`` checkpoint: the loop, the log, the checkpoints and exact ``--resume`` are the same. Two
things differ, and they are here: the model the loop trains starts from the base's weights (with
LoRA adapters on it when ``lora_rank`` is set, :mod:`llama.training.lora`), and what the run leaves at the
end is an adapter folder rather than a whole model.
"""

from __future__ import annotations

from pathlib import Path

from llama.formats.load import load_model, save_model
from llama.model.config import ModelConfig
from llama.model.transformer import Transformer
from llama.tokenizers.tokenizer import tokenizer_file
from llama.training.config import TrainConfig
from llama.training.lora import add_lora, lora_modules, save_adapter

__all__ = ["build_model", "save_final", "base_tokenizer"]


# --8<-- [start:build_model]
def build_model(cfg: TrainConfig, config: ModelConfig) -> Transformer:
    """The model a run trains: a new one of ``config``, or the ``cfg.base`` checkpoint, with
    adapters of ``cfg.lora_config()`` that alone will train (every other weight frozen).

    Args:
        cfg: the run's settings.
        config: the model's sizes (:func:`llama.training.config.model_config`; for a base, its own
            with the run's context length).

    Raises:
        FileNotFoundError, ValueError: the base checkpoint is missing or unreadable.
    """
    if cfg.base is None:
        return Transformer(config)
    model = load_model(cfg.base, max_seq_len=config.max_seq_len)
    lora = cfg.lora_config()
    return model if lora is None else add_lora(model, lora)


def save_final(model: Transformer, out: Path, base: str | None = None) -> Path:
    """Write what a run produced into ``out``: ``adapter/`` (PEFT's layout,
    :func:`llama.training.lora.save_adapter`) for a model with adapters, else the whole model as a Hugging
    Face folder ``model/``. Returns the folder."""
    if lora_modules(model):
        return save_adapter(model, Path(out) / "adapter", base)
    save_model(model, Path(out) / "model")
    return Path(out) / "model"
# --8<-- [end:build_model]


def base_tokenizer(base: str | Path) -> Path:
    """The tokenizer file that lies beside a base checkpoint (``tokenizer.json`` or
    ``tokenizer.model`` in its folder, as ``llama train`` leaves them).

    Raises:
        FileNotFoundError: there is none; the message says to pass ``--tokenizer``.
    """
    base = Path(base)
    folder = base if base.is_dir() else base.parent
    found = tokenizer_file(folder)
    if found is None:
        raise FileNotFoundError(f"{folder} has no tokenizer.json or tokenizer.model beside the base model; "
                                "pass the tokenizer it was trained with as --tokenizer FILE")
    return found

