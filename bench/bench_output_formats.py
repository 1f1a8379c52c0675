"""Size and encoding time of one result as PNG, JPEG and WebP (the service's `output_format`).

    python -m bench.bench_output_formats IMAGE [IMAGE ...] [--size 768x1024] [--quality 90]

Each image is centre-cropped to 3:4 and resized to the working size first, as a result would be.
"""
from __future__ import annotations

import argparse
import time

from PIL import Image

from fastfit_engine.engine import parse_resolution
from fastfit_engine.images import prepare_person
from fastfit_engine.output import OUTPUT_FORMATS, encode_image


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("images", nargs="+")
    p.add_argument("--size", default="768x1024")
    p.add_argument("--quality", type=int, default=90)
    args = p.parse_args()
    size = parse_resolution(args.size)
    print(f"| image | {' | '.join(OUTPUT_FORMATS)} |")
    print("|---|" + "---|" * len(OUTPUT_FORMATS))
    for path in args.images:
        img = prepare_person(Image.open(path).convert("RGB"), size)
        cells = []
        for fmt in OUTPUT_FORMATS:
            t0 = time.perf_counter()
            data = encode_image(img, fmt, args.quality)
            ms = (time.perf_counter() - t0) * 1000.0
            cells.append(f"{len(data) / 1024:.0f} KiB ({ms:.0f} ms)")
        print(f"| {path} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
