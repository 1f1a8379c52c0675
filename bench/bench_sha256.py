"""Time the start-up weight check: SHA-256 of files shaped like the real model set, as loading does it.

Writes random files with the real sizes (UNet 3.44 GB fp32, VAE 0.33 GB, DensePose 0.26 GB, two
SCHP 0.27 GB, DWPose 0.22 + 0.13 GB) into a scratch folder (or `--scale` of them), then hashes
them with ``fastfit_engine.weights.integrity.hash_files`` (one thread per file, largest first) after a
first read has put them in the page cache, and one file with one thread for the per-core rate.

    python -m bench.bench_sha256 --dir /tmp/sha-bench              # the full 4.9 GB set
    python -m bench.bench_sha256 --dir /tmp/sha-bench --scale 0.1  # a tenth of it
    python -m bench.bench_sha256 --quick                           # 8 MB files in a temporary folder
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from fastfit_engine.weights.integrity import hash_files, sha256_file

SIZES_MB = {"unet": 3438, "vae": 335, "densepose": 256, "schp-lip": 267, "schp-atr": 267, "yolox": 217, "dwpose": 134}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=None, help="scratch folder (its files are deleted afterwards)")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--quick", action="store_true", help="one 8 MB block per file in a temporary folder (script check)")
    args = ap.parse_args()
    if args.quick:
        args.scale = 0.0
    if args.dir is None:
        if not args.quick:
            ap.error("--dir is required (a scratch folder on the disk that holds the models)")
        args.dir = Path(tempfile.mkdtemp(prefix="fastfit-sha-"))
    args.dir.mkdir(parents=True, exist_ok=True)
    files = []
    block = os.urandom(8 << 20)
    for name, mb in SIZES_MB.items():
        path = args.dir / f"{name}.bin"
        with open(path, "wb") as f:
            for _ in range(max(1, int(mb * args.scale / 8))):
                f.write(block)
        files.append(path)
    try:
        hash_files(files)  # page cache warm, as right after a download or a previous start
        total = sum(p.stat().st_size for p in files)
        t0 = time.perf_counter()
        hash_files(files)
        threaded = time.perf_counter() - t0
        t0 = time.perf_counter()
        sha256_file(files[0])
        single = time.perf_counter() - t0
        print(json.dumps({
            "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "total_gb": round(total / 1e9, 2), "all_files_s": round(threaded, 2),
            "all_files_gb_per_s": round(total / threaded / 1e9, 2),
            "one_thread_gb_per_s": round(files[0].stat().st_size / single / 1e9, 2),
        }))
    finally:
        shutil.rmtree(args.dir)


if __name__ == "__main__":
    main()
