"""Checkpoint save/load on S3 (SeaweedFS, started here) vs boto3's transfer manager and s3fs, same part shape.

For each state size (64 MiB and 512 MiB; 64 MiB only with --quick) it times, over ROUNDS interleaved rounds
after one untimed warm-up round (the first writes into a new bucket allocate its volumes):
- grd save: ``CheckpointEngine.save_checkpoint`` of ``{"weights": uint8 tensor}`` (torch.save + sha256 +
  parallel multipart upload + manifest + LATEST.json), a new step each time;
- boto3 ``upload_file`` of the same number of bytes from a local file, with grd's part size (8 MiB),
  multipart threshold (16 MiB) and concurrency (8): the same transfer shape, without grd's serializing,
  hashing and commit requests. With botocore's defaults it hashes every part twice on plain HTTP (a sha256
  of the body for the signature, and a CRC32 the server checks); grd's parts carry the CRC32 only, as boto3
  sends parts over HTTPS (s3client.py). ``boto3_upload_file_unsigned`` is the boto3 upload with payload
  signing turned off too (``payload_signing_enabled=False``): the same bytes and headers on the wire as
  grd's, for a like-for-like transfer (the 0.9x target is against the defaults);
- s3fs ``open("wb", block_size=8 MiB)`` + one ``write`` per 8 MiB part: the same part size, sent one part at
  a time (s3fs's writer has no concurrency);
- grd load (``load_checkpoint``: LATEST.json, manifest, parallel ranged GETs, every sha256 checked, then
  torch.load) vs boto3 ``download_file`` (to a local file) and s3fs ``cat_file`` with the same part size and
  concurrency.
Within a round the save operations run in a rotating order, then the load operations likewise, so drifting
machine load hits every contender alike. Reported: the median seconds and MiB/s of each operation (and every
round's seconds, ``rounds_s``), and throughput ratios of the medians (> 1 means grd is faster than that
baseline). The 1-minute load average is recorded before and after each size. Writes bench/results/s3.json
(or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import boto3  # noqa: E402
import torch  # noqa: E402
from boto3.s3.transfer import TransferConfig  # noqa: E402
from botocore.config import Config  # noqa: E402

from grd_blocks.checkpoint import CheckpointEngine  # noqa: E402
from grd_blocks.checkpoint.storage.s3client import TRANSFER_THREADS  # noqa: E402
from grd_blocks.checkpoint.storage.s3parts import PART_BYTES  # noqa: E402
from tests.fixtures.seaweed import REGION, running_seaweed  # noqa: E402

MiB = 2**20
PART = PART_BYTES  # grd's part size for multipart uploads and ranged GETs
THRESHOLD = 2 * PART_BYTES  # grd goes multipart from two parts up
CONCURRENCY = TRANSFER_THREADS  # parts in flight at once
ROUNDS = 5
RESULTS = REPO / "bench" / "results" / "s3.json"

Action = Callable[[], Any]


def rotated(items: list[tuple[str, Action]], turn: int) -> list[tuple[str, Action]]:
    shift = turn % len(items)
    return items[shift:] + items[:shift]


def run_rounds(groups: list[list[tuple[str, Action]]], rounds: int) -> dict[str, list[float]]:
    """Seconds of every action in each timed round: one warm-up round, then ``rounds`` timed ones, each group
    rotated."""
    times: dict[str, list[float]] = {name: [] for group in groups for name, _ in group}
    for turn in range(rounds + 1):
        for group in groups:
            for name, action in rotated(group, turn):
                start = time.perf_counter()
                action()
                if turn:
                    times[name].append(time.perf_counter() - start)
    return times


def bench_size(server: Any, size: int, workdir: Path, rounds: int) -> dict[str, Any]:
    bucket = server.new_bucket()
    name = bucket.removeprefix("s3://")
    tensor = torch.randint(0, 256, (size,), dtype=torch.uint8)
    raw = tensor.numpy().tobytes()
    source = workdir / f"blob-{size}"
    source.write_bytes(raw)
    client = server.client()
    unsigned = boto3.client(
        "s3", endpoint_url=server.endpoint_url, aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key, region_name=REGION,
        config=Config(s3={"payload_signing_enabled": False}),
    )
    config = TransferConfig(
        multipart_threshold=THRESHOLD, multipart_chunksize=PART, max_concurrency=CONCURRENCY
    )
    fs = server.filesystem()
    engine = CheckpointEngine(f"{bucket}/ckpts", storage_options=server.storage_options)
    step = iter(range(10**6))

    def grd_load() -> None:
        loaded = engine.load_checkpoint("bench")
        assert loaded is not None and loaded["weights"].shape == tensor.shape

    saves: list[tuple[str, Action]] = [
        ("grd_save", lambda: engine.save_checkpoint("bench", state={"weights": tensor}, step=next(step))),
        ("boto3_upload_file", lambda: client.upload_file(str(source), name, "boto/blob", Config=config)),
        ("boto3_upload_file_unsigned",
         lambda: unsigned.upload_file(str(source), name, "boto/unsigned", Config=config)),
        ("s3fs_open_write", lambda: _s3fs_write(fs, f"{name}/s3fs/blob", raw)),
    ]
    loads: list[tuple[str, Action]] = [
        ("grd_load", grd_load),
        ("boto3_download_file",
         lambda: client.download_file(name, "boto/blob", str(workdir / "down"), Config=config)),
        ("s3fs_cat_file",
         lambda: fs.cat_file(f"{name}/s3fs/blob", chunksize=PART, max_concurrency=CONCURRENCY)),
    ]
    load_before = os.getloadavg()[0]
    times = run_rounds([saves, loads], rounds)
    medians = {name: statistics.median(values) for name, values in times.items()}
    loaded = engine.load_checkpoint("bench")
    assert loaded is not None and torch.equal(loaded["weights"], tensor), "grd load returned other bytes"
    results: dict[str, Any] = {"size_mib": size / MiB, "loadavg_1m_before": load_before,
                               "loadavg_1m_after": os.getloadavg()[0]}
    results.update({f"{key}_s": value for key, value in medians.items()})
    results["rounds_s"] = {key: [round(value, 4) for value in values] for key, values in times.items()}
    for key, value in medians.items():
        results[f"{key}_mib_s"] = size / MiB / value
    results["save_vs_boto3"] = medians["boto3_upload_file"] / medians["grd_save"]
    results["save_vs_boto3_unsigned"] = medians["boto3_upload_file_unsigned"] / medians["grd_save"]
    results["save_vs_s3fs_write"] = medians["s3fs_open_write"] / medians["grd_save"]
    results["load_vs_boto3"] = medians["boto3_download_file"] / medians["grd_load"]
    results["load_vs_s3fs_cat"] = medians["s3fs_cat_file"] / medians["grd_load"]
    source.unlink()
    return results


def _s3fs_write(fs: Any, path: str, data: bytes) -> None:
    view = memoryview(data)
    with fs.open(path, "wb", block_size=PART) as handle:
        for start in range(0, len(view), PART):
            handle.write(view[start : start + PART])  # each write fills one block: one part goes up


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 MiB only")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help=f"timed rounds per size ({ROUNDS})")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"where the JSON goes ({RESULTS})")
    args = parser.parse_args()
    sizes = [64 * MiB] if args.quick else [64 * MiB, 512 * MiB]
    with (
        tempfile.TemporaryDirectory(prefix="grd-bench-s3-") as tmp,
        running_seaweed(Path(tmp) / "seaweedfs", volume_size_limit_mb=1024) as server,
    ):
        rows = [bench_size(server, size, Path(tmp), args.rounds) for size in sizes]
    report = {
        "benchmark": "s3",
        "backend": "SeaweedFS (weed server -s3) on 127.0.0.1",
        "machine": {"cpus": os.cpu_count()},
        "transfer": {"part_mib": PART / MiB, "multipart_threshold_mib": THRESHOLD / MiB,
                     "concurrency": CONCURRENCY, "rounds": args.rounds, "warmup_rounds": 1,
                     "statistic": "median", "s3fs_write_concurrency": 1},
        "quick": args.quick,
        "results": rows,
    }
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    for row in rows:
        print(
            f"{row['size_mib']:.0f} MiB (load avg {row['loadavg_1m_before']:.2f}"
            f"->{row['loadavg_1m_after']:.2f}): "
            f"save {row['grd_save_mib_s']:.0f} MiB/s (boto3 {row['boto3_upload_file_mib_s']:.0f}, "
            f"x{row['save_vs_boto3']:.2f}; unsigned x{row['save_vs_boto3_unsigned']:.2f}; "
            f"s3fs write {row['s3fs_open_write_mib_s']:.0f}, "
            f"x{row['save_vs_s3fs_write']:.2f}) | load {row['grd_load_mib_s']:.0f} MiB/s "
            f"(boto3 {row['boto3_download_file_mib_s']:.0f}, x{row['load_vs_boto3']:.2f}; "
            f"s3fs cat {row['s3fs_cat_file_mib_s']:.0f}, x{row['load_vs_s3fs_cat']:.2f})"
        )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
