"""`pipeline train` replaces or deletes only what a trainer run wrote (train/run_folder.py): a
user's own model/ folder, logs and files under the trainer's names survive every run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from pipeline.errors import UsageError  # noqa: E402
from pipeline.format.manifest import load_manifest  # noqa: E402
from pipeline.train import checkpoint  # noqa: E402
from pipeline.train.models import load_model  # noqa: E402
from pipeline.train.run_folder import check_run_folder, foreign_files  # noqa: E402
from pipeline.train.runtime import export_model  # noqa: E402
from tests.conftest import BERT  # noqa: E402
from tests.train.test_loop import records, train  # noqa: E402


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


@pytest.fixture
def user_model(shards: str, tmp_path: Path) -> Path:
    """proj2/model as a user keeps it: BERT-shaped weights, vocab.txt and their own notes."""
    folder = tmp_path / "proj2" / "model"
    model = load_model("tiny-bert", load_manifest(shards).tokenizer, 128)
    model.save_pretrained(str(folder))
    shutil.copyfile(BERT / "vocab.txt", folder / "vocab.txt")
    (folder / "MY_NOTES.txt").write_text("lr 3e-5 diverged; try 1e-5\n")
    return folder


def test_a_users_model_folder_in_output_is_never_replaced(
    shards: str, user_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reviewer's repro: --model proj2/model --output proj2 deleted the notes and vocab."""
    proj = user_model.parent
    before = snapshot(proj)
    for extra in ([], ["--overwrite"]):
        code = train(shards, proj, "--model", str(user_model), "--max-steps", "2", *extra)
        assert code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"--model {user_model}: expected a model outside" in err
        assert "choose another --output" in err
        assert snapshot(proj) == before, "nothing written, nothing deleted"
    # The same model from elsewhere: proj2/model is still not the trainer's to replace.
    elsewhere = proj.parent / "base"
    shutil.copytree(user_model, elsewhere)
    for extra in ([], ["--overwrite"]):
        assert train(shards, proj, "--model", str(elsewhere), "--max-steps", "2", *extra) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "no trainer run wrote: " in err
        assert f"{user_model}; move them out of {proj}" in err and "--overwrite never" in err
        assert snapshot(proj) == before
    # Moved away, the run trains and exports into a model/ of its own.
    shutil.move(user_model, proj.parent / "mine")
    assert train(shards, proj, "--model", str(elsewhere), "--max-steps", "2") == 0
    marker = json.loads((proj / "model" / "trainer_export.json").read_text())
    assert marker["step"] == 2 and "model.safetensors" in marker["files"]
    assert "MY_NOTES.txt" in snapshot(proj.parent / "mine")


def test_overwrite_deletes_only_what_trainer_runs_wrote(
    shards: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert train(shards, run, "--model", "tiny-bert", "--max-steps", "1", "--log-samples") == 0
    assert (run / "samples-rank0.jsonl").stat().st_size > 0
    capsys.readouterr()
    foreign = {
        run / "model" / "MY_NOTES.txt": b"notes\n",  # in a trainer-written model/
        run / "checkpoints" / "README.txt": b"mine\n",
        run / "samples-rank1.jsonl": b"another tool's samples\n",
    }
    for path, text in foreign.items():
        path.write_bytes(text)
        before = snapshot(run)
        args = ("--model", "tiny-bert", "--max-steps", "2", "--overwrite")
        assert train(shards, run, *args) == 2
        err = capsys.readouterr().err
        assert f"no trainer run wrote: {path};" in err and err.count("\n") == 1
        assert snapshot(run) == before
        path.unlink()
    (run / "checkpoints" / "step-00000007").mkdir()  # no state file: not a checkpoint
    assert foreign_files(str(run)) == [run / "checkpoints" / "step-00000007"]
    (run / "checkpoints" / "step-00000007").rmdir()
    (run / "metrics.jsonl").write_text('{"loss": 1.0}\n')  # not the trainer's start record
    assert foreign_files(str(run)) == [run / "metrics.jsonl"]
    (run / "metrics.jsonl").unlink()
    # All the trainer's own: --overwrite starts over.
    assert train(shards, run, "--model", "tiny-bert", "--max-steps", "2", "--overwrite") == 0
    assert [r["step"] for r in records(run, "train")] == [2]
    assert not (run / "samples-rank0.jsonl").exists(), "the earlier run's own log, deleted"


def test_clear_run_leaves_files_no_trainer_run_wrote(tmp_path: Path) -> None:
    run = tmp_path / "run"
    own = checkpoint.checkpoint_path(str(run), 5)
    own.mkdir(parents=True)
    (own / checkpoint.STATE_FILE).write_text("{}")
    (run / "checkpoints" / ".tmp-step-00000006").mkdir()
    kept = [run / "checkpoints" / "step-00000009" / "weights.bin", run / "model" / "vocab.txt"]
    kept += [run / "metrics.jsonl", run / "samples-rank0.jsonl"]
    for path in kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("a user's file\n")
    checkpoint.clear_run(str(run))
    assert not own.exists() and not (run / "checkpoints" / ".tmp-step-00000006").exists()
    assert all(p.read_text() == "a user's file\n" for p in kept)


def test_the_export_replaces_only_an_earlier_export(shards: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    model = load_model("tiny-bert", load_manifest(shards).tokenizer, 128)
    info = {"step": 1, "chosen": "last step"}
    export_model(model, shards, str(run), checkpoint=None, info=info)
    export_model(model, shards, str(run), checkpoint=None, info={**info, "step": 2})
    marker = json.loads((run / "model" / "trainer_export.json").read_text())
    assert marker["step"] == 2 and "tokenizer.json" in marker["files"]
    assert not (run / ".tmp-model").exists()
    (run / "model" / "vocab.txt").write_text("mine\n")  # dropped in while the run trained
    with pytest.raises(UsageError, match=r"model/vocab.txt: expected an export of `pipeline "
                       r"train` to replace, found files it did not write"):  # fmt: skip
        export_model(model, shards, str(run), checkpoint=None, info=info)
    assert (run / "model" / "vocab.txt").read_text() == "mine\n"
    assert json.loads((run / "model" / "trainer_export.json").read_text())["step"] == 2
    # A crashed export (its marker first) is the trainer's to remove; another .tmp-model not.
    (run / "model" / "vocab.txt").unlink()
    (run / ".tmp-model").mkdir()
    (run / ".tmp-model" / "trainer_export.json").write_text("{}")
    check_run_folder(str(run), "tiny-bert")
    export_model(model, shards, str(run), checkpoint=None, info=info)
    (run / ".tmp-model").mkdir()
    (run / ".tmp-model" / "notes.txt").write_text("mine\n")
    with pytest.raises(UsageError, match=r"found 1 file\(s\) under the trainer's names"):
        check_run_folder(str(run), "tiny-bert")
    with pytest.raises(UsageError, match="expected a model outside the folder this run"):
        check_run_folder(str(run), str(run / "model"))
