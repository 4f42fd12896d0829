"""`scan --engine ray`: Ray workers decode and score, this process walks, caches, reports and
moves. The same folder gives the same records, summary, moves and journal as the local engine,
also when a worker is killed in the middle of a batch, and on a two-node cluster on loopback.

The scans with Ray run in subprocesses (a Ray driver's state never leaks into the test process);
tests that need Ray are skipped when the `ray` extra is not installed."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from imgclean import tuning
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import flat, journal_view, make_incoming_folder, ood_image, quarantined, tree_snapshot, write_png
from imgclean.cli import app
from imgclean.pipeline.engines.ray_engine import RayEngineError, ScoreWorker, check_reachable, match_outcomes
from imgclean.quarantine.journal import fold
from imgclean.reports.records import read_report
from imgclean.store.cache import RACY_SECONDS

ROOT = Path(__file__).resolve().parents[1]
HAVE_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="the ray extra is not installed (pip install 'imgclean[ray]')")
# Bound on one scan with Ray (start-up of a local Ray is seconds; a hang must not hang the suite).
RAY_SCAN_TIMEOUT_S = 240
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [os.fsdecode(a) if isinstance(a, (bytes, os.PathLike)) else str(a) for a in args])


def ray_env(**extra) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)  # the scan starts its own local Ray unless a test says otherwise
    env.update(extra)
    return env


def run_cli(args, env=None, timeout=RAY_SCAN_TIMEOUT_S) -> subprocess.CompletedProcess:
    """`python -m imgclean ARGS` in its own session; on a timeout the whole group is killed."""
    proc = subprocess.Popen([sys.executable, "-m", "imgclean", *map(os.fsdecode, args)], env=env or ray_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"scan did not finish in {timeout} s: {err.decode(errors='replace')[-2000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out.decode(), err.decode(errors="replace"))


def dirty_folder(root: Path) -> Path:
    """In- and out-of-distribution images, a broken file, an unsupported one, a non-UTF-8 name,
    sub-folders."""
    make_incoming_folder(root, normal=8, ood=6)
    rng = np.random.default_rng(11)
    write_png(root / "sub" / "deep" / "odd name 'x'.png", ood_image(rng))
    write_png(root / "sub" / "more.png", ood_image(rng))
    (root / "sub" / "fake.png").write_bytes(b"%PDF-1.4\n" + b"\x00" * 40)  # unsupported
    raw = os.fsencode(root) + b"/caf\xe9-\xff.png"  # not UTF-8
    with open(raw, "wb") as fh:
        fh.write((root / "odd_00.png").read_bytes())
    return root


def age(folder: Path, seconds: int = 60) -> None:
    """Date every file back, so the scan cache stores them (it skips files modified just now),
    then wait out the cache's racy window: os.utime set their ctimes to now, and no call sets
    a ctime back."""
    for d, _, files in os.walk(os.fsencode(folder)):
        for f in files:
            st = os.stat(os.path.join(d, f))
            os.utime(os.path.join(d, f), ns=(st.st_atime_ns, st.st_mtime_ns - seconds * 10**9))
    time.sleep(RACY_SECONDS + 0.5)


def twins(tmp_path: Path, n: int = 2) -> list[Path]:
    first = dirty_folder(tmp_path / "f0")
    out = [first]
    for i in range(1, n):
        out.append(tmp_path / f"f{i}")
        shutil.copytree(first, out[-1], symlinks=True)
    return out


def record_view(report: Path) -> list[tuple]:
    """A report's records without what differs between two copies (root, inode, times, scores
    rounded to 1e-6: the two engines may batch differently)."""
    rows = []
    for row in read_report(report):
        r = row.record
        assert r is not None, row
        score = None if r.score is None else round(r.score, 6)
        dest = None if r.destination is None else Path(r.destination).name
        rows.append((r.path, r.status, r.predicted, r.nearest, score, r.action, dest, r.message, r.size))
    return rows


def summary_view(stdout: str) -> dict:
    out = json.loads(stdout)
    for key in ("seconds", "images_per_second", "root"):
        out.pop(key)
    return out


def scan_args(folder: Path, model: Path, q: Path, report: Path, *extra) -> list:
    return ["scan", folder, "-m", model, "--move-to", q, "--report", report, "--json", "-q", "--no-cache", *extra]


def assert_same_outcome(tmp_path, local: tuple[Path, Path, Path, str], ray: tuple[Path, Path, Path, str]) -> None:
    (fa, qa, ra, sa), (fb, qb, rb, sb) = local, ray
    assert summary_view(sa) == summary_view(sb)
    assert record_view(ra) == record_view(rb)
    rows_a = {r.record.path: r.record.score for r in read_report(ra)}
    rows_b = {r.record.path: r.record.score for r in read_report(rb)}
    for path, score in rows_a.items():
        assert (score is None) == (rows_b[path] is None) and abs((score or 0) - (rows_b[path] or 0)) <= 1e-6, path
    assert quarantined(qa) == quarantined(qb)
    assert journal_view(qa, Path(os.path.realpath(fa)), 6) == journal_view(qb, Path(os.path.realpath(fb)), 6)
    assert tree_snapshot(fa) == tree_snapshot(fb)


def journal_is_consistent(q: Path, root: Path, moved: int) -> None:
    """Every move finished, no line invalid, each source moved exactly once, each destination there."""
    journal = fold(q)
    assert journal.invalid == [] and journal.unfinished() == []
    moves = [op for op, _ in journal.moves()]
    assert len(moves) == moved and all(op["state"] == "done" for op in moves)
    sources = [op["source"] for op in moves]
    assert len(set(sources)) == len(sources)
    for op in moves:
        assert os.path.exists(op["destination"]) and not os.path.lexists(op["source"])


# ------------------------------------------------------------------ with a local Ray
@pytest.mark.slow
@needs_ray
def test_ray_engine_gives_the_local_engines_records_moves_and_journal(model_dir, tmp_path):
    fa, fb = twins(tmp_path)
    qa, qb, ra, rb = tmp_path / "qa", tmp_path / "qb", tmp_path / "ra.jsonl", tmp_path / "rb.jsonl"
    local = invoke(*scan_args(fa, model_dir, qa, ra, "--batch-size", "3"))
    assert local.exit_code == 0, local.output
    ray = run_cli(scan_args(fb, model_dir, qb, rb, "--batch-size", "3", "--engine", "ray", "--ray-workers", "2"))
    assert ray.returncode == 0, ray.stderr
    assert_same_outcome(tmp_path, (fa, qa, ra, local.stdout), (fb, qb, rb, ray.stdout))
    summary = json.loads(ray.stdout)
    assert summary["moved"] >= 8 and summary["unreadable"] >= 1 and summary["unsupported"] >= 1
    assert any(b"\xe9" in os.fsencode(p) for p in os.listdir(qb))  # the non-UTF-8 name was scored and moved
    journal_is_consistent(qb, Path(os.path.realpath(fb)), summary["moved"])


@pytest.mark.slow
@needs_ray
def test_a_worker_killed_in_its_second_batch_is_retried_and_nothing_moves_twice(model_dir, tmp_path):
    fa, fb = twins(tmp_path)
    qa, qb, ra, rb = tmp_path / "qa", tmp_path / "qb", tmp_path / "ra.jsonl", tmp_path / "rb.jsonl"
    marker = tmp_path / "killed"
    local = invoke(*scan_args(fa, model_dir, qa, ra, "--batch-size", "2"))
    assert local.exit_code == 0, local.output
    ray = run_cli(scan_args(fb, model_dir, qb, rb, "--batch-size", "2", "--engine", "ray", "--ray-workers", "1"),
                  env=ray_env(IMGCLEAN_RAY_TEST_KILL=f"2:{marker}"))
    assert ray.returncode == 0, ray.stderr
    assert marker.exists()  # the worker was killed (SIGKILL) in its 2nd batch, and the batch retried
    assert_same_outcome(tmp_path, (fa, qa, ra, local.stdout), (fb, qb, rb, ray.stdout))
    summary = json.loads(ray.stdout)
    assert summary["moved"] == summary["rejected"] >= 8
    journal_is_consistent(qb, Path(os.path.realpath(fb)), summary["moved"])


@pytest.mark.slow
@needs_ray
def test_a_file_that_kills_every_worker_ends_unreadable_and_the_scan_goes_on(model_dir, tmp_path):
    """As with the local engine's decode processes: the batch is retried, then scored one file
    at a time; the file that kills a worker on its own is unreadable (and quarantined as such)."""
    fa, fb = twins(tmp_path)
    qa, qb, ra, rb = tmp_path / "qa", tmp_path / "qb", tmp_path / "ra.jsonl", tmp_path / "rb.jsonl"
    local = invoke(*scan_args(fa, model_dir, qa, ra, "--batch-size", "4"))
    assert local.exit_code == 0, local.output
    ray = run_cli(scan_args(fb, model_dir, qb, rb, "--batch-size", "4", "--engine", "ray", "--ray-workers", "1"),
                  env=ray_env(IMGCLEAN_RAY_TEST_KILL="poison:normal_03.png", IMGCLEAN_RAY_RETRIES="1"))
    assert ray.returncode == 0, ray.stderr
    rows_a = {r.path: r for r in (row.record for row in read_report(ra))}
    rows_b = {r.path: r for r in (row.record for row in read_report(rb))}
    assert rows_a.keys() == rows_b.keys()
    poison = rows_b.pop("normal_03.png")
    assert poison.status == "unreadable" and "died while decoding or scoring this file alone" in poison.message
    assert poison.action == "moved" and (qb / "normal_03.png").exists()
    del rows_a["normal_03.png"]
    for path, a in rows_a.items():
        b = rows_b[path]
        assert (a.status, a.predicted, a.nearest, a.action) == (b.status, b.predicted, b.nearest, b.action), path
        # The poison's batch-mates were scored alone (a batch of 1): float32 sums in another order.
        assert (a.score is None and b.score is None) or abs(a.score - b.score) <= 1e-5 * max(1.0, abs(a.score)), path
    summary = json.loads(ray.stdout)
    assert summary["moved"] == json.loads(local.stdout)["moved"] + (rows_a and 1)
    journal_is_consistent(qb, Path(os.path.realpath(fb)), summary["moved"])


@pytest.mark.slow
@needs_ray
def test_only_cache_misses_go_to_the_workers(model_dir, tmp_path):
    folder = dirty_folder(tmp_path / "in")
    age(folder)
    cache = tmp_path / "cache"
    base = ["scan", folder, "-m", model_dir, "--cache-dir", cache, "--json", "-q", "--engine", "ray", "--ray-workers", "1"]
    first = run_cli(base)
    assert first.returncode == 0, first.stderr
    n = json.loads(first.stdout)["scanned"]
    rng = np.random.default_rng(5)
    for new in (folder / "new1.png", folder / "sub" / "new2.png"):
        write_png(new, ood_image(rng))
        os.utime(new, (0, new.stat().st_mtime - 60))
    time.sleep(RACY_SECONDS + 0.5)  # their ctimes out of the racy window: the second scan stores them
    second = run_cli(base)
    assert second.returncode == 0, second.stderr
    s2 = json.loads(second.stdout)
    assert s2["scanned"] == n + 2 and s2["decoded"] == 2 and s2["cached"] == n
    # Everything cached: no batch goes out, so Ray is never contacted (this address answers nothing).
    third = run_cli([*base, "--ray-address", "127.0.0.1:9"])
    assert third.returncode == 0, third.stderr
    s3 = json.loads(third.stdout)
    assert s3["decoded"] == 0 and s3["cached"] == n + 2 and s3["ood"] == s2["ood"]


@pytest.mark.slow
@needs_ray
def test_sigterm_during_a_ray_scan_stops_it_cleanly(model_dir, tmp_path):
    """ray.init installs a SIGTERM handler of its own (a stack dump, then death): the scan must
    keep its own, finish the file in flight, say it was interrupted and exit 143."""
    import time

    folder = tmp_path / "many"
    rng = np.random.default_rng(3)
    for i in range(400):
        write_png(folder / f"odd_{i:03d}.png", ood_image(rng))
    q = tmp_path / "q"
    args = ["scan", folder, "-m", model_dir, "--move-to", q, "--json", "-q", "--no-cache", "--batch-size", "2",
            "--engine", "ray", "--ray-workers", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "imgclean", *map(os.fsdecode, args)], env=ray_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    manifest = q / "imgclean-manifest.jsonl"
    deadline = time.monotonic() + RAY_SCAN_TIMEOUT_S
    while proc.poll() is None and time.monotonic() < deadline and not (manifest.exists() and manifest.stat().st_size):
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)  # the first move is journaled: the scan is well under way
    try:
        out, err = proc.communicate(timeout=RAY_SCAN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the scan did not stop after SIGTERM")
    assert proc.returncode == 143, err.decode(errors="replace")[-2000:]
    summary = json.loads(out)
    assert summary["interrupted"] is True and 0 < summary["moved"] < 400
    journal_is_consistent(q, Path(os.path.realpath(folder)), summary["moved"])
    assert len(list(folder.glob("*.png"))) + summary["moved"] == 400


# ------------------------------------------------------------------ a two-node cluster on loopback
def private_namespace() -> list[str]:
    """A user, network, mount and PID namespace with only loopback: everything Ray binds stays on
    127.0.0.1, and every process started inside dies with it. [] where that is not possible."""
    cmd = ["unshare", "-rnmpf", "--mount-proc", "sh", "-c", "ip link set lo up"]
    try:
        ok = subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    return ["unshare", "-rnmpf", "--mount-proc"] if ok else []


CLUSTER_SCRIPT = r"""
set -eu
ip link set lo up
RAY="$(dirname "$PYTHON")/ray"
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0
"$RAY" start --head --node-ip-address=127.0.0.1 --port=6390 --num-cpus=1 --include-dashboard=false \
    --temp-dir="$RAYTMP" --disable-usage-stats > "$LOGS/head.log" 2>&1
