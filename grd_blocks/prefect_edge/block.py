"""``CheckpointStore``: the Prefect Block that holds checkpoint store configuration.

Invariant: the block is configuration only; every operation delegates to one ``CheckpointEngine`` (and so one
filesystem), built by ``engine()`` on first use and again only when a field changed: the one place where
secrets are unwrapped (into the fsspec storage options). ``access()`` is the one reading of the block for a
command's environment (docs/design.md, "What a command receives"). Secrets are
``SecretStr`` (masked in the UI, in ``repr`` and in logs). The slug ``grd-checkpoint-store`` never changes.
Method names never shadow ``Block.save``/``Block.load`` (which store the block itself).
"""

from __future__ import annotations

import json
import re
from typing import Any, ClassVar, Literal

from fsspec.core import split_protocol
from prefect.blocks.core import Block
from pydantic import Field, PrivateAttr, SecretStr

from grd_blocks.checkpoint import CheckpointEngine, RunCheckpoints
from grd_blocks.checkpoint.engine import RunOperations
from grd_blocks.errors import ConfigError
from grd_blocks.orchestration.environment import SECRET_WORDS, StoreAccess, absolute_url

DEFAULT_URL = "./checkpoints"
DEFAULT_BLOCK_NAME = "default"
_S3_PROTOCOLS = ("s3", "s3a")
_BLOCK_NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]*")


class CheckpointStore(Block, RunOperations):
    """Crash-consistent checkpoints for long jobs, on local disk or any fsspec store (S3 and compatible).

    A checkpoint exists only once its MANIFEST.json (sizes and digests of every payload file) is committed;
    LATEST.json finds the newest in O(1) requests and never moves backwards; retention keeps the last K
    and the best K by a monitored metric.

    Example:
        Load a saved store and checkpoint a run:
        ```python
        from grd_blocks.prefect_edge.block import CheckpointStore

        store = CheckpointStore.load("BLOCK_NAME")
        store.save_checkpoint("run_42", step=3, state={"model": model}, metrics={"val_loss": 0.38})
        state = store.load_checkpoint("run_42", into={"model": model})
        ```
    """

    _block_type_name: ClassVar[str] = "grd Checkpoint Store"
    _block_type_slug: ClassVar[str] = "grd-checkpoint-store"
    # grd has no public documentation site: no link rather than a placeholder that leads nowhere (the README's
    # "Checkpoint store" section documents the block).
    _documentation_url: ClassVar[Any] = None
    _description: ClassVar[str] = (
        "Crash-consistent training and benchmark checkpoints on local disk or S3, with retention and resume."
    )

    url: str = Field(
        default=DEFAULT_URL,
        description="Store root: a local path or an fsspec URL such as s3://bucket/prefix (memory://name "
        "lives in one process only: deployment runs refuse it).",
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra fsspec options (not secret: credentials go in the secret fields).",
    )
    endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint, e.g. http://127.0.0.1:8333 for SeaweedFS or MinIO."
    )
    region_name: str | None = Field(default=None, description="S3 region name, e.g. us-east-1.")
    aws_access_key_id: SecretStr | None = Field(
        default=None,
        description="S3 access key id (kept secret; None uses the environment or instance role).",
    )
    aws_secret_access_key: SecretStr | None = Field(
        default=None,
        description="S3 secret access key (kept secret; None uses the environment or instance role).",
    )
    keep_last: int | None = Field(
        default=None, description="Keep the newest N checkpoints of each run; None keeps all of them."
    )
    keep_best: int = Field(default=0, description="Also keep the best N checkpoints by the monitored metric.")
    monitor: str | None = Field(
        default=None, description="Metric that ranks checkpoints for keep_best, e.g. val_loss."
    )
    mode: Literal["min", "max"] = Field(
        default="min", description="Whether a lower (min) or higher (max) metric is better."
    )
    _engine: tuple[str, CheckpointEngine] | None = PrivateAttr(default=None)

    # ------------------------------------------------------------------ configuration
    def _is_s3(self) -> bool:
        protocol, _ = split_protocol(self.url)
        return protocol in _S3_PROTOCOLS

    def public_storage_options(self) -> dict[str, Any]:
        """The fsspec options without credentials (safe to log or pass through the environment)."""
        options = dict(self.storage_options)
        s3_fields = {"endpoint_url": self.endpoint_url, "region_name": self.region_name}
        if not self._is_s3():
            set_fields = [name for name, value in s3_fields.items() if value is not None]
            if set_fields or self.aws_access_key_id or self.aws_secret_access_key:
                raise ConfigError(
                    f"checkpoint store url {self.url!r} is not s3://, but S3 fields are set "
                    f"({', '.join(set_fields) or 'credentials'}); clear them or use an s3:// url"
                )
            return options
        if self.endpoint_url:
            options.setdefault("endpoint_url", self.endpoint_url)
        if self.region_name:
            client_kwargs = dict(options.get("client_kwargs") or {})
            client_kwargs.setdefault("region_name", self.region_name)
            options["client_kwargs"] = client_kwargs
        return options

    def _storage_options(self) -> dict[str, Any]:
        options = self.public_storage_options()
        if self.aws_access_key_id is not None:
            options["key"] = self.aws_access_key_id.get_secret_value()
        if self.aws_secret_access_key is not None:
            options["secret"] = self.aws_secret_access_key.get_secret_value()
        return options

    def engine(self) -> CheckpointEngine:
        """The plain engine this block configures, built once per configuration (secrets unwrapped here and
        nowhere else)."""
        options = self._storage_options()
        config = json.dumps([self.url, options, self.keep_last, self.keep_best, self.monitor, self.mode],
                            sort_keys=True, default=str)
        if self._engine is None or self._engine[0] != config:
            engine = CheckpointEngine(self.url, storage_options=options, keep_last=self.keep_last,
                                      keep_best=self.keep_best, monitor=self.monitor, mode=self.mode)
            self._engine = (config, engine)
        return self._engine[1]

    def access(self) -> StoreAccess:
        """How a command reaches this store: the url made absolute, the options without anything secret,
        the credentials as ``AWS_*`` variables, the retention as ``GRD_CHECKPOINT_*`` variables."""
        options = {key: value for key, value in self.public_storage_options().items()
                   if not any(word in key.lower() for word in SECRET_WORDS)}
        secrets: dict[str, str] = {}
        if self.endpoint_url:
            secrets["AWS_ENDPOINT_URL"] = self.endpoint_url
        if self.aws_access_key_id is not None:
            secrets["AWS_ACCESS_KEY_ID"] = self.aws_access_key_id.get_secret_value()
        if self.aws_secret_access_key is not None:
            secrets["AWS_SECRET_ACCESS_KEY"] = self.aws_secret_access_key.get_secret_value()
        return StoreAccess(url=absolute_url(self.url), storage_options=options, secret_env=secrets,
                           retention_env=self._retention_env())

    def _retention_env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        if self.keep_last is not None:
            env["GRD_CHECKPOINT_KEEP_LAST"] = str(int(self.keep_last))
        if self.keep_best:
            env["GRD_CHECKPOINT_KEEP_BEST"] = str(int(self.keep_best))
        if self.monitor:
            env["GRD_CHECKPOINT_MONITOR"] = self.monitor
            env["GRD_CHECKPOINT_MODE"] = self.mode
        return env

    def command_environment(self, run_key: str, *parts: str) -> dict[str, str]:
        """Env vars for a child process to open ``{url}/{run_key}/{parts...}`` (``RunCheckpoints.from_env()``,
        retention included): the same variables a benchmark command gets (``access().environment``)."""
        return self.access().environment(run_key, *parts)

    # ------------------------------------------------------------------ the store operations (RunOperations)
    def run(self, run_key: str) -> RunCheckpoints:
        """One run's checkpoints (keep the object to use ``save_async``/``flush``)."""
        return self.engine().run(run_key)

    def list_runs(self) -> list[str]:
        """Run keys present in the store."""
        return self.engine().list_runs()


