"""The answer to a try-on (or a mask preview): the bare image, or JSON with the image in base64.

Both carry the same headers: X-Seed, Server-Timing (ms per stage), X-Peak-VRAM-MB on CUDA, and
X-FastFit-Synthetic-Weights: true when the engine runs the random test weights (the JSON answer
says the same in its `synthetic_weights` field, true or false). JSON is chosen by `response_format=json` or an Accept header that prefers application/json.
"""
from __future__ import annotations

import base64
import json

from flask import Request, Response
from PIL import Image

from fastfit_engine.request.output import OUTPUT_FORMATS, encode_image

from .responses import server_timing
from .security import SYNTHETIC_WEIGHTS_HEADER



def wants_json(request: Request, options: dict) -> bool:
    if options["response_format"] == "json":
        return True
    best = request.accept_mimetypes.best_match([OUTPUT_FORMATS[options["output_format"]].content_type, "application/json"])
    return best == "application/json"


def answer(
    request: Request,
    image: Image.Image,
    options: dict,
    seed: int,
    timings: dict[str, float],
    peak_vram_mb: float | None,
    synthetic_weights: bool = False,
) -> Response:
    fmt = OUTPUT_FORMATS[options["output_format"]]
    data = encode_image(image, fmt.name, options["quality"])
    if wants_json(request, options):
        payload = {
            "image": base64.b64encode(data).decode("ascii"),
            "content_type": fmt.content_type,
            "width": image.width,
            "height": image.height,
            "seed": seed,
            "preview": options["preview"],
            "timings_ms": {k: round(v * 1000.0, 1) for k, v in timings.items()},
            "peak_vram_mb": None if peak_vram_mb is None else round(peak_vram_mb),
            "synthetic_weights": synthetic_weights,
        }
        resp = Response(json.dumps(payload), mimetype="application/json")  # stage order kept
    else:
        resp = Response(data, mimetype=fmt.content_type)
    resp.headers["X-Seed"] = str(seed)
    if peak_vram_mb is not None:
        resp.headers["X-Peak-VRAM-MB"] = f"{peak_vram_mb:.0f}"
    resp.headers["Server-Timing"] = server_timing(timings)
    if synthetic_weights:  # random weights from fastfit_engine.synthetic: the image is noise
        resp.headers[SYNTHETIC_WEIGHTS_HEADER] = "true"
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["Vary"] = "Accept"
    return resp
