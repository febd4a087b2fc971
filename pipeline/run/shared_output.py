"""A local `--output` on a multi-node cluster must be a filesystem every node shares.

Otherwise each node writes its shards to its own disk, and the driver finds units "missing"
only after all the work is done. So before any work the driver writes a probe file with a
random token into the output folder, one task per node reads it back, and a run whose
nodes cannot all see it is refused in one line that names those nodes.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

from pipeline.errors import UsageError

PROBE_PREFIX = ".pipeline-probe-"
HIDE_ENV = "PIPELINE_FAULT_HIDE_OUTPUT"  # test hook: a node's workers see no file below this

ReadOnNodes = Callable[[str], dict[str, str | None]]


def read_probe(path: str) -> str | None:
    """Runs on a node: the probe's token, or None if this node cannot read the file."""
    hidden = os.environ.get(HIDE_ENV)
    if hidden and path.startswith(hidden):
        return None
    try:
        return Path(path).read_text()
    except OSError:
        return None


def check_shared_output(output: str, read_on_nodes: ReadOnNodes) -> None:
    token = secrets.token_hex(16)
    probe = Path(output, f"{PROBE_PREFIX}{token}")
    probe.parent.mkdir(parents=True, exist_ok=True)
    probe.write_text(token)
    try:
        found = read_on_nodes(str(probe))
    finally:
        probe.unlink(missing_ok=True)
    blind = sorted(name for name, text in found.items() if text != token)
    if blind:
        raise UsageError(
            f"--output {output}: expected a folder every Ray node can see (a shared "
            f"filesystem), found {len(blind)} of {len(found)} nodes that cannot read a file "
            f"written there: {', '.join(blind)}; mount it on every node at the same path or "
            "use an s3:// --output"
        )
