"""Models: presets and configs, the masked-positions-only objective, optimizer and schedule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from pipeline.errors import UsageError  # noqa: E402
from pipeline.format.manifest import TokenizerRecord  # noqa: E402
from pipeline.train.models import (  # noqa: E402
    PRESETS,
    MaskedLMObjective,
    build_optimizer,
    build_scheduler,
    doc_attention_supported,
    load_model,
)

TOKENIZER = TokenizerRecord(
    file="tokenizer.json",
    sha256="0" * 64,
    vocab_size=300,
    dtype="uint16",
    prefix_ids=(),
    suffix_ids=(),
    special_ids={"cls": None, "sep": None, "pad": 0, "mask": 4, "unk": None},
    all_special_ids=(0, 4),
)


@pytest.mark.parametrize("preset", ["tiny-bert", "tiny-deberta-v2"])
def test_objective_on_masked_positions_equals_the_models_own_loss(preset: str) -> None:
    torch.manual_seed(0)
    model = load_model(preset, TOKENIZER, 128).eval()
    assert model.get_input_embeddings().num_embeddings == 300  # vocab size from the data
    ids = torch.randint(5, 300, (3, 32))
    labels = torch.full_like(ids, -100)
    chosen = torch.rand(ids.shape) < 0.2
    labels[chosen] = ids[chosen]
    objective = MaskedLMObjective(model)
    assert objective._parts is not None  # the head runs on the masked positions only
    loss_sum, count = objective(ids, labels)
    reference = model(input_ids=ids, labels=labels).loss
    assert int(count) == int(chosen.sum()) > 0
    assert torch.allclose(loss_sum / count, reference, rtol=1e-5)
    objective._parts = None  # the generic path: full logits
    full_sum, _ = objective(ids, labels)
    assert torch.allclose(full_sum, loss_sum, rtol=1e-5)


def test_a_json_config_builds_a_model_and_bad_specs_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "bert", "hidden_size": 32,
                                  "num_hidden_layers": 1, "num_attention_heads": 2,
                                  "intermediate_size": 64}))  # fmt: skip
    model = load_model(str(config), TOKENIZER, 64)
    assert model.config.hidden_size == 32 and model.config.vocab_size == 300
    assert model.config.pad_token_id == 0
    with pytest.raises(UsageError, match=r"expected a local model folder, a config \.json"):
        load_model("bert-base-uncased", TOKENIZER, 64)  # a hub name: never downloaded
    with pytest.raises(UsageError, match=r"expected weights .* beside config\.json, found none"):
        load_model(str(tmp_path), TOKENIZER, 64)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="expected a Hugging Face model folder with config"):
        load_model(str(tmp_path / "empty"), TOKENIZER, 64)
    config.write_text(json.dumps({"hidden_size": 32}))
    with pytest.raises(UsageError, match="expected a 'model_type' key"):
        load_model(str(config), TOKENIZER, 64)
    config.write_text(json.dumps({"model_type": "bert", "max_position_embeddings": 64}))
    with pytest.raises(UsageError, match="expected at least 128 position embeddings"):
        load_model(str(config), TOKENIZER, 128)


def test_which_models_take_a_document_attention_mask() -> None:
    assert doc_attention_supported(load_model("tiny-bert", TOKENIZER, 128))
    assert not doc_attention_supported(load_model("tiny-deberta-v2", TOKENIZER, 128))
    assert set(PRESETS) >= {"tiny-bert", "tiny-deberta-v2"}


def test_bert_with_a_block_diagonal_mask_sees_each_document_alone() -> None:
    from pipeline.train.masking import doc_attention_bias

    torch.manual_seed(0)
    model = load_model("tiny-bert", TOKENIZER, 128).eval()
    ids = torch.randint(5, 300, (1, 24))
    doc_ids = torch.tensor([[0] * 10 + [1] * 14])
    with torch.no_grad():
        both = model.bert(input_ids=ids, attention_mask=doc_attention_bias(doc_ids))[0]
        first_only = model.bert(input_ids=ids, attention_mask=(doc_ids == 0).long())[0]
    assert torch.allclose(both[0, :10], first_only[0, :10], atol=1e-5)


def test_no_weight_decay_on_biases_and_norms() -> None:
    model = load_model("tiny-bert", TOKENIZER, 128)
    optimizer = build_optimizer(model, 1e-3, 0.01, fused=False)
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.ndim >= 2 for p in decay["params"])
    skipped = [names[id(p)] for p in no_decay["params"]]
    assert any(n.endswith("LayerNorm.weight") for n in skipped)
    assert any(n.endswith(".bias") for n in skipped)
    assert len(decay["params"]) + len(skipped) == len(names)


@pytest.mark.parametrize("total, warmup", [(10, 4), (10, 0), (7, 7), (100, 6), (1, 0), (5, 1)])
def test_schedule_equals_transformers_linear_schedule_step_by_step(total: int, warmup: int) -> None:
    from transformers import get_linear_schedule_with_warmup

    ours_param, hf_param = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    ours_opt = torch.optim.AdamW([ours_param], lr=3e-4)
    hf_opt = torch.optim.AdamW([hf_param], lr=3e-4)
    ours = build_scheduler(ours_opt, total_steps=total, warmup_steps=warmup)
    hf = get_linear_schedule_with_warmup(hf_opt, warmup, total)
    seen = []
    for _ in range(total + 2):  # and past the end, where both stay at 0
        assert ours.get_last_lr() == hf.get_last_lr()  # exactly, not approximately
        seen.append(ours.get_last_lr()[0])
        for opt, sched in ((ours_opt, ours), (hf_opt, hf)):
            opt.step()
            sched.step()
    assert seen[total] == 0.0 and seen[-1] == 0.0
    if warmup:
        assert seen[0] == 0.0  # HF warms up as step / warmup: the first step has lr 0
    if warmup < total:
        assert seen[warmup] == pytest.approx(3e-4)  # the peak
