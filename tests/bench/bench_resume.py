"""Resume on object storage (a script, not a test): how long the driver takes to find which of
1,000 units are finished on an s3:// output, one unit after another (before) and concurrently
(`output_folder.finished_units`, after), interleaved A/B on the loopback moto server.

    .venv/bin/python tests/bench/bench_resume.py               # 1,000 units, 3 rounds
    .venv/bin/python tests/bench/bench_resume.py --units 200   # quick

The output is written once by a real run (word-level tokenizer, one row per unit, as
bench_scale.py builds them); then its manifest is deleted, as a stopped run leaves it, and
each round checks every unit (sidecars read, shard sizes and sha256 checked) both ways. A
last, full `run_pipeline` resume is timed too. moto runs in its own process; on this
2-core machine it is CPU-bound and limits the concurrent check. A real store answers each
request in 10-50 ms but serves many at once: there the sequential check is slower still and
the gain larger.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.bench_scale import build_corpus, build_tokenizer

SERVER = """
import logging, sys, time
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.ERROR)
ThreadedMotoServer(ip_address="127.0.0.1", port=int(sys.argv[1]), verbose=False).start()
while True:
    time.sleep(3600)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(endpoint: str) -> None:
    for _ in range(300):
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(endpoint)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--units", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    import boto3

    from pipeline.format import storage
    from pipeline.ingest.units import WorkUnit
    from pipeline.run.config import RunConfig
    from pipeline.run.output_folder import finished_sidecars, finished_units
    from pipeline.run.runner import LocalExecutor, run_pipeline

    # The server in its own process: in this one it would share the GIL with the threads
    # it serves and measure itself.
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    _wait_for(endpoint)
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1"
    )
    os.environ[storage.ENDPOINT_ENV] = endpoint
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
        Bucket="bench-resume"
    )
    work = Path(tempfile.mkdtemp(prefix="bench-resume-"))
    build_tokenizer(work / "tokenizer.json")
    build_corpus(work / "corpus", args.units, files=1)
    out = "s3://bench-resume/out"
    config = RunConfig(
        inputs=(str(work / "corpus"),),
        tokenizer=str(work / "tokenizer.json"),
        output=out,
        unit_bytes=1,
    )
    started = time.perf_counter()
    first = run_pipeline(config, LocalExecutor(), progress_stream=None)
    write_s = time.perf_counter() - started
    digest = json.loads(storage.read_bytes(f"{out}/run.json"))["digest"]
    storage.remove(f"{out}/manifest.json")
    units = [  # the plan, as the sidecars record it
        WorkUnit(format="parquet", text_bytes=0, **json.loads(storage.read_bytes(
            f"{out}/train/shard-{i:05d}.json"))["unit"])
        for i in range(first.num_units)
    ]  # fmt: skip

    before, after = [], []
    for _ in range(args.rounds):
        t = time.perf_counter()
        seq = {u.index: finished_sidecars(out, u, digest) for u in units}
        before.append(time.perf_counter() - t)
        t = time.perf_counter()
        par = finished_units(out, units, digest)
        after.append(time.perf_counter() - t)
        assert seq == par and all(v is not None for v in par.values())
    t = time.perf_counter()
    again = run_pipeline(config, LocalExecutor(), progress_stream=None)
    resume_s = time.perf_counter() - t
    assert again.num_units_run == 0 and again.manifest == first.manifest
    server.terminate()
    server.wait()
    shutil.rmtree(work, ignore_errors=True)
    b, a = statistics.median(before), statistics.median(after)
    print(
        json.dumps(
            {
                "units": first.num_units,
                "first_run_s": round(write_s, 1),
                "check_sequential_s": [round(x, 2) for x in before],
                "check_concurrent_s": [round(x, 2) for x in after],
                "median_sequential_s": round(b, 2),
                "median_concurrent_s": round(a, 2),
                "speedup": round(b / a, 1),
                "full_resume_run_s": round(resume_s, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
