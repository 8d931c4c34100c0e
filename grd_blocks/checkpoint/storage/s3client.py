"""A thread-safe botocore S3 client built from an s3fs filesystem's settings, and the threads that use it.

s3fs runs every request on one event-loop thread, so whatever botocore does per part (signing, hashing,
parsing) takes turns there. Parallel part transfers (s3parts.py) instead go through this synchronous client
from a pool of ``TRANSFER_THREADS`` threads, the way boto3's transfer manager does: socket calls and the
CRC32 of each part release the GIL, so parts are prepared and sent on several cores at once.

Invariants:

* ``client_for(fs)`` gives the one ``S3Client`` of ``fs``'s configuration: key/secret/token or anon, its
  ``endpoint_url``/``use_ssl``, ``client_kwargs`` (endpoint, region, verify, ...), ``config_kwargs``
  (botocore ``Config`` options; s3fs's connect/read timeouts unless set there), session kwargs (profile),
  additional request kwargs and the ``AWS_*`` environment variables. It is built once under a lock and
  cached (the ``CACHE_SIZE`` configurations used last); botocore clients are safe to call from many threads;
  it pools at least ``TRANSFER_THREADS`` connections.
* ``S3Client.call`` does what s3fs's ``_call_s3`` does: ``s3_additional_kwargs`` and requester-pays are added
  where the operation takes them; the errors s3fs retries (``S3_RETRYABLE_ERRORS``, ``SlowDown``) are retried
  up to ``fs.retries`` times with s3fs's backoff, on top of botocore's own retries; what is raised is
  ``s3fs.errors.translate_boto_error`` of the last error (``PermissionError`` for refused credentials,
  ``FileNotFoundError`` for a missing bucket or key, botocore's error for an unreachable endpoint). So the
  store layer above (fsio.guard) reports failures exactly as it does for s3fs's own calls. ``then``, when
  given, reads the response inside the same retry (a body cut off mid-read is fetched again).
* Parts go up as boto3 sends them over HTTPS, on plain HTTP too: each with botocore's CRC32 of its bytes
  (``x-amz-checksum-crc32``, which the server checks: a part damaged on the way is refused and sent again)
  and ``UNSIGNED-PAYLOAD`` instead of a sha256 of the body in the signature (what boto3 adds on plain HTTP
  only). Integrity end to end is the manifest's digests of every payload file, checked on every load before
  anything is used. ``config_kwargs`` can ask otherwise: ``s3={"payload_signing_enabled": True}`` signs
  each part's sha256; ``request_checksum_calculation="when_required"`` drops the CRC32 (damage on the way is
  then found only at load, where that checkpoint is skipped). Ranged GETs skip botocore's response
  checksums, which cannot cover a range of a multipart object anyway
  (``response_checksum_validation="when_required"`` unless set); the manifest's digests are checked instead.
* A client made from a caller-injected session (``S3FileSystem(session=...)``) cannot be rebuilt here:
  ``supported`` is False for it and the caller keeps to s3fs.
* A forked child drops the parent's clients and threads (their sockets belong to the parent).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import botocore.handlers
import botocore.session
import s3fs.core
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError
from s3fs.errors import translate_boto_error

TRANSFER_THREADS = 8
"""Threads (and pooled connections) for part transfers, per process: the parts in flight."""
CACHE_SIZE = 8
"""Client configurations kept per process."""
_RETRYABLE_MESSAGES = ("SlowDown", "reduce your request rate", "XAmzContentSHA256Mismatch")  # as s3fs


@dataclass(frozen=True)
class S3Client:
    """A botocore S3 client plus what s3fs adds to every request it sends."""

    client: Any  # botocore's generated client class (no type hints)
    retries: int
    extra: dict[str, Any]  # s3_additional_kwargs + requester-pays, filtered per operation

    def call(self, method: str, then: Callable[[dict[str, Any]], Any] | None = None, /, **kwargs: Any) -> Any:
        """``client.<method>(**kwargs)`` (then ``then(response)``) with s3fs's extras, retries and errors."""
        operation = getattr(self.client, method)
        members = self.client.meta.service_model.operation_model(
            self.client.meta.method_to_api_mapping[method]
        ).input_shape.members
        params = {key: value for key, value in self.extra.items() if key in members} | kwargs
        error: Exception | None = None
        attempts = max(1, self.retries)
        for attempt in range(attempts):
            try:
                response = operation(**params)
                return then(response) if then is not None else response
            except s3fs.core.S3_RETRYABLE_ERRORS as exc:  # read at call time: s3fs lets users add to it
                error = exc
            except ClientError as exc:
                if not (any(text in str(exc) for text in _RETRYABLE_MESSAGES) or _retry_anyway(exc)):
                    raise translate_boto_error(exc) from exc
                error = exc
            except Exception as exc:
                if not _retry_anyway(exc):
                    raise
                error = exc
            if attempt + 1 < attempts:
                time.sleep(min(1.7**attempt * 0.1, 15))  # s3fs's backoff between its retries
        assert error is not None
        raise translate_boto_error(error) from error


