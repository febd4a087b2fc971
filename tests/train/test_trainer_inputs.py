"""`pipeline train` on the outputs and model folders users have (issue 9's trainer side):
no validation split, a tokenizer without a mask token, a SentencePiece-only DeBERTa-v3 folder,
and Ctrl-C."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
spm = pytest.importorskip("sentencepiece")

from pipeline.run.runner import LocalExecutor, run_pipeline  # noqa: E402
from pipeline.train import checkpoint  # noqa: E402
from pipeline.train import loop as train_loop  # noqa: E402
from tests.conftest import BERT, dictwiki_slice, make_config  # noqa: E402
from tests.train.test_loop import records, train  # noqa: E402


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """400 dictwiki articles in one parquet file (a few seconds through `pipeline run`)."""
    return dictwiki_slice(tmp_path_factory.mktemp("small-corpus"), 0, 400, "part-0.parquet")


def test_an_output_without_validation_trains_without_evaluation(
    small_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    config = make_config(small_corpus, BERT, out, validation_fraction=0.0)
    run_pipeline(config, LocalExecutor(), progress_stream=None)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"]["train"]["num_blocks"] > 50
    assert not manifest["splits"].get("validation", {}).get("num_blocks")
    capsys.readouterr()
    run = tmp_path / "run"
    assert train(str(out), run, "--model", "tiny-bert", "--max-steps", "3", "--log-steps",
                 "1", "--eval-steps", "1") == 0  # fmt: skip
    err = capsys.readouterr().err
    assert err.count("no validation blocks") == 1 and "training without evaluation" in err
    done = err.splitlines()[-1]
    assert done.startswith("done: 3 steps;") and "no evaluation" in done and "nan" not in done
    assert len(records(run, "train")) == 3 and records(run, "eval") == []
    kept = [p.name for p in checkpoint.list_checkpoints(str(run))]
    assert kept == ["step-00000002", "step-00000003"], "still checkpoints to resume from"
    export = json.loads((run / "model" / "trainer_export.json").read_text())
    assert export["step"] == 3 and export["chosen"] == "last step"


def test_a_tokenizer_without_a_mask_token_is_refused_in_one_line(
    shards_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = shards_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["tokenizer"]["special_ids"]["mask"] = None  # what a GPT-2-style BPE records
    path.write_text(json.dumps(manifest))
    assert train(str(shards_copy), tmp_path / "run", "--model", "tiny-bert") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "expected a mask token" in err
    assert "rerun `pipeline run` with a tokenizer that has one" in err
    assert "TypeError" not in err


def deberta_v3_folder(folder: Path, texts: list[str]) -> Path:
    """A DeBERTa-v3 folder as downloaded: spm.model + tokenizer_config.json + config.json +
    weights, no tokenizer.json ([PAD]=0 [CLS]=1 [SEP]=2 [UNK]=3, [MASK] after the pieces)."""
    from transformers import AutoConfig, AutoModelForMaskedLM

    from pipeline.train.models import PRESETS

    folder.mkdir()
    corpus = folder.parent / "spm-corpus.txt"
    corpus.write_text("\n".join(" ".join(t.split()) for t in texts))
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(folder / "spm"), vocab_size=1000,
        model_type="unigram", pad_id=0, bos_id=1, eos_id=2, unk_id=3, pad_piece="[PAD]",
        bos_piece="[CLS]", eos_piece="[SEP]", unk_piece="[UNK]", minloglevel=2,
    )  # fmt: skip
    special = {"bos_token": "[CLS]", "eos_token": "[SEP]", "unk_token": "[UNK]",
               "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
               "mask_token": "[MASK]"}  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "DebertaV2Tokenizer", "do_lower_case": False,
         "split_by_punct": False, "vocab_type": "spm", **special}))  # fmt: skip
    values = dict(PRESETS["tiny-deberta-v2"], vocab_size=1001, pad_token_id=0)
    model_type = values.pop("model_type")
    torch.manual_seed(0)
    model = AutoModelForMaskedLM.from_config(AutoConfig.for_model(model_type, **values))
    model.save_pretrained(str(folder))
    assert not (folder / "tokenizer.json").exists()
    return folder


@pytest.mark.timeout(300)
def test_a_sentencepiece_only_model_folder_has_its_tokenizer_checked(
    small_corpus: Path, shards: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    texts = pq.read_table(small_corpus / "part-0.parquet", columns=["text"])["text"].to_pylist()
    folder = deberta_v3_folder(tmp_path / "deberta-v3", texts)
    out = tmp_path / "out"
    run_pipeline(make_config(small_corpus, folder, out), LocalExecutor(), progress_stream=None)
    capsys.readouterr()
    assert train(str(out), tmp_path / "ok", "--model", str(folder), "--max-steps", "1") == 0
    assert "cannot check" not in capsys.readouterr().err, "checked, not skipped with a note"
    # The same folder against shards of another tokenizer (BERT's): refused by sha256.
    assert train(shards, tmp_path / "other", "--model", str(folder), "--max-steps", "1") == 1
    err = capsys.readouterr().err
    assert f"--model {folder} expects tokenizer sha256" in err


def test_ctrl_c_says_to_rerun_with_resume(
    shards: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = train_loop.TrainStep.__call__
    steps = []

    def interrupted(self: train_loop.TrainStep, batches: list) -> object:
        steps.append(1)
        if len(steps) == 3:
            raise KeyboardInterrupt
        return real(self, batches)

    monkeypatch.setattr(train_loop.TrainStep, "__call__", interrupted)
    run = tmp_path / "run"
    assert train(shards, run, "--model", "tiny-bert", "--max-steps", "5", "--save-steps",
                 "1", "--eval-steps", "0") == 130  # fmt: skip
    err = capsys.readouterr().err
    last = checkpoint.checkpoint_path(str(run), 2)
    assert f"interrupted: rerun the same command with --resume to continue from {last}" in err
    monkeypatch.setattr(train_loop.TrainStep, "__call__", real)
    assert train(shards, run, "--model", "tiny-bert", "--max-steps", "5", "--save-steps",
                 "1", "--eval-steps", "0", "--resume") == 0  # fmt: skip
    assert [r["step"] for r in records(run, "train")][-1] == 5
