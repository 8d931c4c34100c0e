"""``grd store create`` and ``grd checkpoints ls|show|verify|rm|gc``: the checkpoint store from a shell.

Invariant: every subcommand returns an exit code (0 ok, 1 a checkpoint is damaged or the store failed, 2 bad
input: orchestration/status.py decides) and prints errors as one ``grd: error: ...`` line on stderr naming
what was wrong; secrets are never taken on the command line (``--aws-credentials-from-env`` reads them from
the environment). A RUN_KEY is a run (``r1``) or a prefix under it (``r1/commands/train.fit``), each part
under the run-key rule; ``ls`` and ``verify`` of a run cover its own checkpoints and every prefix below it
that holds some (its commands', their ``partial``, grd's ``progress``), one named group each. A key the store
does not have is an error naming it, what the store has and the fix, never an empty listing.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from typing import Any

from grd_blocks.checkpoint.engine import CheckpointEngine
from grd_blocks.checkpoint.refs import CheckpointRef, format_size
from grd_blocks.checkpoint.run import RunCheckpoints
from grd_blocks.checkpoint.storage.layout import validate_run_key
from grd_blocks.cli.exits import fail, guarded
from grd_blocks.errors import CheckpointNotFound, InvalidRunKey, UsageError

__all__ = ["register"]

_SHOWN = 5  # run keys or prefixes named in one error line before "and N more"


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


def _store(args: argparse.Namespace) -> CheckpointEngine:
    from grd_blocks.prefect_edge.block import resolve_store

    return resolve_store(args.target).engine()


def _open_run(args: argparse.Namespace, store: CheckpointEngine | None = None) -> RunCheckpoints:
    """The prefix ``RUN_KEY`` names: a run (``r1``) or a prefix under it (``r1/commands/train.fit``), each
    part under the run-key rule."""
    key, *below = str(args.run_key).split("/")
    if not below:
        return (store or _store(args)).run(key)
    for part in (key, *below):
        try:
            validate_run_key(part)
        except InvalidRunKey:
            raise UsageError(
                f"run key {args.run_key!r}: its part {part!r} is invalid; each '/'-separated part is 1-128 "
                "characters of [A-Za-z0-9_.-], not '.' or '..' (e.g. RUN_KEY/commands/train.fit)"
            ) from None
    run = (store or _store(args)).run(key)
    for part in below:
        run = run.child(part)
    return run


def _nested_hint(run: RunCheckpoints, args: argparse.Namespace) -> str:
    nested = run.prefixes()
    if not nested:
        return ""
    named = _listed([f"{args.run_key}/{rel}" for rel in nested])
    return f"; its checkpoints are under {named}: pass one of those as the run key"


def _select(run: RunCheckpoints, args: argparse.Namespace) -> CheckpointRef:
    try:
        if args.step is not None or args.epoch is not None:
            return run.find(step=args.step, epoch=args.epoch)
    except CheckpointNotFound as exc:
        raise CheckpointNotFound(f"{exc}{_nested_hint(run, args)}") from None
    ref = run.latest()
    if ref is None:
        raise CheckpointNotFound(f"run {run.url} has no committed checkpoint{_nested_hint(run, args)}")
    return ref


def _listed(names: Sequence[str]) -> str:
    return ", ".join(names[:_SHOWN]) + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def _check_known(store: CheckpointEngine, args: argparse.Namespace) -> None:
    """``CheckpointNotFound`` (exit 2) naming what was given, what the store has and the fix, when the run
    the key names has no directory in the store, or the prefix under it is none of the run's groups."""
    key, *below = str(args.run_key).split("/")
    runs = store.list_runs()
    if key not in runs:
        there = f"its runs are {_listed(runs)}" if runs else "it holds no runs"
        raise CheckpointNotFound(
            f"run key {key!r} has nothing in the store {store.url} ({there}); pass one of its run keys "
            f"(`grd checkpoints ls {args.target}` lists them), or the store that run wrote to"
        )
    rel = "/".join(below)
    groups = store.run(key).prefixes()
    if rel and rel not in groups and not any(group.startswith(rel + "/") for group in groups):
        there = f"its checkpoints are under {_listed([f'{key}/{g}' for g in groups])}" if groups else (
            "it has no checkpoints below it")
        raise CheckpointNotFound(
            f"run {key!r} has nothing under {rel!r} ({there}); pass one of those as the run key "
            f"(`grd checkpoints ls {args.target} {key}` lists them)"
        )


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
def _groups(run: RunCheckpoints, args: argparse.Namespace) -> list[tuple[str, RunCheckpoints]]:
    """``(RUN_KEY or RUN_KEY/rel, prefix)`` for the run itself and every prefix below it that holds
    checkpoints (its commands', their partial epochs', grd's progress), the run first."""
    below = [(f"{args.run_key}/{rel}", _child(run, rel)) for rel in run.prefixes()]
    return [(str(args.run_key), run), *below]


def _child(run: RunCheckpoints, rel: str) -> RunCheckpoints:
    for part in rel.split("/"):
        run = run.child(part)
    return run


