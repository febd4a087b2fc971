"""Models for the trainer: load or build one, the masked-LM objective, the optimizer.

`--model` is a local Hugging Face folder (`AutoModelForMaskedLM.from_pretrained`, never a
download), a JSON config file, or a named preset (`PRESETS`) built from scratch with the
vocabulary size of the data. `MaskedLMObjective` returns the summed loss over masked tokens and
their count; for BERT, RoBERTa and DeBERTa-v2/v3 it runs the prediction head on the masked
positions only (about 15 % of them), which is exact because the head works token by token, and
saves most of the vocabulary projection (128 K columns for DeBERTa-v3).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import UsageError
from pipeline.format.manifest import TokenizerRecord

_TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
PRESETS: dict[str, dict[str, Any]] = {
    "tiny-bert": {"model_type": "bert", **_TINY, "intermediate_size": 256},
    "tiny-deberta-v2": {
        "model_type": "deberta-v2",
        **_TINY,
        "intermediate_size": 256,
        # DeBERTa-v3's shape: relative positions only, shared keys, both disentangled terms.
        "relative_attention": True,
        "position_biased_input": False,
        "pos_att_type": ["p2c", "c2p"],
        "max_relative_positions": -1,
        "position_buckets": 64,
        "norm_rel_ebd": "layer_norm",
        "share_att_key": True,
    },
    "small-bert": {
        "model_type": "bert",
        "hidden_size": 256,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "intermediate_size": 1024,
    },
}
# Model types whose forward passes a 4-D additive attention mask through unchanged in
# transformers 5.x (checked by running each with a block-diagonal mask against separate
# documents). DeBERTa and DeBERTa-v2/v3 are absent: their embedding layer multiplies the
# embeddings by the mask, which fails for any 3-D or 4-D mask.
DOC_ATTENTION_MODELS = frozenset(
    {"bert", "roberta", "xlm-roberta", "camembert", "electra", "distilbert", "albert", "mpnet"}
    | {"modernbert"}
)


def load_model(spec: str, tokenizer: TokenizerRecord, block_size: int) -> Any:
    """A float32 masked-LM model from a local folder, a JSON config file or a preset name."""
    from transformers import AutoConfig, AutoModelForMaskedLM

    path = Path(spec)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UsageError(
                f"--model {spec}: expected a Hugging Face model folder with config.json, found "
                "none; pass a local model folder, a config JSON file or a preset "
                f"({', '.join(PRESETS)})"
            )
        weights = [*path.glob("*.safetensors"), *path.glob("pytorch_model*.bin")]
        if not weights:
            raise UsageError(
                f"--model {spec}: expected weights (model.safetensors or pytorch_model.bin) "
                "beside config.json, found none; to train from scratch pass the config file "
                f"itself: --model {path / 'config.json'}"
            )
        model = AutoModelForMaskedLM.from_pretrained(
            str(path), local_files_only=True, dtype=torch.float32
        )
    else:
        if path.suffix == ".json" and path.is_file():
            values = json.loads(path.read_text())
        elif spec in PRESETS:
            values = dict(PRESETS[spec])
        else:
            raise UsageError(
                f"--model {spec}: expected a local model folder, a config .json file or one of "
                f"the presets {', '.join(PRESETS)}, found none of these; no downloads are made"
            )
        values.setdefault("vocab_size", tokenizer.vocab_size)
        values.setdefault("max_position_embeddings", max(512, block_size))
        pad = tokenizer.special_ids.get("pad")
        if pad is not None:
            values.setdefault("pad_token_id", int(pad))
        model_type = values.pop("model_type", None)
        if model_type is None:
            raise UsageError(f"--model {spec}: expected a 'model_type' key, found none")
        config = AutoConfig.for_model(model_type, **values)
        model = AutoModelForMaskedLM.from_config(config)
    check_fits(model, spec, block_size)
    return model.float()


def check_fits(model: Any, spec: str, block_size: int) -> None:
    config = model.config
    positions = getattr(config, "max_position_embeddings", None)
    absolute = getattr(config, "position_biased_input", True)
    if absolute and positions is not None and positions < block_size:
        raise UsageError(
            f"--model {spec}: expected at least {block_size} position embeddings (the data's "
            f"block size), found {positions}; use a model with longer positions or shorter blocks"
        )


def doc_attention_supported(model: Any) -> bool:
    return model.config.model_type in DOC_ATTENTION_MODELS


def check_doc_attention(model: Any) -> None:
    if not doc_attention_supported(model):
        raise UsageError(
            f"--doc-attention: expected a model that accepts a 4-D attention mask, found "
            f"model_type {model.config.model_type}; drop the flag or use one of "
            f"{', '.join(sorted(DOC_ATTENTION_MODELS))}"
        )


def _split_head(model: Any) -> tuple[nn.Module, Any] | None:
    """(encoder, head(hidden) -> logits) for heads known to work token by token, else None."""
    kind = model.config.model_type
    if kind == "bert":
        return model.bert, model.cls
    if kind in ("roberta", "xlm-roberta", "camembert"):
        return model.roberta, model.lm_head
    if kind == "deberta-v2":
        if model.legacy:
            return model.deberta, model.cls
        embeddings = model.deberta.embeddings.word_embeddings
        return model.deberta, lambda h: model.lm_predictions(h, embeddings)
    return None


class MaskedLMObjective(nn.Module):
    """forward(input_ids, labels[, attention_mask, masked_positions, masked_labels]) ->
    (sum of token losses, masked count), both 0-d tensors on the model's device.

    `masked_positions` / `masked_labels` (from `masked_targets`, computed on the host before the
    copy) let the head run on the masked positions with a gather whose size the host already
    knows: no boolean indexing on the device, hence no host-device sync and no graph break under
    --compile. Without them the masked positions are found on the device (`labels != -100`).
    """

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model
        # A plain tuple, not submodules: the parts live inside `model` already.
        self._parts = _split_head(model)

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        attention_mask: Any = None,
        masked_positions: torch.Tensor | None = None,
        masked_labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self._parts is not None:
            encoder, head = self._parts
            hidden = encoder(input_ids=input_ids, attention_mask=attention_mask)[0]
            if masked_positions is not None and masked_labels is not None:
                logits = head(hidden.flatten(0, 1).index_select(0, masked_positions))
                target = masked_labels
            else:
                chosen = labels != -100
                logits, target = head(hidden[chosen]), labels[chosen]
        else:
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
            logits, target = logits.flatten(0, 1), labels.flatten()
        loss = F.cross_entropy(logits.float(), target, ignore_index=-100, reduction="sum")
        return loss, (target != -100).sum()


def masked_targets(labels: torch.Tensor, multiple: int = 64) -> dict[str, torch.Tensor]:
    """On the host: flat positions of the masked tokens of `labels` [b, L] and their labels,
    padded to a multiple of `multiple` (position 0, label -100: ignored by the loss) so that
    --compile sees few distinct shapes. NumPy, single-threaded: ~0.3 ms for 512 x 128 here,
    where torch.nonzero on a loaded machine's thread pool took 1-40 ms."""
    flat = labels.reshape(-1).numpy()
    found = np.flatnonzero(flat != -100)
    size = max(multiple, -(-found.size // multiple) * multiple)
    positions = np.zeros(size, dtype=np.int64)
    targets = np.full(size, -100, dtype=np.int64)
    positions[: found.size] = found
    targets[: found.size] = flat[found]
    return {
        "masked_positions": torch.from_numpy(positions),
        "masked_labels": torch.from_numpy(targets),
    }


def enable_gradient_checkpointing(model: Any, spec: str) -> None:
    """Recompute activations in the backward pass (HF's gradient_checkpointing_enable): about a
    third more compute for a fraction of the activation memory, so larger micro-batches fit."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise UsageError(
            f"--gradient-checkpointing: expected a model that supports it, found "
            f"{type(model).__name__} ({spec}) without; drop the flag"
        )
    # Non-reentrant: works with DDP, torch.compile and inputs that need no grad. transformers
    # 5.x renamed the method (the old name warns); 4.x has only the old one.
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def build_optimizer(
    model: nn.Module, lr: float, weight_decay: float, fused: bool
) -> torch.optim.AdamW:
    """AdamW; biases and norm weights (every tensor of fewer than 2 dims) get no decay."""
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=fused or None)


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup from 0 to the peak, then linear decay to 0 at `total_steps`."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup_steps)
    )


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """The learning rate of `step` (0-based) over the peak, exactly as transformers'
    `get_linear_schedule_with_warmup` (what `Trainer` uses): step 0 of a warmup runs at 0,
    step `warmup_steps` at the peak (tested step by step against it)."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
