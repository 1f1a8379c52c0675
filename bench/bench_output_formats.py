"""Size and encoding time of one result as PNG, JPEG and WebP (the service's `output_format`).

    python -m bench.bench_output_formats [IMAGE ...] [--size 768x1024] [--quality 90] [--quick]

Each image (default: the example person) is centre-cropped to 3:4 and resized to the working
size first, as a result would be. Prints JSON: bytes and milliseconds per image and format.
`--quick` uses 192x256 (the tests' check that the script runs).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from PIL import Image

from fastfit_engine.runtime.engine import parse_resolution
from fastfit_engine.request.images import prepare_person
from fastfit_engine.request.output import OUTPUT_FORMATS, encode_image

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "person.jpg"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("images", nargs="*", default=[str(EXAMPLE)])
    p.add_argument("--size", default="768x1024")
    p.add_argument("--quality", type=int, default=90)
    p.add_argument("--quick", action="store_true", help="192x256")
    args = p.parse_args()
    w, h = parse_resolution("192x256" if args.quick else args.size)
    report: dict = {"size": f"{w}x{h}", "quality": args.quality, "images": {}}
    for path in args.images:
        img = prepare_person(Image.open(path).convert("RGB"), (w, h))
        row = {}
        for fmt in OUTPUT_FORMATS:
            t0 = time.perf_counter()
            data = encode_image(img, fmt, args.quality)
            row[fmt] = {"bytes": len(data), "ms": round((time.perf_counter() - t0) * 1000.0, 1)}
        report["images"][str(path)] = row
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