def _load_block(name: str) -> CheckpointStore:
    block = CheckpointStore.load(name)
    if not isinstance(block, CheckpointStore):  # load is sync here; an async caller would get a coroutine
        raise ConfigError(f"block {name!r} did not load as a CheckpointStore (got {type(block).__name__})")
    return block


def looks_like_url(value: str) -> bool:
    """A URL or path (``s3://..``, ``/abs``, ``./rel``, ``~/x``, ``a/b``) as opposed to a block name."""
    return "://" in value or value.startswith(("/", ".", "~")) or "/" in value or "\\" in value


def default_store() -> CheckpointStore:
    """The block named ``default``; if none is saved yet, save one with url ``./checkpoints``.

    The url stays relative on purpose: it follows the working directory of whoever runs the flow (a worker
    runs flows from its checkout), so each machine checkpoints next to its code; point the block at S3 (edit
    it in the UI, or ``grd store create default s3://...``) when retries may land on other machines. With no
    Prefect API reachable, or a save that fails, this logs and returns the same store unsaved: never raises.
    """
    import logging

    log = logging.getLogger("grd.checkpoint")
    try:
        return _load_block(DEFAULT_BLOCK_NAME)
    except ValueError:  # the API answered: no block named "default" yet
        block = CheckpointStore(url=DEFAULT_URL)
        try:
            block.save(DEFAULT_BLOCK_NAME)
            log.info("saved checkpoint store block %r with url %s", DEFAULT_BLOCK_NAME, DEFAULT_URL)
        except Exception as exc:  # e.g. another worker saved it first: theirs has the same url
            log.warning("could not save checkpoint store block %r (%s); using %s unsaved",
                        DEFAULT_BLOCK_NAME, exc, DEFAULT_URL)
        return block
    except Exception as exc:  # no Prefect API reachable: the local default, unsaved
        log.warning("no checkpoint store block %r (%s); using %s", DEFAULT_BLOCK_NAME, exc, DEFAULT_URL)
        return CheckpointStore(url=DEFAULT_URL)


def resolve_store(name_or_url: str | None) -> CheckpointStore:
    """A URL/path -> an unsaved block with that url; a name -> ``CheckpointStore.load(name)``;
    None -> the block named ``default``, saved on first use (see ``default_store``)."""
    if name_or_url is None:
        return default_store()
    if not name_or_url:
        raise ConfigError("checkpoint store is empty; pass a block name (e.g. 'nightly-s3') or a URL/path")
    if looks_like_url(name_or_url):
        return CheckpointStore(url=name_or_url)
    if not _BLOCK_NAME_RE.fullmatch(name_or_url):
        raise ConfigError(
            f"checkpoint store {name_or_url!r} is neither a URL/path nor a block name "
            "(lowercase letters, digits "
            "and '-'); write a relative directory as ./NAME"
        )
    try:
        return _load_block(name_or_url)
    except ValueError as exc:
        raise ConfigError(
            f"no CheckpointStore block named {name_or_url!r} ({exc}); create it with "
            f"`grd store create {name_or_url} URL`, or pass a URL/path such as ./{name_or_url}"
        ) from None
