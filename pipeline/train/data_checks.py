"""What the trainer checks about the data before it builds anything: that it can train on it.

* `verify_data` (--verify) re-reads every shard before the process group exists, on every rank
  at once: a check of ~100 GB takes longer than NCCL's 10-minute collective timeout, so no rank
  may wait for it inside a collective. A rank that finds a problem exits with it, and torchrun
  stops the others.
* `expectation`: the tokenizer, block size and dtype the data must have, from the checkpoint
  being resumed or the model folder's tokenizer (tokenizer.json, or a SentencePiece-only folder
  converted exactly as `pipeline run --tokenizer FOLDER` converts it), compared by sha256.
* `check_mask_token`: masked-LM training needs the tokenizer's mask token.
* `has_validation`: an output made with `--validation-fraction 0` trains without evaluation.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pipeline.errors import DataError
from pipeline.format.manifest import Manifest, TokenizerRecord
from pipeline.format.paths import TOKENIZER_FILE
from pipeline.train.dataset import DataExpectation


def verify_data(data: str) -> None:
    from pipeline.commands.verification import verify_output  # reads every shard: only here

    problems = verify_output(data)
    if problems:
        raise DataError(
            f"{data}: expected shards that match the manifest, found {len(problems)} problems "
            f"({'; '.join(problems[:5])}); rerun `pipeline run` on this output"
        )


def expectation(
    model_spec: str, prior: dict[str, Any] | None, model: Any, resume_from: Path | None
) -> DataExpectation:
    """What the data must match: the checkpoint's data, or the model folder's tokenizer."""
    rows = int(model.get_input_embeddings().num_embeddings)
    if prior is not None:
        data = prior["data"]
        return DataExpectation(
            tokenizer_sha256=data["tokenizer_sha256"],
            block_size=int(data["block_size"]),
            dtype=data["dtype"],
            num_embeddings=rows,
            source=f"checkpoint {resume_from}",
        )
    folder = Path(model_spec)
    sha = None
    if (folder / TOKENIZER_FILE).is_file() or any(folder.glob("*.model")):
        # The same loading and canonical sha256 as `pipeline run --tokenizer FOLDER`: a
        # SentencePiece-only folder (DeBERTa-v3 as downloaded) is converted the same way.
        from pipeline.ingest.tokenization import describe_tokenizer, load_tokenizer

        sha = describe_tokenizer(load_tokenizer(str(folder))).sha256
    elif folder.is_dir():
        print(
            f"note: {model_spec} has no tokenizer (tokenizer.json or a SentencePiece *.model); "
            "cannot check that the shards were tokenized with the model's tokenizer",
            file=sys.stderr,
        )
    return DataExpectation(
        tokenizer_sha256=sha, num_embeddings=rows, source=f"--model {model_spec}"
    )


def check_mask_token(data: str, tokenizer: TokenizerRecord) -> None:
    if tokenizer.special_ids.get("mask") is None:
        raise DataError(
            f"{data}/{TOKENIZER_FILE}: expected a mask token for masked-language-model training "
            f"([MASK], <mask> or similar), found none among the special tokens "
            f"{sorted(k for k, v in tokenizer.special_ids.items() if v is not None)}; rerun "
            "`pipeline run` with a tokenizer that has one (add it with "
            "tokenizer.add_special_tokens({'mask_token': '[MASK]'}) and save_pretrained)"
        )


def has_validation(manifest: Manifest) -> bool:
    split = manifest.splits.get("validation")
    return split is not None and split.num_blocks > 0