"$RAY" start --address=127.0.0.1:6390 --node-ip-address=127.0.0.1 --num-cpus=1 --disable-usage-stats \
    > "$LOGS/node.log" 2>&1
"$PYTHON" -c "
import time, ray
ray.init(address='127.0.0.1:6390', logging_level='ERROR')
deadline = time.time() + 60
while sum(n['Alive'] for n in ray.nodes()) < 2 and time.time() < deadline:
    time.sleep(0.5)
print('nodes', sum(n['Alive'] for n in ray.nodes()))
" > "$LOGS/nodes.txt"
set +e
"$PYTHON" -m imgclean "$@" > "$LOGS/scan.json" 2> "$LOGS/scan.err"
echo $? > "$LOGS/scan.rc"
"$RAY" stop --force > /dev/null 2>&1
exit 0
"""


@pytest.mark.slow
@needs_ray
def test_two_node_cluster_on_loopback_gives_the_local_engines_result(model_dir, tmp_path):
    ns = private_namespace()
    if not ns:
        pytest.skip("no private user/network/PID namespace here (unshare -rnmpf)")
    fa, fb = twins(tmp_path)
    qa, qb, ra, rb = tmp_path / "qa", tmp_path / "qb", tmp_path / "ra.jsonl", tmp_path / "rb.jsonl"
    local = invoke(*scan_args(fa, model_dir, qa, ra, "--batch-size", "3"))
    assert local.exit_code == 0, local.output
    logs = tmp_path / "logs"
    logs.mkdir()
    # Ray's sockets live under its temp dir: a short path (AF_UNIX paths are limited to 107 bytes).
    raytmp = tempfile.mkdtemp(prefix="ir", dir="/tmp")
    args = scan_args(fb, model_dir, qb, rb, "--batch-size", "3", "--engine", "ray", "--ray-address", "127.0.0.1:6390",
                     "--ray-workers", "2")
    env = ray_env(PYTHON=sys.executable, LOGS=str(logs), RAYTMP=raytmp)
    proc = subprocess.Popen([*ns, "sh", "-c", CLUSTER_SCRIPT, "sh", *map(os.fsdecode, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=RAY_SCAN_TIMEOUT_S + 120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the namespace's first process: everything inside dies with it
        output, _ = proc.communicate()
        pytest.fail(f"the cluster test did not finish: {output.decode(errors='replace')[-2000:]}")
    finally:
        shutil.rmtree(raytmp, ignore_errors=True)
    shown = output.decode(errors="replace")[-2000:]
    assert proc.returncode == 0, shown + (logs / "head.log").read_text(errors="replace")[-2000:]
    assert (logs / "nodes.txt").read_text().split() == ["nodes", "2"], shown
    scan_err = (logs / "scan.err").read_text(errors="replace")
    assert (logs / "scan.rc").read_text().strip() == "0", scan_err[-3000:]
    # One CPU per node and one per worker: the two workers ran one on each node.
    assert_same_outcome(tmp_path, (fa, qa, ra, local.stdout), (fb, qb, rb, (logs / "scan.json").read_text()))


# ------------------------------------------------------------------ without a cluster
def test_results_are_matched_to_the_batch_by_path():
    class Counter:
        duplicates = 0

    counter = Counter()
    sent = [b"a.png", b"\xff.png", b"c.png"]
    got = match_outcomes(sent, [b"c.png", b"a.png", b"\xff.png", b"a.png"],
                         [("ok", "", 0, 0, 0.1), ("ood", "", 1, 1, 2.0), ("unreadable", "x", -1, -1, None),
                          ("ok", "", 0, 0, 0.5)], counter)
    assert got == [("ood", "", 1, 1, 2.0), ("unreadable", "x", -1, -1, None), ("ok", "", 0, 0, 0.1)]
    assert counter.duplicates == 1  # a path sent twice counts once (the first)
    with pytest.raises(RayEngineError, match="no result for 1 files"):
        match_outcomes(sent, [b"a.png", b"c.png"], [("ok", "", 0, 0, 0.1)] * 2)


def test_a_worker_scores_bytes_paths_as_the_local_scorer_does(model_dir, tmp_path):
    from imgclean.pipeline.decode import Decoder
    from imgclean.pipeline.scan.scanner import Scorer
    from imgclean.store.artifact import load_model, read_model_files

    folder = dirty_folder(tmp_path / "in")
    paths = sorted(os.fsencode(os.path.join(d, f)) for d, _, fs in os.walk(os.fsencode(folder)) for f in fs)
    bundle = load_model(model_dir)
    files = read_model_files(model_dir)
    worker = ScoreWorker(bundle.config, "mahalanobis", 4, "cpu")
    assert worker.ready(files) == bundle.fingerprint
    got_paths, outcomes = worker.score(files, paths)
    assert got_paths == paths
    scorer = Scorer(bundle, 4)
    with Decoder(scorer.settings, 1) as decoder:
        expected = scorer.outcomes(decoder.decode(paths))
    assert [o[:4] for o in outcomes] == [e[:4] for e in expected]
    for o, e in zip(outcomes, expected):
        assert (o[4] is None) == (e[4] is None) and abs((o[4] or 0) - (e[4] or 0)) <= 1e-6
    statuses = {o[0] for o in outcomes}
    assert {"ok", "ood", "unreadable", "unsupported"} <= statuses


def test_a_worker_refuses_a_model_that_is_not_the_drivers(model_dir):
    from imgclean.store.artifact import load_model, read_model_files

    config = dict(load_model(model_dir, lazy=True).config, fingerprint="0" * 64)
    with pytest.raises(RayEngineError, match="is not the driver's"):
        ScoreWorker(config, "mahalanobis", 4, "cpu").ready(read_model_files(model_dir))
    with pytest.raises(RayEngineError, match="not a plain name"):
        ScoreWorker(config, "mahalanobis", 4, "cpu").score({"../x": b""}, [b"a.png"])


def test_ray_options_need_the_ray_engine(model_dir, tmp_path):
    (tmp_path / "in").mkdir()
    for option, value in (("--ray-address", "auto"), ("--ray-workers", "2"), ("--ray-gpus-per-worker", "0.5")):
        result = invoke("scan", tmp_path / "in", "-m", model_dir, option, value)
        assert result.exit_code == 2 and flat(f"{option} needs --engine ray") in flat(result.output)


def test_the_device_option_is_the_local_engines(model_dir, tmp_path):
    (tmp_path / "in").mkdir()
    result = invoke("scan", tmp_path / "in", "-m", model_dir, "--engine", "ray", "--device", "cuda")
    assert result.exit_code == 2 and flat("--ray-gpus-per-worker") in flat(result.output)


def test_without_ray_installed_the_engine_says_how_to_install_it(model_dir, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    (tmp_path / "in").mkdir()
    settings = tmp_path / "imgclean.yaml"
    settings.write_text("scan:\n  engine: ray\n  ray-workers: 2\n")
    for args in (["--engine", "ray"], ["--config", settings]):
        result = invoke("scan", tmp_path / "in", "-m", model_dir, *args)
        assert result.exit_code == 1, result.output
        assert flat("pip install 'imgclean[ray]'") in flat(result.output) and "Traceback" not in result.output


def test_a_cluster_address_that_does_not_answer_is_one_line(model_dir, tmp_path):
    with pytest.raises(RayEngineError, match="cannot reach the Ray cluster at 127.0.0.1:9"):
        check_reachable("127.0.0.1:9")
    for bad in ("nohost", "host:port", ":80"):
        with pytest.raises(RayEngineError, match="not host:port or auto"):
            check_reachable(bad)
    check_reachable(None)
    check_reachable("auto")


class FakeRay:
    """Just enough of `ray` to see what RayEngine asks of it: actors run in this process."""

    class exceptions:
        class RayError(Exception):
            pass

        class GetTimeoutError(RayError):
            pass

    def __init__(self, resources):
        self.resources = resources
        self.options_seen: list[dict] = []
        self.inits: list[dict] = []
        self.killed = 0
        self.shut = 0
        self._up = False

    def is_initialized(self):
        return self._up

    def init(self, **kw):
        self.inits.append(kw)
        self._up = True

    def shutdown(self):
        self.shut += 1
        self._up = False

    def cluster_resources(self):
        return self.resources

    def put(self, value):
        return ("ref", value)

    def get(self, refs, timeout=None):
        return [r() for r in refs] if isinstance(refs, list) else refs()

    def kill(self, actor):
        self.killed += 1

    def cancel(self, ref):
        pass

    def remote(self, cls):
        fake = self

        class Handle:
            def __init__(self, instance):
                self.instance = instance

            def __getattr__(self, name):
                method = getattr(self.instance, name)

                class Method:
                    @staticmethod
                    def remote(files, *a):
                        return lambda: method(files[0][1], *a)  # [("ref", dict)]: what put() gave

                return Method

        class Remote:
            def options(self, **kw):
                fake.options_seen.append(kw)
                return self

            def remote(self, config, method, batch_size, device, kill_at):
                fake.devices = getattr(fake, "devices", []) + [device]
                return Handle(cls(config, method, batch_size, "cpu", kill_at))

        return Remote()


@pytest.mark.parametrize("gpus, resources, workers, expected", [
    (0.0, {"CPU": 3.0}, 0, 3),            # one per CPU of the cluster
    (0.5, {"CPU": 16.0, "GPU": 2.0}, 0, 4),  # one per GPU share
    (0.0, {"CPU": 8.0}, 2, 2),            # as asked
])
def test_the_engine_asks_ray_for_the_workers_and_devices_it_was_given(model_dir, tmp_path, monkeypatch, gpus, resources,
                                                                      workers, expected):
    from imgclean.pipeline.engines import ray_engine as ray_scan
    from imgclean.pipeline.scan.scanner import Scorer
    from imgclean.store.artifact import load_model

    fake = FakeRay(resources)
    monkeypatch.setattr(ray_scan, "import_ray", lambda: fake)
    monkeypatch.setattr(ray_scan, "route_ray_messages_to_log", lambda: None)
    folder = dirty_folder(tmp_path / "in")
    scorer = Scorer(load_model(model_dir, lazy=True), 4)
    engine = ray_scan.RayEngine(scorer, ray_scan.RayOptions(workers=workers, gpus_per_worker=gpus))
    records = [r for r, _ in scorer.scan(folder, (), engine)]
    assert len(fake.options_seen) == 1 and fake.options_seen[0]["num_gpus"] == gpus
    assert fake.options_seen[0]["max_restarts"] == -1 and fake.options_seen[0]["max_task_retries"] == tuning.current().ray_retries
    assert fake.devices == ["cuda" if gpus else "cpu"] * expected
    assert fake.killed == expected and fake.shut == 1 and fake.inits[0]["address"] is None
    local = [r for r, _ in Scorer(load_model(model_dir, lazy=True), 4).scan(folder)]
    assert [(r.path, r.status, r.predicted) for r in records] == [(r.path, r.status, r.predicted) for r in local]


def test_a_folder_the_cache_answers_whole_never_starts_ray(model_dir, tmp_path, monkeypatch):
    from imgclean.pipeline.engines import ray_engine as ray_scan
    from imgclean.pipeline.scan.scanner import Scorer
    from imgclean.store.artifact import load_model

    fake = FakeRay({"CPU": 2.0})
    monkeypatch.setattr(ray_scan, "import_ray", lambda: fake)
    (tmp_path / "empty").mkdir()
    scorer = Scorer(load_model(model_dir, lazy=True), 4)
    assert list(scorer.scan(tmp_path / "empty", (), ray_scan.RayEngine(scorer, ray_scan.RayOptions()))) == []
    assert fake.inits == [] and fake.options_seen == [] and fake.shut == 0


def test_more_workers_than_a_local_ray_has_cpus_is_one_error_at_once(model_dir, tmp_path, monkeypatch):
    from imgclean.pipeline.engines import ray_engine as ray_scan
    from imgclean.pipeline.scan.scanner import Scorer
    from imgclean.store.artifact import load_model

    fake = FakeRay({"CPU": 2.0})
    monkeypatch.setattr(ray_scan, "import_ray", lambda: fake)
    monkeypatch.setattr(ray_scan, "route_ray_messages_to_log", lambda: None)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    folder = dirty_folder(tmp_path / "in")
    scorer = Scorer(load_model(model_dir, lazy=True), 4)
    for options, match in ((ray_scan.RayOptions(workers=5), "5 Ray workers need 5 CPUs, the cluster has 2"),
                           (ray_scan.RayOptions(gpus_per_worker=0.5, workers=1), "need 1 CPUs and 0.5 GPUs|0.5 GPUs, the cluster has 0")):
        with pytest.raises(RayEngineError, match=match):
            list(scorer.scan(folder, (), ray_scan.RayEngine(scorer, options)))
        assert fake.options_seen[-1]["num_cpus"] == 1 and fake.shut == len(fake.inits)  # stopped what it started


def test_the_python_api_takes_the_engine_and_its_options(model_dir, tmp_path, monkeypatch):
    from imgclean import api
    from imgclean.pipeline.engines import ray_engine as ray_scan

    fake = FakeRay({"CPU": 4.0})
    monkeypatch.setattr(ray_scan, "import_ray", lambda: fake)
    monkeypatch.setattr(ray_scan, "route_ray_messages_to_log", lambda: None)
    monkeypatch.setattr(ray_scan, "check_reachable", lambda address: None)
    folder = dirty_folder(tmp_path / "in")
    local = api.scan(folder, model_dir)
    result = api.scan(folder, model_dir, engine="ray", ray_address="10.0.0.1:6379", ray_workers=3)
    assert fake.inits[0]["address"] == "10.0.0.1:6379" and len(fake.devices) == 3
    assert [(r.path, r.status) for r in result.records] == [(r.path, r.status) for r in local.records]
    with pytest.raises(api.ApiError, match="unknown engine"):
        api.scan(folder, model_dir, engine="spark")
