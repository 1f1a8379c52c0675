#!/usr/bin/env python
"""Virtual try-on from the command line.

    python inference.py --person examples/person.jpg --upper examples/upper.png --output out.png

Exit codes: 0 success, 2 usage or invalid input, 1 processing failure. Errors are one line on
stderr, naming the flag at fault. Models are taken from ./Models (or --models-dir /
$FASTFIT_MODELS_DIR) and downloaded from the Hugging Face Hub on first use; FASTFIT_DEVICE,
FASTFIT_DWPOSE_DEVICE and FASTFIT_RESOLUTION are read as the service reads them
(fastfit_service.config); --resolution overrides FASTFIT_RESOLUTION.

Progress bars (tqdm: the preparation stages, then one tick per denoising step, with time left) go
to stderr when it is a terminal, or always with --progress; stdout carries only the result lines.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from fastfit_engine.errors import TryOnError, exit_code
from fastfit_engine.request.output import encode_image, format_for_path
from fastfit_engine.request.schema import (
    GARMENT_FIELDS,
    GARMENT_SLOTS,
    MASK_DESCRIPTION,
    MASK_FIELD,
    NUMBER_FIELDS,
    NUMBER_FIELDS_BY_NAME,
    PERSON_FIELD,
    QUALITY,
    TryOnParams,
    check_images,
    check_mask,
    cli_flag,
    parse_numbers,
    parse_output_options,
)

if TYPE_CHECKING:
    from fastfit_service.config import EngineSettings

EXIT_OK, EXIT_FAILURE = 0, 1  # 2: a refused input, see errors.exit_code


class UsageError(TryOnError):
    """Bad command line (argparse's complaints, missing files, the output path): exit code 2."""


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
    p.add_argument(cli_flag(MASK_FIELD), dest=MASK_FIELD, default=None, metavar="IMAGE", help=MASK_DESCRIPTION)
    for f in NUMBER_FIELDS:
        p.add_argument(f.cli_flag, dest=f.name, default=None, metavar="N",
                       help=f"{f.help} ({f.minimum}..{f.maximum}, default {f.default_text})")
    p.add_argument("--resolution", default=None, metavar="WxH",
                   help="working size, multiples of 64 (default: $FASTFIT_RESOLUTION, else 768x1024, the size "
                        "the models were trained at, on a GPU and 192x256 on a CPU)")
    p.add_argument(QUALITY.cli_flag, dest=QUALITY.name, default=None, metavar="N",
                   help=f"{QUALITY.help} ({QUALITY.minimum}..{QUALITY.maximum}, default {QUALITY.default_text})")
    p.add_argument("--save-mask", action="store_true",
                   help="also write the cloth-agnostic mask beside the output, as <output>_mask.png")
    p.add_argument("--models-dir", default=None,
                   help="models root (default: $FASTFIT_MODELS_DIR or ./Models; downloaded if missing)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars on stderr (default: only when stderr is a terminal)")
    return p


# the engine's timed stages before diffusion (a person-cache hit skips densepose, schp, pose_wait)
PREPARATION_STAGES = ("garments", "densepose", "schp", "pose_wait", "mask")


class Progress:
    """tqdm bars on stderr: the preparation stages, then the denoising steps (with time left).

    `enabled=None` shows them only when the stream is a terminal (tqdm's own rule). `start()` opens
    the first bar; the object is then the engine's `progress(step, total)` callback and its `stage`
    method the `stage(name)` one; `close()` ends any open bar.
    """

    def __init__(self, steps: int, enabled: bool | None = None, stream: IO[str] | None = None):
        self.steps = steps
        self.stream = sys.stderr if stream is None else stream
        self.disable = None if enabled is None else not enabled
        self._bar: Any = None

    def _open(self, total: int, desc: str, unit: str) -> None:
        from tqdm import tqdm

        self.close()
        self._bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream, disable=self.disable,
                         dynamic_ncols=True, mininterval=0.5)

    def start(self) -> None:
        self._open(len(PREPARATION_STAGES), "preparing", "stage")

    def stage(self, name: str) -> None:
        """A stage has finished; after the last preparation stage the denoising bar starts."""
        if name not in PREPARATION_STAGES:
            return
        if self._bar is None:
            self.start()
        self._bar.postfix = name  # shown after the counts at the next refresh
        last = name == PREPARATION_STAGES[-1]
        self._bar.update(self._bar.total - self._bar.n if last else 1)
        if last:
            self._open(self.steps, "denoising", "step")

    def __call__(self, step: int, total: int) -> None:
        if self._bar is None or self._bar.total != total:
            self._open(total, "denoising", "step")
        self._bar.update(1)
        if step + 1 >= total:
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def engine_settings(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> EngineSettings:
    """The service's settings from the environment, with the command line's overrides applied and the
    working size checked (a bad one is a usage error naming --resolution or FASTFIT_RESOLUTION)."""
    from fastfit_engine.runtime.engine import parse_resolution
    from fastfit_service.config import EngineSettings

    settings = EngineSettings.from_env(os.environ if environ is None else environ)
    if args.models_dir is not None:
        settings = dataclasses.replace(settings, models_dir=args.models_dir)
    source = "FASTFIT_RESOLUTION"
    if args.resolution is not None:
        settings, source = dataclasses.replace(settings, resolution=args.resolution), "--resolution"
    if settings.resolution is None:  # the engine's default for its device (smaller on a CPU)
        return settings
    try:
        w, h = parse_resolution(settings.resolution)
    except ValueError:
        raise UsageError(f"{source} must be WIDTHxHEIGHT in positive multiples of 64, e.g. 384x512, "
                         f"got {settings.resolution!r}") from None
    return dataclasses.replace(settings, resolution=f"{w}x{h}")


def _device_type(device: str | None) -> str:
    """The engine's device type for a FASTFIT_DEVICE value (None: CUDA when there is a GPU)."""
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device).type


