"""Ray job entry point: `ray job submit --address http://HEAD:8265 --working-dir . --
python jobs/preprocess.py --input ... --tokenizer ... --output ...`.

Thin on purpose: it parses the same flags as `pipeline run` and runs the same runner on the
cluster the job was submitted to (its driver finds it through the RAY_ADDRESS that Ray's job
supervisor sets; see pipeline/run/ray_address.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the working dir's package

from pipeline.commands.cli import main
from pipeline.run.allocator import preload_mimalloc

if __name__ == "__main__":
    preload_mimalloc()  # the job's driver and its forked workers; Ray's tasks keep their own
    given = any(a.startswith("--ray-address") for a in sys.argv[1:])
    sys.exit(main(["run", *([] if given else ["--ray-address", "auto"]), *sys.argv[1:]]))