_KINDS = {"progress": " (grd's record of the run's finished commands)", "partial": " (saved mid-epoch)"}


def _heading(key: str, count: int, *, own: bool) -> str:
    """The line above a group: whose checkpoints they are (its name is the run key that shows, verifies or
    deletes them)."""
    kind = " of its own" if own else _KINDS.get(key.rsplit("/", 1)[-1], "")
    return f"== {key}: {count} checkpoint(s){kind}"


def _footer(groups: Sequence[tuple[str, RunCheckpoints]], args: argparse.Namespace) -> str:
    names = [key for key, _ in groups[1:]]
    example = next((key for key in names if key.split("/")[-1] not in _KINDS), names[-1])
    return (f"to show, verify or rm a group's checkpoints, pass its name as the run key: "
            f"grd checkpoints show {args.target} {example}")


@guarded("grd: error")
def _ls(args: argparse.Namespace) -> int:
    store = _store(args)
    if args.run_key is None:
        runs = store.list_runs()
        print("\n".join(runs) if runs else "(no runs)")
        return 0
    run = _open_run(args, store)
    groups = _groups(run, args)
    if len(groups) == 1 and not run.checkpoints():
        _check_known(store, args)
        print(f"{run.url}: no committed checkpoints")
        return 0
    for key, prefix in groups:
        refs = prefix.checkpoints()
        if len(groups) > 1:
            if not refs and prefix is run:
                print(f"== {key}: no checkpoints of its own")
                continue
            print(_heading(key, len(refs), own=prefix is run))
        latest = prefix.latest()
        rows = []
        for ref in reversed(refs):
            problems = prefix.verify(ref) if args.verify else []
            status = ("ok" if not problems else "DAMAGED") if args.verify else "committed"
            mark = "*" if latest is not None and ref.name == latest.name else ""
            size = format_size(ref.size_bytes)
            rows.append([ref.name + mark, size, ref.created_at[:19], _metrics(ref), status])
        print(_table(["CHECKPOINT", "SIZE", "CREATED (UTC)", "METRICS", "STATUS"], rows))
    print("* = latest")
    if len(groups) > 1:
        print(_footer(groups, args))
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
    store = _store(args)
    run = _open_run(args, store)
    if args.step is not None or args.epoch is not None:
        groups = [(str(args.run_key), run)]
        refs_of = {id(run): [_select(run, args)]}
    else:
        groups = _groups(run, args)
        refs_of = {id(prefix): prefix.checkpoints() for _, prefix in groups}
    if len(groups) == 1 and not refs_of[id(run)]:
        _check_known(store, args)
        print(f"{run.url}: no committed checkpoints")
        return 0
    damaged = 0
    for key, prefix in groups:
        refs = refs_of[id(prefix)]
        if len(groups) > 1:
            if not refs and prefix is run:
                print(f"== {key}: no checkpoints of its own")
                continue
            print(_heading(key, len(refs), own=prefix is run))
        rows = []
        for ref in refs:
            problems = prefix.verify(ref)
            damaged += bool(problems)
            verdict = "ok" if not problems else "DAMAGED: " + "; ".join(problems)
            rows.append([ref.name, format_size(ref.size_bytes), verdict])
        print(_table(["CHECKPOINT", "SIZE", "VERIFICATION"], rows))
    if len(groups) > 1:
        checked = sum(len(refs) for refs in refs_of.values())
        print(f"{checked} checkpoint(s) in {len(groups)} group(s): "
              + (f"{damaged} DAMAGED" if damaged else "all verify"))
        print(_footer(groups, args))
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
    ls.add_argument("run_key", nargs="?", help="run key, or RUN_KEY/commands/PHASE.COMMAND (omit: list runs)")
    ls.add_argument("--verify", action="store_true", help="also check every sha256 (reads all payloads)")
    ls.set_defaults(func=_ls)
    for name, func, text in (
        ("show", _show, "show one checkpoint's manifest"),
        ("verify", _verify, "verify sizes and digests (all, or one)"),
    ):
        parser = ck_sub.add_parser(name, help=text)
        parser.add_argument("target", help=target_help)
        parser.add_argument("run_key", help="run key, or RUN_KEY/commands/PHASE.COMMAND")
        _add_selector(parser)
        parser.set_defaults(func=func)
    rm = ck_sub.add_parser("rm", help="delete checkpoints (manifest first)")
    rm.add_argument("target", help=target_help)
    rm.add_argument("run_key", help="run key, or RUN_KEY/commands/PHASE.COMMAND")
    _add_selector(rm)
    rm.add_argument("--all", action="store_true", help="delete every checkpoint of the run")
    rm.add_argument("--yes", action="store_true", help="really delete")
    rm.set_defaults(func=_rm)
    gc = ck_sub.add_parser("gc", help="abort the multipart uploads killed saves left (S3)")
    gc.add_argument("target", help=target_help)
    gc.add_argument("--older-than", default="1h", help="only uploads started this long ago (default 1h)")
    gc.add_argument("--yes", action="store_true", help="really abort them (default: list only)")
    gc.set_defaults(func=_gc)
