"""Interop: the dataset and collator in `transformers.Trainer`; a split as `datasets.Dataset`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")

from pipeline.train.dataset import BlockDataset, to_hf_dataset  # noqa: E402
from pipeline.train.masking import MaskingSpec, MLMCollator  # noqa: E402
from pipeline.train.models import load_model  # noqa: E402


@pytest.mark.timeout(180)
def test_transformers_trainer_trains_on_the_dataset_and_collator(
    shards: str, tmp_path: Path
) -> None:
    # transformers.Trainer refuses to start without accelerate (pyproject's dev extra has it).
    pytest.importorskip("accelerate")
    torch.set_num_threads(1)
    train = BlockDataset(shards, "train")
    validation = BlockDataset(shards, "validation")
    spec = MaskingSpec.from_manifest(train.tokenizer)
    torch.manual_seed(0)
    model = load_model("tiny-bert", train.tokenizer, train.block_size)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "trainer"),
        per_device_train_batch_size=8,
        per_device_eval_batch_size=32,
        max_steps=8,
        learning_rate=2e-3,
        logging_steps=4,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = transformers.Trainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=torch.utils.data.Subset(validation, range(64)),
        data_collator=MLMCollator(spec, seed=0),
    )
    result = trainer.train()
    assert result.global_step == 8
    assert 5.0 < result.training_loss < 11.0
    evaluation = trainer.evaluate()
    assert 5.0 < evaluation["eval_loss"] < 11.0


def test_a_split_opens_as_a_datasets_dataset(shards: str, tmp_path: Path) -> None:
    ours = BlockDataset(shards, "validation")
    hf = to_hf_dataset(shards, "validation", cache_dir=str(tmp_path / "cache"))
    assert isinstance(hf, datasets.Dataset)
    assert len(hf) == len(ours) > 300
    assert set(hf.column_names) == {"input_ids", "doc_starts"}
    picks = [0, 1, 137, len(ours) - 1]
    rows = hf.select(picks).with_format("numpy")["input_ids"]
    assert np.array_equal(np.stack(list(rows)), ours[picks].tokens)
    # and its rows go through the same collator
    collator = MLMCollator(MaskingSpec.from_manifest(ours.tokenizer), seed=0)
    batch = collator([hf[i] for i in range(16)])
    assert batch["input_ids"].shape == (16, 128)
    assert int((batch["labels"] != -100).sum()) > 100
