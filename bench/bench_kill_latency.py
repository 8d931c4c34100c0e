"""How late is a whole process tree gone after its deadline, and does anything of it survive? (issue #18)

Trees: random 3-level trees of 7 processes (root -> 2 children -> 2 grandchildren each, every node a shell
that ends in ``exec sleep 1000 MARKER``), in six families: ``plain``; ``setsid`` (children started with
``setsid`` or double-forked ``setsid`` daemons); ``ignore_term`` (members that ignore SIGTERM); ``cgroup``
(members that move themselves, and so their subtree, to the cgroup2 root or to a new cgroup
``grd-bench-escape-*`` below it); ``pidns`` (members that end in ``unshare --pid --fork sleep 1000 MARKER``,
a PID namespace of their own); ``mixed`` (any of these per node, and SIGTERM-ignoring members).

Identification: a command under grd's ``namespace`` containment sees namespace-local pids, so nothing here
trusts a pid a tree member reports. Each node's ``sleep`` gets the argument ``0.0004242<run><tree><node>``
(GNU sleep adds its arguments: harmless), and a process belongs to a tree when its /proc/PID/cmdline holds the
tree's marker (the shells hold it in their ``-c`` script, ``sleep`` and ``unshare`` as an argument). Members
are found by a scan of /proc 30 ms before the deadline (a tree with all 7 sleeps there is ``complete``;
latencies are over complete trees, survivors over all), then polled every 1 ms from the moment the runner
returns; once none is left a full /proc scan confirms it (what it finds is polled too). ``escapes_seen``
counts, at that scan, members in grd's cgroup, in an escape cgroup, outside grd's cgroup, and in a nested PID
namespace: the proof that the escapes took place; ``survivor_kinds`` names what survived (program: features).

Runners, interleaved tree by tree (each tree runs under every runner, in a random order per tree, so load
changes hit all of them alike): grd's ``run_command`` on the SIGKILL path (grace 0) and the TERM path
(grace ``--grace``) in each containment mode the host allows (``GRD_CONTAINMENT`` set per call), GNU
``timeout -s KILL`` and ``timeout -k GRACE``, and, on every k-th tree (``--prefect-trials`` in all), a
Prefect task with ``timeout_seconds`` running the tree through ``subprocess.run`` (one test-harness API for
the whole run). Latency = deadline -> every marked process of the tree gone. Survivors = marked processes
alive 0.5 s after ``deadline + grace`` (or when the runner returned, if later); they are then SIGKILLed by
marker and the escape cgroups removed. grd's own reported ``survivors`` is kept beside the independent count.

Targets: p99 <= 30 ms on the SIGKILL path, p99 <= grace + 30 ms on the TERM path, 0 survivors, >= 500 trees.
Also ``spawn_overhead``: ``true`` through ``subprocess.run`` vs ``run_command`` per mode, interleaved.

    .venv/bin/python bench/bench_kill_latency.py [--quick] [--trials N] [--prefect-trials N] [--grace S]
        [--modes namespace,cgroup,subreaper] [--no-prefect] [--out PATH]

Writes bench/results/kill_latency.json (``--out``) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import platform
import random
import re
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from grd_blocks.process import run_command  # noqa: E402
from grd_blocks.process.keepers import CONTAINMENT_ENV, FORCE_FALLBACK_ENV, MODES  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "kill_latency.json"
NODES = 7
FAMILIES = ("plain", "setsid", "ignore_term", "cgroup", "pidns", "mixed")
ESCAPES = {"setsid": ("setsid", "daemon"), "cgroup": ("cgroup_root", "cgroup_new"), "pidns": ("pidns",)}
PRESCAN_S = 0.03  # members are looked up this long before the deadline
POLL_S = 0.001
SETTLE_S = 0.5  # survivors are counted this long after deadline + grace
KILL_TARGET_MS = 30.0
MIN_TREES = 500
RUN_ID = f"{os.getpid() % 100000:05d}"  # in every marker and escape cgroup name of this run
RUN_MARK = f"0.0004242{RUN_ID}".encode()  # the prefix of every marker of this run
ESCAPE_PREFIX = "grd-bench-escape-"
GRD_CGROUP = re.compile(r"/grd-\d+-\d+(/|$)")  # a command's cgroup (grd_blocks.process.cgroup)


def cgroup2_root() -> Path | None:
    """The cgroup2 mount point (its root group), read from /proc/self/mounts."""
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) >= 3 and fields[2] == "cgroup2":
                return Path(fields[1].replace("\\040", " "))
    return None


CGROUP_ROOT = cgroup2_root()


# --- trees ----------------------------------------------------------------------------------------------


@dataclass
class Tree:
    index: int
    family: str
    marker: str  # "0.0004242<run><tree>"; node i's sleep gets marker + str(i)
    features: list[list[str]]  # per node (preorder): what it does besides sleeping
    script: str = ""
    cgroups: list[Path] = field(default_factory=list)  # escape cgroups it creates


def make_tree(index: int, family: str, rng: random.Random) -> Tree:
    """A random 7-node tree of ``family``; escape families get at least one escaping node."""
    features: list[list[str]] = [[] for _ in range(NODES)]
    kinds = [k for fam, ks in ESCAPES.items() if family in (fam, "mixed") for k in ks]
    if family == "cgroup" and CGROUP_ROOT is None:
        kinds = []
    if family == "mixed" and CGROUP_ROOT is None:
        kinds = [k for k in kinds if not k.startswith("cgroup")]
    for node in range(NODES):
        choices = [k for k in kinds if node > 0 or k not in ("setsid", "daemon")]  # the root is not started
        if choices and rng.random() < 0.5:
            features[node].append(rng.choice(choices))
        if family in ("ignore_term", "mixed") and rng.random() < 0.5:
            features[node].append("ignore_term")
    if kinds and not any(f in kinds for fs in features for f in fs):
        features[rng.randrange(1, NODES)].append(rng.choice(kinds))
    tree = Tree(index, family, f"{RUN_MARK.decode()}{index:05d}", features)
    tree.script = _node_script(tree, 0, 0)
    return tree


def _node_script(tree: Tree, node: int, level: int) -> str:
    """Node ``node``'s shell script, its children's inside it (nodes are numbered in preorder)."""
    feats = tree.features[node]
    parts = []
    if "ignore_term" in feats:
        parts.append("trap '' TERM")  # inherited by the exec'd sleep (and unshare): SIGTERM is ignored
    if "cgroup_root" in feats:
        parts.append(f"echo $$ > {shlex.quote(str(CGROUP_ROOT))}/cgroup.procs")
    if "cgroup_new" in feats:
        assert CGROUP_ROOT is not None
        path = CGROUP_ROOT / f"{ESCAPE_PREFIX}{RUN_ID}x{tree.index}x{node}"
        tree.cgroups.append(path)
        quoted = shlex.quote(str(path))
        parts.append(f"mkdir {quoted} && echo $$ > {quoted}/cgroup.procs")
    if level < 2:
        for child in _children(node):
            text = "sh -c " + shlex.quote(_node_script(tree, child, level + 1))
            if "setsid" in tree.features[child]:
                parts.append(f"setsid {text} &")
            elif "daemon" in tree.features[child]:
                parts.append(f"( setsid {text} & )")  # double fork: the subshell exits at once
            else:
                parts.append(f"{text} &")
    sleep = f"sleep 1000 {tree.marker}{node}"
    parts.append(f"exec unshare --pid --fork {sleep}" if "pidns" in feats else f"exec {sleep}")
    return "\n".join(parts)


def _children(node: int) -> list[int]:
    """Preorder numbering of a full binary tree of depth 3: 0 -> (1, 4), 1 -> (2, 3), 4 -> (5, 6)."""
    return {0: [1, 4], 1: [2, 3], 4: [5, 6]}.get(node, [])


# --- finding members by marker --------------------------------------------------------------------------


def cmdline(pid: int) -> bytes:
    """The process's argv, NUL-separated; empty for a zombie or a process that is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read()
    except OSError:
        return b""


