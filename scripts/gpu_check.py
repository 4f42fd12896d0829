"""What a machine with a GPU runs in under 10 minutes to measure imgclean's GPU path.

1. A photo-sized folder is generated (224-px JPEGs in 10 classes; --tiny: 32 px, 60 images).
2. `imgclean fit` trains a timm model on it (mixed precision on CUDA: bf16 where supported,
   else fp16 with a gradient scaler; nn/runtime.py), timed, with the images per second.
3. With two or more GPUs: the same fit under `torchrun --standalone --nproc_per_node=2`.
4. `imgclean scan --no-cache` of the folder with the model: images per second.

The figures go between the markers of a section of docs/performance.md (replaced on every run;
the rest of the page is left alone) when the run used a GPU, or into the file --docs names.
No GPU here: `--device cpu --tiny` runs the same steps small, as a dry run (tests/test_gpu_check.py).

    python scripts/gpu_check.py                 # on the GPU machine
    python scripts/gpu_check.py --device cpu --tiny --docs /tmp/perf.md
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- gpu_check:start -->", "<!-- gpu_check:end -->"


def make_folder(root: Path, n: int, size: int, classes: int = 10) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        c = i % classes
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
        cells = rng.random((max(2, size // 16), max(2, size // 16), 3)) * 120 + c * 12
        img = np.kron(cells, np.ones((16, 16, 1)))[:size, :size]
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / f"c{c}" / f"{i:05d}.jpg", quality=90)
    return root


def run(cmd: list[str], timeout: int) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode not in (0, 1):  # scan exits 1 when it flags files
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return time.perf_counter() - started, proc.stdout


def write_section(path: Path, text: str) -> None:
    page = path.read_text() if path.exists() else ""
    block = f"{START}\n{text.rstrip()}\n{END}"
    if START in page and END in page:
        page = page[: page.index(START)] + block + page[page.index(END) + len(END):]
    else:
        page = page.rstrip() + ("\n\n" if page else "") + "## GPU check (scripts/gpu_check.py)\n\n" + block + "\n"
    path.write_text(page)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="32-px images, 60 of them: a dry run for CPUs")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/imgclean-gpu-check"))
    parser.add_argument("--docs", type=Path, default=None, help="file for the figures [default: docs/performance.md on a GPU, none on a CPU]")
    args = parser.parse_args()
    import torch

    gpus = torch.cuda.device_count() if args.device.startswith("cuda") else 0
    if args.device.startswith("cuda") and not gpus:
        raise SystemExit("no CUDA GPU here; for a dry run use --device cpu --tiny")
    size, n = (32, 60) if args.tiny else (224, args.images)
    folder = make_folder(args.work / f"photos{size}", n, size)
    py = [sys.executable]
    common = ["fit", str(folder), "--arch", args.arch, "--input-size", str(size), "--epochs", str(args.epochs),
              "--min-steps", "0", "--batch-size", "64" if not args.tiny else "16", "--device", args.device.split(":")[0],
              "--force", "--json", "-q"]
    figures: dict = {"device": torch.cuda.get_device_name(0) if gpus else "cpu", "gpus": gpus, "arch": args.arch,
                     "images": n, "size": size, "epochs": args.epochs,
                     "amp": (("bf16" if torch.cuda.is_bf16_supported() else "fp16") if gpus else "none (CPU)")}
    seconds, out = run([*py, "-m", "imgclean", *common, "-o", str(args.work / "model")], 600)
    summary = json.loads(out)
    figures["fit_seconds"] = round(seconds, 1)
    figures["fit_images_per_s"] = round(n * args.epochs / seconds, 1)
    figures["val_accuracy"] = summary["metrics"].get("val_accuracy")
    if gpus >= 2:
        seconds, _ = run([*py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "imgclean",
                          *common, "-o", str(args.work / "model2")], 600)
        figures["torchrun2_fit_seconds"] = round(seconds, 1)
        figures["torchrun2_speedup"] = round(figures["fit_seconds"] / seconds, 2)
    seconds, _ = run([*py, "-m", "imgclean", "scan", str(folder), "-m", str(args.work / "model"), "--device",
                      args.device.split(":")[0], "--json", "--no-cache"], 600)
    figures["scan_seconds"] = round(seconds, 1)
    figures["scan_images_per_s"] = round(n / seconds, 1)
    print(json.dumps(figures, indent=2))
    docs = args.docs or (ROOT / "docs" / "performance.md" if gpus else None)
    if docs is not None:
        rows = "\n".join(f"| {k} | {v} |" for k, v in figures.items())
        write_section(docs, f"Measured by `python scripts/gpu_check.py` on {datetime.date.today()} "
                            f"(fit and scan times include process start-up):\n\n| figure | value |\n|---|---|\n{rows}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
