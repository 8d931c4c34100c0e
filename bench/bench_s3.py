"""Checkpoint save/load on S3 (SeaweedFS, started here) vs boto3's transfer manager at the same part size.

Measures, per state size (64 MiB, and 512 MiB unless --quick), the median of REPEATS runs of:
- grd save: ``CheckpointEngine.save_checkpoint`` of ``{"weights": uint8 tensor}`` (torch.save + sha256 +
  PUTs);
- boto3 ``upload_file`` of the same number of bytes, with grd's part size (8 MiB), multipart threshold
  (16 MiB) and concurrency (8), i.e. the same transfer shape as grd's ``pipe_file`` call (the baseline
  uploads an existing file; grd's time also includes serializing the state);
- s3fs ``open("wb").write`` (streaming multipart writer) of the same bytes;
- grd load vs boto3 ``download_file`` and s3fs ``cat_file``.
Ratios are throughput ratios: > 1 means grd is faster than the baseline. Writes bench/results/s3.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from boto3.s3.transfer import TransferConfig  # noqa: E402

from grd_blocks.checkpoint import CheckpointEngine  # noqa: E402
from grd_blocks.checkpoint.fsio import PARALLEL_PART_BYTES, PARALLEL_PARTS  # noqa: E402
from tests.fixtures.seaweed import running_seaweed  # noqa: E402

MiB = 2**20
PART = PARALLEL_PART_BYTES  # the part size grd asks s3fs for on large payloads
THRESHOLD = 2 * PARALLEL_PART_BYTES  # grd goes multipart from two parts up
CONCURRENCY = PARALLEL_PARTS  # parts in flight at once
REPEATS = 3


def median_seconds(action: Callable[[], Any], repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_size(server: Any, size: int, workdir: Path) -> dict[str, Any]:
    bucket = server.new_bucket()
    name = bucket.removeprefix("s3://")
    tensor = torch.randint(0, 256, (size,), dtype=torch.uint8)
    raw = tensor.numpy().tobytes()
    source = workdir / f"blob-{size}"
    source.write_bytes(raw)
    client = server.client()
    config = TransferConfig(
        multipart_threshold=THRESHOLD, multipart_chunksize=PART, max_concurrency=CONCURRENCY
    )
    fs = server.filesystem()
    engine = CheckpointEngine(f"{bucket}/ckpts", storage_options=server.storage_options)
    step = iter(range(10**6))

    results = {
        "size_mib": size / MiB,
        "grd_save_s": median_seconds(lambda: engine.save_checkpoint("bench", state={"weights": tensor},
                                                                     step=next(step))),
        "boto3_upload_file_s": median_seconds(lambda: client.upload_file(str(source), name, "boto/blob",
                                                                         Config=config)),
        "s3fs_open_write_s": median_seconds(lambda: _s3fs_write(fs, f"{name}/s3fs/blob", raw)),
        "grd_load_s": median_seconds(lambda: engine.load_checkpoint("bench")),
        "boto3_download_file_s": median_seconds(
            lambda: client.download_file(name, "boto/blob", str(workdir / "down"), Config=config)
        ),
        "s3fs_cat_file_s": median_seconds(lambda: fs.cat_file(f"{name}/s3fs/blob")),
    }
    for key in [name for name in list(results) if name.endswith("_s")]:
        results[key[:-2] + "_mib_s"] = size / MiB / results[key]
    results["save_vs_boto3"] = results["boto3_upload_file_s"] / results["grd_save_s"]
    results["save_vs_s3fs_write"] = results["s3fs_open_write_s"] / results["grd_save_s"]
    results["load_vs_boto3"] = results["boto3_download_file_s"] / results["grd_load_s"]
    results["load_vs_s3fs_cat"] = results["s3fs_cat_file_s"] / results["grd_load_s"]
    source.unlink()
    return results


def _s3fs_write(fs: Any, path: str, data: bytes) -> None:
    with fs.open(path, "wb") as handle:
        handle.write(data)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 MiB only")
    args = parser.parse_args()
    sizes = [64 * MiB] if args.quick else [64 * MiB, 512 * MiB]
    with (
        tempfile.TemporaryDirectory(prefix="grd-bench-s3-") as tmp,
        running_seaweed(Path(tmp) / "seaweedfs", volume_size_limit_mb=1024) as server,
    ):
        rows = [bench_size(server, size, Path(tmp)) for size in sizes]
    report = {
        "benchmark": "s3",
        "backend": "SeaweedFS (weed server -s3) on 127.0.0.1",
        "transfer": {"part_mib": PART / MiB, "multipart_threshold_mib": THRESHOLD / MiB,
                     "concurrency": CONCURRENCY, "repeats": REPEATS, "statistic": "median"},
        "quick": args.quick,
        "results": rows,
    }
    out = REPO / "bench" / "results" / "s3.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    for row in rows:
        print(
            f"{row['size_mib']:.0f} MiB: save {row['grd_save_s']:.2f}s "
            f"(boto3 {row['boto3_upload_file_s']:.2f}s, x{row['save_vs_boto3']:.2f}; "
            f"s3fs write x{row['save_vs_s3fs_write']:.2f}) | load {row['grd_load_s']:.2f}s "
            f"(boto3 {row['boto3_download_file_s']:.2f}s, x{row['load_vs_boto3']:.2f})"
        )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