def scan(marker: bytes) -> dict[int, bytes]:
    """Every live process whose command line holds ``marker``, with its command line."""
    found = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            data = cmdline(int(name))
            if marker in data:
                found[int(name)] = data
    return found


def node_of(data: bytes, marker: bytes) -> int | None:
    """The node a ``sleep`` or ``unshare`` member runs (its last argument); None for a shell."""
    last = data.rstrip(b"\0").split(b"\0")[-1]
    return int(last[len(marker) :]) if last.startswith(marker) and len(last) == len(marker) + 1 else None


def _cgroup_and_depth(pid: int) -> tuple[str | None, int]:
    """The process's cgroup2 path and its PID-namespace depth (the number of NSpid entries)."""
    group, depth = None, 0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                group = line[3:]
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                depth = len(line.split()) - 1
    return group, depth


def _place(group: str | None) -> str:
    """Where a member's cgroup is: grd's (``grd-<pid>-<n>``), an escape cgroup, or elsewhere."""
    if group is None:
        return "unknown_cgroup"
    if ESCAPE_PREFIX in group:
        return "in_escape_cgroup"
    return "in_grd_cgroup" if GRD_CGROUP.search(group) else "outside_grd_cgroup"


class Watch:
    """One tree's members: looked up by marker just before the deadline, then timed until they are gone."""

    def __init__(self, tree: Tree, deadline: float) -> None:
        self.tree = tree
        self.marker = tree.marker.encode()
        self.deadline = deadline
        self.members: dict[int, bytes] = {}
        self.seen: dict[str, int] = {}
        self.prescan_late_ms = 0.0
        self.timer = threading.Timer(max(0.0, deadline - PRESCAN_S - time.monotonic()), self._prescan)
        self.timer.start()

    def _prescan(self) -> None:
        self.prescan_late_ms = max(0.0, (time.monotonic() - (self.deadline - PRESCAN_S)) * 1000)
        self.members = scan(self.marker)
        sleeps = {node_of(d, self.marker) for d in self.members.values() if d.startswith(b"sleep\0")}
        groups = {pid: _cgroup_and_depth(pid) for pid in self.members}
        shallowest = min((depth for _g, depth in groups.values()), default=0)
        places = Counter(_place(group) for group, _depth in groups.values())
        self.seen = {
            "sleeps": len(sleeps - {None}),
            **places,
            "nested_pidns": sum(1 for _g, depth in groups.values() if depth > shallowest),
        }

    def settle(self, grace: float) -> dict[str, Any]:
        """Poll until every member is gone (bounded); count, kill and describe what survived."""
        self.timer.join()
        end = max(time.monotonic(), self.deadline + grace) + SETTLE_S
        known = set(self.members)
        gone_at: float | None = None
        while True:
            now = time.monotonic()
            known = {pid for pid in known if self.marker in cmdline(pid)}
            if not known:
                known = set(scan(self.marker))  # confirm: nothing forked late, nothing missed
                if not known:
                    gone_at = now
                    break
                continue
            if now > end:
                break
            time.sleep(POLL_S)
        survivors = {} if gone_at is not None else scan(self.marker)
        kinds = Counter(self._kind(data) for data in survivors.values())
        kill_marked(self.marker)
        remove_cgroups(self.tree.cgroups)
        return {
            "family": self.tree.family,
            "complete": self.seen.get("sleeps") == NODES,
            "latency_ms": None if gone_at is None else (gone_at - self.deadline) * 1000,
            "survivors": len(survivors),
            "survivor_kinds": dict(kinds),
            "escapes_seen": {k: v for k, v in self.seen.items() if k != "sleeps" and v},
            "prescan_late_ms": self.prescan_late_ms,
        }

    def _kind(self, data: bytes) -> str:
        node = node_of(data, self.marker)
        if node is None:
            return "sh"
        program = data.split(b"\0")[0].decode()
        return f"{program}:{'+'.join(self.tree.features[node]) or 'plain'}"


