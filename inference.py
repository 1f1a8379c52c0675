#!/usr/bin/env python
"""Virtual try-on from the command line.

    python inference.py --person examples/person.jpg --upper examples/upper.png --output out.png

Exit codes: 0 success, 2 usage or invalid input, 1 processing failure. Errors are one line on
stderr, naming the flag at fault. Models are taken from ./Models (or --models-dir /
$FASTFIT_MODELS_DIR) and downloaded from the Hugging Face Hub on first use; FASTFIT_DEVICE,
FASTFIT_DWPOSE_DEVICE and FASTFIT_RESOLUTION are read as the service reads them
(fastfit_service.config).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from fastfit_engine.errors import TryOnError
from fastfit_engine.output import encode_image, format_for_path
from fastfit_engine.schema import (
    GARMENT_FIELDS,
    GARMENT_SLOTS,
    NUMBER_FIELDS,
    NUMBER_FIELDS_BY_NAME,
    PERSON_FIELD,
    QUALITY,
    TryOnParams,
    check_images,
    cli_flag,
    parse_numbers,
)

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class UsageError(TryOnError):
    """Bad command line (argparse's complaints, missing files, the output path): exit code 2."""

    code = "usage"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse would print the whole usage block
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="inference.py", description="FastFit virtual try-on: dress a person in given garments.")
    p.add_argument(cli_flag(PERSON_FIELD), dest=PERSON_FIELD, required=True,
                   help="photo of the person (centre-cropped to 3:4)")
    p.add_argument("--output", default="output.png",
                   help="where to write the image; the extension picks the format: .png, .jpg/.jpeg, .webp "
                        "(default: output.png)")
    for s in GARMENT_SLOTS:
        p.add_argument(s.cli_flag, dest=s.name, default=None, metavar="IMAGE", help=s.description)
    for f in NUMBER_FIELDS:
        p.add_argument(f.cli_flag, dest=f.name, default=None, metavar="N",
                       help=f"{f.help} ({f.minimum}..{f.maximum}, default {f.default_text})")
    p.add_argument(QUALITY.cli_flag, dest=QUALITY.name, default=None, metavar="N",
                   help=f"{QUALITY.help} ({QUALITY.minimum}..{QUALITY.maximum}, default {QUALITY.default_text})")
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


def _validate(args: argparse.Namespace) -> tuple[dict[str, str], TryOnParams]:
    """Apply the schema to the command line; returns (garment paths by slot, parameters). The
    output format (from the file name) and quality are checked into `args` too."""
    garments = {g: getattr(args, g) for g in GARMENT_FIELDS if getattr(args, g) is not None}
    check_images([PERSON_FIELD, *garments])
    params = parse_numbers({name: getattr(args, name) for name in NUMBER_FIELDS_BY_NAME})
    args.quality = QUALITY.parse(args.quality) if args.quality is not None else int(QUALITY.default)
    for name, path in [(PERSON_FIELD, args.person)] + list(garments.items()):
        if not Path(path).is_file():
            raise UsageError(f"{cli_flag(name)}: file not found: {path}")
    if Path(args.output).is_dir():
        raise UsageError(f"--output is a folder, give a file name: {args.output}")
    out_dir = Path(args.output).resolve().parent
    if not out_dir.is_dir():
        raise UsageError(f"--output: folder does not exist: {out_dir}")
    try:
        args.output_format = format_for_path(args.output)
    except ValueError as exc:
        raise UsageError(f"--output: {exc}") from None
    return garments, params


def run(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        garments, params = _validate(args)
        from fastfit_engine.images import load_image

        person = load_image(args.person, name="person")
        images = {g: load_image(p, name=g) for g, p in garments.items()}
    except TryOnError as exc:
        print(f"error: {exc.describe(cli_flag(exc.field))}", file=sys.stderr)
        return EXIT_USAGE

    try:
        from fastfit_engine.engine import FastFitEngine
        from fastfit_service.config import EngineSettings

        settings = EngineSettings.from_env()
        if args.models_dir is not None:
            settings = dataclasses.replace(settings, models_dir=args.models_dir)
        print("loading models ...", file=sys.stderr, flush=True)
        engine = FastFitEngine(**settings.engine_kwargs())
        result = engine.process(person, images, params, progress=_Progress())
        out = Path(args.output)
        out.write_bytes(encode_image(result.image, args.output_format, args.quality))
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
