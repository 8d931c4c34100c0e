"""``grd store create`` and ``grd checkpoints ls|show|verify|rm|gc``: the checkpoint store from a shell.

Invariant: every subcommand returns an exit code (0 ok, 1 a checkpoint is damaged or the store failed, 2 bad
input: orchestration/status.py decides) and prints errors as one ``grd: error: ...`` line on stderr naming
what was wrong; secrets are never taken on the command line (``--aws-credentials-from-env`` reads them from
the environment).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from typing import Any

from grd_blocks.checkpoint.refs import CheckpointRef, format_size
from grd_blocks.checkpoint.run import RunCheckpoints
from grd_blocks.cli.exits import fail, guarded
from grd_blocks.errors import CheckpointNotFound

__all__ = ["register"]


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)]
    lines = [
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=False)).rstrip()
        for row in [headers, *rows]
    ]
    return "\n".join(lines)


def _metrics(ref: CheckpointRef) -> str:
    return " ".join(f"{key}={value:.6g}" for key, value in sorted(ref.metrics.items())) or "-"


def _fail(message: str) -> int:
    return fail("grd: error", message)


def _open_run(args: argparse.Namespace) -> RunCheckpoints:
    from grd_blocks.prefect_edge.block import resolve_store

    return resolve_store(args.target).run(args.run_key)


def _select(run: RunCheckpoints, args: argparse.Namespace) -> CheckpointRef:
    if args.step is not None or args.epoch is not None:
        return run.find(step=args.step, epoch=args.epoch)
    ref = run.latest()
    if ref is None:
        raise CheckpointNotFound(f"run {run.url} has no committed checkpoint")
    return ref


# ---------------------------------------------------------------------- store create
@guarded("grd: error")
def _store_create(args: argparse.Namespace) -> int:
    from pydantic import SecretStr

    from grd_blocks.prefect_edge.block import CheckpointStore

    options: dict[str, Any] = {}
    for item in args.storage_option or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            return _fail(f"--storage-option {item!r} must be KEY=VALUE (VALUE may be JSON, e.g. anon=false)")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    key_id = secret = None
    if args.aws_credentials_from_env:
        key_id, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
        if not key_id or not secret:
            return _fail("--aws-credentials-from-env needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY set")
    store = CheckpointStore(
        url=args.url,
        storage_options=options,
        endpoint_url=args.endpoint_url,
        region_name=args.region,
        aws_access_key_id=SecretStr(key_id) if key_id else None,
        aws_secret_access_key=SecretStr(secret) if secret else None,
        keep_last=args.keep_last,
        keep_best=args.keep_best,
        monitor=args.monitor,
        mode=args.mode,
    )
    store.engine()  # validate the configuration (retention options, S3 fields) before saving
    store.save(args.name, overwrite=args.overwrite)
    print(f"saved CheckpointStore block {args.name!r} -> {args.url}")
    return 0


# ---------------------------------------------------------------------- checkpoints
@guarded("grd: error")
def _ls(args: argparse.Namespace) -> int:
    from grd_blocks.prefect_edge.block import resolve_store

    if args.run_key is None:
        runs = resolve_store(args.target).list_runs()
        print("\n".join(runs) if runs else "(no runs)")
        return 0
    run = _open_run(args)
    latest = run.latest()
    rows = []
    for ref in reversed(run.checkpoints()):
        problems = run.verify(ref) if args.verify else []
        status = ("ok" if not problems else "DAMAGED") if args.verify else "committed"
        mark = "*" if latest is not None and ref.name == latest.name else ""
        size = format_size(ref.size_bytes)
        rows.append([ref.name + mark, size, ref.created_at[:19], _metrics(ref), status])
    if not rows:
        print(f"{run.url}: no committed checkpoints")
        return 0
    print(_table(["CHECKPOINT", "SIZE", "CREATED (UTC)", "METRICS", "STATUS"], rows))
    print("* = latest")
    return 0


@guarded("grd: error")
def _show(args: argparse.Namespace) -> int:
    run = _open_run(args)
    ref = _select(run, args)
    problems = run.verify(ref)
    fields = [
        ("url", ref.url),
        ("unit", ref.unit),
        ("index", str(ref.index)),
        ("created_at", ref.created_at),
        ("writer", ref.writer or "-"),
        ("size", format_size(ref.size_bytes)),
        ("metrics", _metrics(ref)),
        ("handlers", ", ".join(f"{k}: {v}" for k, v in sorted(ref.handlers.items()))),
        ("metadata", json.dumps(ref.metadata) if ref.metadata else "-"),
        ("verified", "ok (sizes and digests)" if not problems else "DAMAGED: " + "; ".join(problems)),
    ]
    print(_table(["FIELD", "VALUE"], fields))
    return 0 if not problems else 1


@guarded("grd: error")
def _verify(args: argparse.Namespace) -> int:
    run = _open_run(args)
    refs = [_select(run, args)] if args.step is not None or args.epoch is not None else run.checkpoints()
    rows, damaged = [], 0
    for ref in refs:
        problems = run.verify(ref)
        damaged += bool(problems)
        verdict = "ok" if not problems else "DAMAGED: " + "; ".join(problems)
        rows.append([ref.name, format_size(ref.size_bytes), verdict])
    print(
        _table(["CHECKPOINT", "SIZE", "VERIFICATION"], rows)
        if rows
        else f"{run.url}: no committed checkpoints"
    )
    return 1 if damaged else 0


@guarded("grd: error")
def _rm(args: argparse.Namespace) -> int:
    run = _open_run(args)
    if args.all:
        refs = run.checkpoints()
    elif args.step is not None or args.epoch is not None:
        refs = [run.find(step=args.step, epoch=args.epoch)]
    else:
        return _fail("grd checkpoints rm needs --step N, --epoch N or --all")
    if not args.yes:
        return _fail(f"refusing to delete {len(refs)} checkpoint(s) of {run.url} without --yes")
    for ref in refs:
        run.delete(ref)
        print(f"deleted {ref.url}")
    return 0


@guarded("grd: error")
def _gc(args: argparse.Namespace) -> int:
    """The multipart uploads killed saves left under the store (S3): listed; aborted with --yes."""
    from grd_blocks.budget.durations import parse_duration
    from grd_blocks.checkpoint.storage.leftovers import abort_uploads, stale_uploads
    from grd_blocks.prefect_edge.block import resolve_store

    older_than_s = parse_duration(args.older_than, field="--older-than") or 0.0
    engine = resolve_store(args.target).engine()
    uploads = stale_uploads(engine.fs, engine.path, older_than_s=older_than_s)
    for upload in uploads:
        print(f"{upload.bucket}/{upload.key}  upload {upload.upload_id[:16]}  "
              f"started {upload.started:%Y-%m-%d %H:%M}")
    if not uploads:
        print(f"no unfinished upload older than {args.older_than} under {engine.url}")
        return 0
    if not args.yes:
        print(f"{len(uploads)} unfinished upload(s) older than {args.older_than}; run again with --yes to "
              "abort them")
        return 0
    print(f"aborted {abort_uploads(engine.fs, uploads)} unfinished upload(s) under {engine.url}")
    return 0


def _add_selector(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--step", type=int, help="a step checkpoint (default: the latest)")
    group.add_argument("--epoch", type=int, help="an epoch checkpoint (default: the latest)")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``store`` and ``checkpoints`` subcommands; each sub-parser sets ``func(args) -> exit code``."""
    store = subparsers.add_parser("store", help="manage CheckpointStore blocks")
    store_sub = store.add_subparsers(dest="store_command", required=True)
    create = store_sub.add_parser("create", help="save a CheckpointStore block")
    create.add_argument("name", help="block name, e.g. nightly-s3")
    create.add_argument("url", help="store root: ./checkpoints, /abs/dir, s3://bucket/prefix")
    create.add_argument("--endpoint-url", help="S3-compatible endpoint, e.g. http://127.0.0.1:8333")
    create.add_argument("--region", help="S3 region name")
    create.add_argument(
        "--aws-credentials-from-env",
        action="store_true",
        help="store AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY from the environment as secrets",
    )
    create.add_argument("--storage-option", action="append", metavar="KEY=VALUE", help="extra fsspec option")
    create.add_argument("--keep-last", type=int, help="keep the newest N checkpoints per run")
    create.add_argument("--keep-best", type=int, default=0, help="also keep the best N by --monitor")
    create.add_argument("--monitor", help="metric ranking checkpoints for --keep-best, e.g. val_loss")
    create.add_argument(
        "--mode", choices=["min", "max"], default="min", help="lower or higher metric is better"
    )
    create.add_argument("--overwrite", action="store_true", help="replace a block with the same name")
    create.set_defaults(func=_store_create)

    ckpts = subparsers.add_parser("checkpoints", help="inspect and prune checkpoints")
    ck_sub = ckpts.add_subparsers(dest="checkpoints_command", required=True)
    target_help = "a store URL/path (./checkpoints, s3://b/p) or a CheckpointStore block name"
    ls = ck_sub.add_parser("ls", help="list runs, or one run's checkpoints")
    ls.add_argument("target", help=target_help)
    ls.add_argument("run_key", nargs="?", help="run key (omit to list runs)")
    ls.add_argument("--verify", action="store_true", help="also check every sha256 (reads all payloads)")
    ls.set_defaults(func=_ls)
    for name, func, text in (
        ("show", _show, "show one checkpoint's manifest"),
        ("verify", _verify, "verify sizes and digests (all, or one)"),
    ):
        parser = ck_sub.add_parser(name, help=text)
        parser.add_argument("target", help=target_help)
        parser.add_argument("run_key", help="run key")
        _add_selector(parser)
        parser.set_defaults(func=func)
    rm = ck_sub.add_parser("rm", help="delete checkpoints (manifest first)")
    rm.add_argument("target", help=target_help)
    rm.add_argument("run_key", help="run key")
    _add_selector(rm)
    rm.add_argument("--all", action="store_true", help="delete every checkpoint of the run")
    rm.add_argument("--yes", action="store_true", help="really delete")
    rm.set_defaults(func=_rm)
    gc = ck_sub.add_parser("gc", help="abort the multipart uploads killed saves left (S3)")
    gc.add_argument("target", help=target_help)
    gc.add_argument("--older-than", default="1h", help="only uploads started this long ago (default 1h)")
    gc.add_argument("--yes", action="store_true", help="really abort them (default: list only)")
    gc.set_defaults(func=_gc)