def kill_marked(marker: bytes, timeout: float = 2.0) -> None:
    """SIGKILL every process holding ``marker`` until none is left (bounded)."""
    end = time.monotonic() + timeout
    while (found := scan(marker)) and time.monotonic() < end:
        for pid in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.005)


def remove_cgroups(paths: list[Path], timeout: float = 1.0) -> None:
    """rmdir the escape cgroups (a killed member may hold one for a moment)."""
    end = time.monotonic() + timeout
    for path in paths:
        while path.exists():
            try:
                path.rmdir()
            except OSError:
                if time.monotonic() > end:
                    print(f"warning: cannot remove {path}", file=sys.stderr)
                    break
                time.sleep(0.005)


def sweep_escape_cgroups() -> None:
    """Remove this run's escape cgroups that are still there (e.g. after Ctrl-C)."""
    if CGROUP_ROOT is not None:
        remove_cgroups(sorted(CGROUP_ROOT.glob(f"{ESCAPE_PREFIX}{RUN_ID}x*")), timeout=2.0)


# --- runners --------------------------------------------------------------------------------------------

Runner = Callable[[Tree, float], dict[str, Any]]


def grd_runner(mode: str, grace: float) -> Runner:
    def run(tree: Tree, setup: float) -> dict[str, Any]:
        os.environ[CONTAINMENT_ENV] = mode
        deadline = time.monotonic() + setup
        watch = Watch(tree, deadline)
        outcome = run_command(tree.script, deadline=deadline, grace_s=grace, tail_chars=0)
        row = watch.settle(grace)
        row.update(reported_survivors=outcome.survivors, containment=outcome.containment,
                   timed_out=outcome.timed_out)
        return row

    return run


