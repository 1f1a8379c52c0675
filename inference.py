#!/usr/bin/env python
"""Virtual try-on from the command line.

    python inference.py --person examples/person.jpg --upper examples/upper.png --output out.png

Exit codes: 0 success, 2 usage or invalid input, 1 processing failure. Errors are one line on
stderr. Models are taken from ./Models (or --models-dir / $FASTFIT_MODELS_DIR) and downloaded
from the Hugging Face Hub on first use.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad command line or input: exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse would print the whole usage block
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    from fastfit_engine.schema import GARMENT_DESCRIPTIONS, GARMENT_FIELDS, NUMBER_FIELDS, QUALITY

    p = _Parser(prog="inference.py", description="FastFit virtual try-on: dress a person in given garments.")
    p.add_argument("--person", required=True, help="photo of the person (centre-cropped to 3:4)")
    p.add_argument("--output", default="output.png",
                   help="where to write the image; the extension picks the format: .png, .jpg/.jpeg, .webp "
                        "(default: output.png)")
    for g in GARMENT_FIELDS:
        p.add_argument(f"--{g}", default=None, metavar="IMAGE", help=GARMENT_DESCRIPTIONS[g])
    for f in NUMBER_FIELDS:
        default = "random" if f.default is None else f.default
        p.add_argument(f.cli_flag, dest=f.name, default=None, metavar="N",
                       help=f"{f.help} ({f.minimum}..{f.maximum}, default {default})")
    p.add_argument(QUALITY.cli_flag, dest="quality", default=None, metavar="N",
                   help=f"{QUALITY.help} ({QUALITY.minimum}..{QUALITY.maximum}, default {QUALITY.default})")
    p.add_argument("--save-mask", action="store_true",
                   help="also write the cloth-agnostic mask beside the output, as <output>_mask.png")
    p.add_argument("--models-dir", default=None,
                   help="models root (default: $FASTFIT_MODELS_DIR or ./Models; downloaded if missing)")
    return p


class _Progress:
    """A one-line progress bar over the denoising steps, on stderr."""

    def __init__(self, stream=sys.stderr, width: int = 30):
        self.stream, self.width = stream, width
        self.tty = getattr(stream, "isatty", lambda: False)()

    def __call__(self, step: int, total: int) -> None:
        done = min(step + 1, total)
        bar = "#" * (self.width * done // total)
        line = f"denoising [{bar:<{self.width}}] {done}/{total}"
        if self.tty:
            self.stream.write("\r" + line + ("\n" if done == total else ""))
        elif done == total or done == 1 or done % max(1, total // 10) == 0:
            self.stream.write(line + "\n")
        self.stream.flush()


def _validate(args: argparse.Namespace) -> tuple[dict, dict]:
    from fastfit_engine.output import format_for_path
    from fastfit_engine.schema import GARMENT_FIELDS, QUALITY, RequestError, check_garments, parse_numbers

    garments = {g: getattr(args, g) for g in GARMENT_FIELDS if getattr(args, g) is not None}
    try:
        check_garments(garments)
        numbers = parse_numbers({k: getattr(args, k) for k in ("steps", "seed", "guidance_scale")})
        numbers["quality"] = QUALITY.parse(args.quality) if args.quality is not None else QUALITY.default
    except RequestError as exc:
        flag = {"guidance_scale": "--guidance"}.get(exc.field or "", f"--{exc.field}" if exc.field else "")
        msg = exc.message
        if exc.field and msg.startswith(exc.field + " "):
            msg = flag + msg[len(exc.field):]
        raise UsageError(msg) from None
    for name, path in [("person", args.person)] + list(garments.items()):
        if not Path(path).is_file():
            raise UsageError(f"--{name}: file not found: {path}")
    if Path(args.output).is_dir():
        raise UsageError(f"--output is a folder, give a file name: {args.output}")
    try:
        numbers["output_format"] = format_for_path(args.output)
    except ValueError as exc:
        raise UsageError(f"--output: {exc}") from None
    out_dir = Path(args.output).resolve().parent
    if not out_dir.is_dir():
        raise UsageError(f"--output: folder does not exist: {out_dir}")
    return garments, numbers


def run(argv: Optional[Sequence[str]] = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        garments, numbers = _validate(args)
        from fastfit_engine.images import ImageError, load_image

        try:
            person = load_image(args.person, name="--person")
            images = {g: load_image(p, name=f"--{g}") for g, p in garments.items()}
        except ImageError as exc:
            raise UsageError(str(exc)) from None
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE

    try:
        from fastfit_engine.engine import FastFitEngine

        print("loading models ...", file=sys.stderr, flush=True)
        engine = FastFitEngine(models_dir=args.models_dir, resolution=os.environ.get("FASTFIT_RESOLUTION") or None)
        result = engine.process(
            person, images, steps=numbers["steps"], seed=numbers["seed"],
            guidance_scale=numbers["guidance_scale"], progress=_Progress(),
        )
        from fastfit_engine.output import encode_image

        out = Path(args.output)
        out.write_bytes(encode_image(result.image, numbers["output_format"], numbers["quality"]))
        result.output_path = out
        mask_path = out.with_name(out.stem + "_mask.png") if args.save_mask else None
        if mask_path is not None:
            mask_path.write_bytes(encode_image(result.mask, "png"))
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line, never a traceback
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"error: {type(exc).__name__}: {text}" if text else f"error: {type(exc).__name__}", file=sys.stderr)
        return EXIT_FAILURE

    vram = f"{result.peak_vram_mb:.0f} MB" if result.peak_vram_mb is not None else f"n/a ({engine.device.type})"
    print(f"output: {result.output_path}")
    if mask_path is not None:
        print(f"mask: {mask_path}")
    print(f"seed: {result.seed}")
    print(f"peak VRAM: {vram}")
    print("timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items()))
    return EXIT_OK


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    sys.exit(run())


if __name__ == "__main__":
    main()