def _validate(args: argparse.Namespace) -> tuple[dict[str, str], TryOnParams]:
    """Apply the schema to the command line; returns (garment paths by slot in reference order,
    parameters). The output format (from the file name) and quality are checked into `args` too."""
    given = {g: getattr(args, g) for g in GARMENT_FIELDS if getattr(args, g) is not None}
    garments = {g: given[g] for g in check_images([PERSON_FIELD, *given])}
    params = parse_numbers({name: getattr(args, name) for name in NUMBER_FIELDS_BY_NAME})
    check_mask(args.mask is not None, params)
    args.quality = parse_output_options({QUALITY.name: args.quality})[QUALITY.name]
    images = [(PERSON_FIELD, args.person)] + list(garments.items()) + ([(MASK_FIELD, args.mask)] if args.mask else [])
    for name, path in images:
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
        settings = engine_settings(args)
        from fastfit_engine.request.images import DEFAULT_MAX_PIXELS
        from fastfit_engine.request.tryon import decode_request, working_size

        # decoded once, before the models load (a bad file is refused at once), exactly as the
        # service decodes (reduced decoding of large photos), for the working size the engine
        # will have; the engine takes the request as it is
        request = decode_request(args.person, garments, params, max_pixels=DEFAULT_MAX_PIXELS, mask=args.mask,
                                 working_size=working_size(settings.resolution, _device_type(settings.device)))
    except TryOnError as exc:
        print(f"error: {exc.describe(cli_flag(exc.field))}", file=sys.stderr)
        return exit_code(exc.status)

    progress = Progress(request.params.steps, args.progress)
    try:
        from tqdm.contrib.logging import logging_redirect_tqdm

        from fastfit_engine.runtime.engine import FastFitEngine

        with logging_redirect_tqdm():  # log lines (the CPU estimate) above the bars, not through them
            print("loading models ...", file=sys.stderr, flush=True)
            engine = FastFitEngine.from_models_dir(**settings.engine_kwargs())
            progress.start()
            try:
                result = engine.run(request, progress=progress, stage=progress.stage)
            finally:
                progress.close()
        out = Path(args.output)
        out.write_bytes(encode_image(result.image, args.output_format, args.quality))
        result.output_path = out
        mask_path = out.with_name(out.stem + "_mask.png") if args.save_mask else None
        if mask_path is not None:
            mask_path.write_bytes(encode_image(result.mask, "png"))
    except TryOnError as exc:  # refused input (2, e.g. the pixel budget) or a failed try-on (1, e.g. NaN output)
        print(f"error: {exc.describe(cli_flag(exc.field))}", file=sys.stderr)
        return exit_code(exc.status)
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
    # random weights from fastfit_engine.synthetic: the image is noise (the WARNING on stderr says more)
    print(f"synthetic weights: {'yes' if engine.synthetic_weights else 'no'}")
    return EXIT_OK


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    sys.exit(run())


if __name__ == "__main__":
    main()