def timeout_runner(grace: float) -> Runner:
    def run(tree: Tree, setup: float) -> dict[str, Any]:
        how = ["-k", f"{grace}"] if grace > 0 else ["-s", "KILL"]
        deadline = time.monotonic() + setup  # timeout's own clock starts a fork+exec later
        watch = Watch(tree, deadline)
        subprocess.run(["timeout", *how, f"{setup}", "/bin/sh", "-c", tree.script],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return watch.settle(grace)

    return run


@contextlib.contextmanager
def prefect_runner(setup: float) -> Iterator[Runner]:
    """A Prefect task with ``timeout_seconds=setup`` runs the tree via ``subprocess.run`` (what users write);
    one flow run per tree, on one test-harness API."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "ERROR")
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE
    from prefect.testing.utilities import prefect_test_harness

    trees: dict[int, Tree] = {}
    watches: dict[int, Watch] = {}

    @task(timeout_seconds=setup, cache_policy=NO_CACHE, persist_result=False)
    def run_tree(index: int, script: str) -> None:
        watches[index] = Watch(trees[index], time.monotonic() + setup)
        subprocess.run(["/bin/sh", "-c", script], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)

    @flow(log_prints=False, persist_result=False)
    def tree_flow(index: int, script: str) -> str:
        try:
            run_tree(index, script)
        except Exception as exc:  # the TimeoutError Prefect raises is the expected outcome
            return type(exc).__name__
        return "completed"

    def run(tree: Tree, setup: float) -> dict[str, Any]:
        trees[tree.index] = tree
        result = tree_flow(tree.index, tree.script)
        returned = time.monotonic()
        watch = watches.pop(tree.index, None)
        if watch is None:
            return {"family": tree.family, "complete": False, "latency_ms": None, "survivors": 0,
                    "error": f"the task never started ({result})"}
        row = watch.settle(0.0)
        row.update(result=result, returned_late_ms=(returned - watch.deadline) * 1000)
        return row

    logging.getLogger("prefect").setLevel(logging.CRITICAL)  # the expected TimeoutError's traceback
    with prefect_test_harness(server_startup_timeout=120):
        yield run


# --- statistics -----------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of sorted ``values``."""
    if not values:
        return None
    return values[max(0, min(len(values) - 1, round(q / 100 * (len(values) - 1))))]


def _latency_stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    lat = sorted(r["latency_ms"] for r in rows if r["complete"] and r["latency_ms"] is not None)
    return {
        "trials": len(rows),
        "incomplete_trees": sum(1 for r in rows if not r["complete"]),
        "trees_fully_gone": sum(1 for r in rows if r["latency_ms"] is not None),
        "p50_ms": pct(lat, 50),
        "p99_ms": pct(lat, 99),
        "max_ms": lat[-1] if lat else None,
        "mean_ms": statistics.fmean(lat) if lat else None,
        "survivors": sum(r["survivors"] for r in rows),
        "trees_with_survivors": sum(1 for r in rows if r["survivors"]),
    }


def _add(counters: list[dict[str, int]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for counter in counters:
        total.update(counter)
    return dict(sorted(total.items()))


def summarize(name: str, spec: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, **spec, **_latency_stats(rows)}
    out["survivor_kinds"] = _add([r.get("survivor_kinds", {}) for r in rows])
    out["escapes_seen"] = _add([r.get("escapes_seen", {}) for r in rows])
    out["prescan_late_max_ms"] = max((r.get("prescan_late_ms", 0.0) for r in rows), default=0.0)
    if spec["kind"] == "grd":
        out["grd_reported_survivors"] = sum(r["reported_survivors"] for r in rows)
        out["containment"] = sorted({r["containment"] for r in rows})
        target = KILL_TARGET_MS + spec["grace_s"] * 1000
        out["target_p99_ms"] = target
        out["meets_target"] = (
            out["p99_ms"] is not None and out["p99_ms"] <= target and out["survivors"] == 0
            and out["incomplete_trees"] == 0 and len(rows) >= MIN_TREES
        )
    if spec["kind"] == "prefect":
        late = sorted(r["returned_late_ms"] for r in rows if "returned_late_ms" in r)
        out["flow_returned_late_p50_ms"] = pct(late, 50)
        out["flow_returned_late_p99_ms"] = pct(late, 99)
        out["results"] = dict(Counter(r.get("result", r.get("error", "?")) for r in rows))
    out["by_family"] = {
        fam: {**_latency_stats(fam_rows),
              "survivor_kinds": _add([r.get("survivor_kinds", {}) for r in fam_rows]),
              "escapes_seen": _add([r.get("escapes_seen", {}) for r in fam_rows])}
        for fam in FAMILIES
        if (fam_rows := [r for r in rows if r["family"] == fam])
    }
    return out


# --- spawn overhead -------------------------------------------------------------------------------------


def spawn_overhead(n: int, modes: list[str]) -> dict[str, Any]:
    """Per-command cost of ``true``: ``subprocess.run`` vs ``run_command`` (list and shell string) in each
    mode, interleaved in random order per round; medians and p90 in ms over ``n`` rounds after 10 warm-up."""
    calls: dict[str, Callable[[], object]] = {"bare": lambda: subprocess.run(["true"])}
    for mode in modes:
        calls[f"grd_{mode}_list"] = functools.partial(_in_mode, mode, ["true"])
        calls[f"grd_{mode}_shell"] = functools.partial(_in_mode, mode, "true")
    samples: dict[str, list[float]] = {key: [] for key in calls}
    rng = random.Random(0)
    for i in range(n + 10):
        order = list(calls)
        rng.shuffle(order)
        for key in order:
            t = time.perf_counter()
            calls[key]()
            if i >= 10:
                samples[key].append((time.perf_counter() - t) * 1000)
    out: dict[str, Any] = {"rounds": n}
    bare = statistics.median(samples["bare"])
    for key, values in samples.items():
        values.sort()
        out[key] = {"median_ms": statistics.median(values), "p90_ms": pct(values, 90),
                    "overhead_median_ms": statistics.median(values) - bare}
    return out


def _in_mode(mode: str, run: str | list[str]) -> object:
    os.environ[CONTAINMENT_ENV] = mode
    return run_command(run)


def available_modes(wanted: list[str]) -> tuple[list[str], dict[str, str]]:
    """The wanted containment modes this host gives (a command reports the mode it ran in)."""
    ok, refused = [], {}
    for mode in wanted:
        os.environ[CONTAINMENT_ENV] = mode
        got = run_command(["true"]).containment
        if got == mode:
            ok.append(mode)
        else:
            refused[mode] = f"fell back to {got}"
    return ok, refused


# --- main -----------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="40 trees, 5 Prefect trials, 50 overhead rounds")
    parser.add_argument("--trials", type=int, default=MIN_TREES, help="trees (each runs under every runner)")
    parser.add_argument("--prefect-trials", type=int, default=30)
    parser.add_argument("--overhead-rounds", type=int, default=300, help="spawn_overhead rounds (0: skip)")
    parser.add_argument("--grace", type=float, default=0.2, help="TERM-path grace in seconds")
    parser.add_argument("--setup", type=float, default=0.25, help="deadline after start; trees build in this")
    parser.add_argument("--modes", default=",".join(MODES), help="containment modes to run grd in")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--no-prefect", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.trials, args.prefect_trials, args.overhead_rounds = 40, 5, 50
    logging.basicConfig(level=logging.ERROR)
    os.environ.pop(FORCE_FALLBACK_ENV, None)
    saved_mode = os.environ.get(CONTAINMENT_ENV)
    modes, refused = available_modes([m for m in args.modes.split(",") if m])

    rng = random.Random(args.seed)
    families = (list(FAMILIES) * (args.trials // len(FAMILIES) + 1))[: args.trials]
    rng.shuffle(families)
    trees = [make_tree(i, fam, rng) for i, fam in enumerate(families)]
    runners: dict[str, tuple[dict[str, Any], Runner]] = {}
    for mode in modes:
        runners[f"grd {mode} SIGKILL path (grace 0)"] = (
            {"kind": "grd", "mode": mode, "grace_s": 0.0}, grd_runner(mode, 0.0))
        runners[f"grd {mode} TERM path (grace {args.grace}s)"] = (
            {"kind": "grd", "mode": mode, "grace_s": args.grace}, grd_runner(mode, args.grace))
    runners["GNU timeout -s KILL"] = ({"kind": "timeout", "grace_s": 0.0}, timeout_runner(0.0))
    runners[f"GNU timeout -k {args.grace}"] = ({"kind": "timeout", "grace_s": args.grace},
                                               timeout_runner(args.grace))
    prefect_name = "Prefect task timeout_seconds + subprocess.run"
    use_prefect = not args.no_prefect and args.prefect_trials > 0
    every = max(1, args.trials // max(1, args.prefect_trials))

    results: dict[str, Any] = {
        "benchmark": "kill_latency",
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
                    "cgroup2_root": str(CGROUP_ROOT), "modes": modes, "modes_refused": refused},
        "config": {**vars(args), "out": str(args.out), "prefect_every_kth_tree": every},
        "note": ("latency = deadline -> every process holding the tree's marker gone from /proc (polled "
                 "every 1 ms from the runner's return); survivors counted 0.5 s after deadline+grace, then "
                 "killed"),
        "loadavg_before": os.getloadavg(),
    }
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in runners}
    load: list[float] = []
    if args.overhead_rounds > 0:
        print(f"spawn overhead: {args.overhead_rounds} rounds ...", flush=True)
        results["spawn_overhead"] = spawn_overhead(args.overhead_rounds, modes)
    started = time.monotonic()
    limit = args.prefect_trials
    try:
        with contextlib.ExitStack() as stack:
            prefect = stack.enter_context(prefect_runner(args.setup)) if use_prefect else None
            if prefect is not None:
                rows[prefect_name] = []
            for tree in trees:
                order = list(runners)
                if prefect is not None and tree.index % every == 0 and len(rows[prefect_name]) < limit:
                    order.append(prefect_name)
                rng.shuffle(order)
                for name in order:
                    runner = prefect if name == prefect_name else runners[name][1]
                    assert runner is not None
                    rows[name].append(runner(tree, args.setup))
                load.append(os.getloadavg()[0])
                if (tree.index + 1) % 10 == 0 or tree.index + 1 == len(trees):
                    print(f"  {tree.index + 1}/{len(trees)} trees, {time.monotonic() - started:.0f}s, "
                          f"load {load[-1]:.2f}", flush=True)
    finally:
        kill_marked(RUN_MARK)
        sweep_escape_cgroups()
        if saved_mode is None:
            os.environ.pop(CONTAINMENT_ENV, None)
        else:
            os.environ[CONTAINMENT_ENV] = saved_mode
    specs = {name: spec for name, (spec, _run) in runners.items()}
    specs[prefect_name] = {"kind": "prefect", "grace_s": 0.0}
    results["series"] = [summarize(name, specs[name], rows[name]) for name in rows]
    results["loadavg_after"] = os.getloadavg()
    results["load_1m_during"] = {"min": min(load, default=0), "median": statistics.median(load or [0]),
                                 "max": max(load, default=0)}
    results["wall_s"] = time.monotonic() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    print(f"wrote {args.out}")
    return 0


def markdown(results: dict[str, Any]) -> str:
    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    lines = [
        "| runner | trees | incomplete | p50 ms | p99 ms | max ms | target p99 | survivors (trees) "
        "| grd-reported | met |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in results["series"]:
        met = {True: "yes", False: "no"}.get(s.get("meets_target"), "")
        if met and s["trials"] < MIN_TREES:
            met += f" (< {MIN_TREES} trees)"
        cells = [s["name"], s["trials"], s["incomplete_trees"], f(s["p50_ms"]), f(s["p99_ms"]),
                 f(s["max_ms"]), f(s.get("target_p99_ms")), f"{s['survivors']} ({s['trees_with_survivors']})",
                 s.get("grd_reported_survivors", ""), met]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    names = [s["name"] for s in results["series"]]
    lines += ["", "Survivors by family (trees):", "",
              "| family | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for fam in FAMILIES:
        cells = []
        for s in results["series"]:
            b = s["by_family"].get(fam)
            cells.append("-" if b is None else
                         f"{b['survivors']} ({b['trees_with_survivors']}/{b['trials']})")
        lines.append(f"| {fam} | " + " | ".join(cells) + " |")
    lo = results["load_1m_during"]
    lines.append("")
    lines.append(f"Load average (1 min) before {results['loadavg_before'][0]:.2f}, during {lo['min']:.2f}-"
                 f"{lo['max']:.2f} (median {lo['median']:.2f}), after {results['loadavg_after'][0]:.2f}.")
    o = results.get("spawn_overhead")
    if o:
        parts = [f"{k} {v['median_ms']:.2f} ms" for k, v in o.items() if isinstance(v, dict)]
        lines.append("Per-command cost of `true` (median): " + ", ".join(parts) + ".")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
