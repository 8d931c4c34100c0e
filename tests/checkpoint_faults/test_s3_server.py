"""The SeaweedFS fixture is a real S3: s3fs round-trips bytes, wrong credentials are refused, restarts keep
data."""

from __future__ import annotations

import pytest
import s3fs

from tests.fixtures.seaweed import SeaweedServer

pytestmark = pytest.mark.s3


def test_s3fs_round_trips_bytes_and_lists(s3_server: SeaweedServer, s3_bucket: str) -> None:
    fs = s3fs.S3FileSystem(**s3_server.storage_options)
    bucket = s3_bucket.removeprefix("s3://")
    fs.pipe_file(f"{bucket}/run/a.bin", b"\x00\x01payload")
    fs.pipe_file(f"{bucket}/run/b.bin", b"x" * 10_000)
    assert fs.cat_file(f"{bucket}/run/a.bin") == b"\x00\x01payload"
    assert sorted(fs.ls(f"{bucket}/run", detail=False)) == [f"{bucket}/run/a.bin", f"{bucket}/run/b.bin"]
    assert fs.info(f"{bucket}/run/b.bin")["size"] == 10_000
    fs.rm_file(f"{bucket}/run/a.bin")
    assert not fs.exists(f"{bucket}/run/a.bin")


@pytest.mark.parametrize("wrong", ["secret", "key"])
def test_wrong_credentials_are_refused(s3_server: SeaweedServer, s3_bucket: str, wrong: str) -> None:
    bucket = s3_bucket.removeprefix("s3://")
    s3_server.filesystem().pipe_file(f"{bucket}/x", b"1")
    options = s3_server.storage_options_with(**{wrong: "not-the-" + wrong})
    fs = s3fs.S3FileSystem(**options)
    with pytest.raises(PermissionError):
        fs.cat_file(f"{bucket}/x")
    with pytest.raises(PermissionError):
        fs.pipe_file(f"{bucket}/y", b"2")


def test_restart_keeps_objects_and_serves_on_same_endpoint(s3_server: SeaweedServer, s3_bucket: str) -> None:
    bucket = s3_bucket.removeprefix("s3://")
    endpoint = s3_server.endpoint_url
    s3_server.filesystem().pipe_file(f"{bucket}/kept", b"before outage")
    s3_server.stop()
    assert not s3_server.running
    s3_server.start()
    assert s3_server.endpoint_url == endpoint
    fs = s3_server.filesystem()
    assert fs.cat_file(f"{bucket}/kept") == b"before outage"
    fs.pipe_file(f"{bucket}/after", b"after outage")
    assert fs.cat_file(f"{bucket}/after") == b"after outage"
