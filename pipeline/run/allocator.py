"""Run `pipeline run` on mimalloc: the tokenizer spends much of its time in malloc and free.

Every token of an `Encoding` is a Rust `String`, and every word a `Vec`: glibc's allocator was
46 % of the 128k Unigram's tokenizer samples in a worker (py-spy), and mimalloc makes the same
`encode_batch_fast` 1.25-1.8x faster with Unigram and 1.2-1.3x with WordPiece (README,
"Performance"). The allocator must be chosen before a process starts, so the command's entry
point re-executes itself once with `LD_PRELOAD` (same pid, same arguments); its forked workers
share the loaded allocator. `LD_PRELOAD` is then put back as it was, so that nothing else this
process starts (a local Ray, subprocesses) is touched. The output bytes do not depend on it.

PIPELINE_ALLOCATOR=system keeps glibc's; mimalloc comes from the cmeel-mimalloc wheel (MIT).
"""

from __future__ import annotations

import importlib.metadata
import os
import sys

ALLOCATOR_ENV = "PIPELINE_ALLOCATOR"
_PRELOADED_ENV = "PIPELINE_PRELOADED"  # set across the re-exec: LD_PRELOAD as it was before
_CHOICES = ("mimalloc", "system")


def mimalloc_library() -> str | None:
    """The path of the installed libmimalloc, or None."""
    try:
        files = importlib.metadata.files("cmeel-mimalloc") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.name.startswith("libmimalloc.so"):
            path = str(f.locate())
            if os.path.isfile(path):
                return path
    return None


def preload_mimalloc() -> None:
    """Re-execute this process with mimalloc preloaded, once; returns in the new process."""
    if _PRELOADED_ENV in os.environ:  # the re-executed process: restore LD_PRELOAD
        before = os.environ.pop(_PRELOADED_ENV)
        if before:
            os.environ["LD_PRELOAD"] = before
        else:
            os.environ.pop("LD_PRELOAD", None)
        return
    choice = os.environ.get(ALLOCATOR_ENV, "mimalloc")
    if choice not in _CHOICES:
        sys.exit(
            f"error: {ALLOCATOR_ENV}: expected mimalloc or system, found {choice!r}; unset it "
            "for mimalloc (the default where it is installed)"
        )
    library = mimalloc_library()
    if choice == "system" or library is None or not sys.platform.startswith("linux"):
        return
    before = os.environ.get("LD_PRELOAD", "")
    env = {**os.environ, "LD_PRELOAD": f"{library} {before}".strip(), _PRELOADED_ENV: before}
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError:  # no executable to run again (an embedded interpreter): stay on glibc's
        return