def _retry_anyway(error: Exception) -> bool:
    """s3fs's user-settable hook (``s3fs.core.set_custom_error_handler``) for errors it would not retry."""
    return bool(s3fs.core.CUSTOM_ERROR_HANDLER(error))


def supported(fs: Any) -> bool:
    """Whether ``fs`` (an s3fs filesystem) can be reached through a client built here."""
    return bool(getattr(fs, "_session_is_owned", True)) and hasattr(fs, "_prepare_config_kwargs")


_clients: OrderedDict[str, S3Client] = OrderedDict()
_clients_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def transfer_pool() -> ThreadPoolExecutor:
    """The process's ``TRANSFER_THREADS`` transfer threads."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=TRANSFER_THREADS, thread_name_prefix="grd-s3")
        return _pool


def _forget_after_fork() -> None:
    global _pool, _pool_lock, _clients_lock
    _pool, _pool_lock, _clients_lock = None, threading.Lock(), threading.Lock()
    _clients.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def client_for(fs: Any) -> S3Client:
    """The cached ``S3Client`` for ``fs``'s configuration (built on first use)."""
    session_kwargs, create_kwargs, config_kwargs = _settings(fs)
    extra = {**fs.s3_additional_kwargs, **fs.req_kw}
    # credentials, region, endpoint and profile may also come from AWS_* variables
    environment = {name: value for name, value in os.environ.items() if name.startswith("AWS_")}
    settings = [session_kwargs, create_kwargs, config_kwargs, extra, fs.retries, environment]
    key = json.dumps(settings, sort_keys=True, default=repr)
    with _clients_lock:
        found = _clients.get(key)
        if found is not None:
            _clients.move_to_end(key)
            return found
        built = _build(session_kwargs, create_kwargs, config_kwargs, extra, fs.retries)
        _clients[key] = built
        while len(_clients) > CACHE_SIZE:
            _clients.popitem(last=False)  # not closed: a transfer may still use it; it closes with it
        return built


def _settings(fs: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(session kwargs, create_client kwargs, Config kwargs) the way s3fs's ``set_session`` derives them."""
    client_kwargs = dict(fs.client_kwargs)
    init = {
        "aws_access_key_id": fs.key,
        "aws_secret_access_key": fs.secret,
        "aws_session_token": fs.token,
        "endpoint_url": fs.endpoint_url,
    }
    init = {key: value for key, value in init.items() if value not in (None, client_kwargs.get(key))}
    if "use_ssl" not in client_kwargs:
        init["use_ssl"] = fs.use_ssl
    config = {
        key: value for key, value in fs._prepare_config_kwargs().items() if key in Config.OPTION_DEFAULTS
    }
    if fs.anon:
        secrets = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")
        init = {key: value for key, value in init.items() if key not in secrets}
        client_kwargs = {key: value for key, value in client_kwargs.items() if key not in secrets}
        config["signature_version"] = UNSIGNED
    return dict(fs.kwargs), {**init, **client_kwargs}, config


def _build(
    session_kwargs: dict[str, Any],
    create_kwargs: dict[str, Any],
    config_kwargs: dict[str, Any],
    extra: dict[str, Any],
    retries: int,
) -> S3Client:
    session = botocore.session.Session(**session_kwargs)
    config = dict(config_kwargs)
    config["max_pool_connections"] = max(config.get("max_pool_connections") or 0, TRANSFER_THREADS + 2)
    config.setdefault("response_checksum_validation", "when_required")
    config["s3"] = {"payload_signing_enabled": False, **(config.get("s3") or {})}
    client = session.create_client("s3", config=Config(**config), **create_kwargs)
    # A part stays the bytes it is: urllib3 sends it with one sendall instead of reading the BytesIO botocore
    # would wrap it in 16 KiB at a time (a retry sends the same immutable bytes again).
    client.meta.events.unregister(
        "before-parameter-build.s3.UploadPart", botocore.handlers.convert_body_to_file_like_object
    )
    return S3Client(client=client, retries=retries, extra=extra)
