"""The service's core, without Flask: `handle(service, request, control)` runs one checked request.

A body reader (multipart or JSON) turns the HTTP request into a `PromptRequest` (fields checked
by the schema, images still encoded); the route hands it here with the request's `RequestControl`
(deadline and client probe) and turns the `Outcome` into an answer. Here: admission (a queue
slot before any decoding), decoding one request at a time into a `TryOnRequest`, a try-on's
preparation while another request denoises (OVERLAP), the GPU lock (the engine's), the preview
or the try-on, and which failures the metrics and the log count.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from PIL import Image

from fastfit_engine.errors import ClientGone, DeadlineExceeded, NonFiniteOutputError, TryOnError

from .admission import RequestControl, Service
from .prompt import PromptRequest
from .responses import ProcessingFailed

log = logging.getLogger("fastfit.server")


@dataclass(frozen=True)
class Outcome:
    """What the answer is made of."""

    image: Image.Image
    seed: int
    timings: dict[str, float]
    peak_vram_mb: float | None  # None for previews and off CUDA
    synthetic_weights: bool  # the engine runs the random test weights


def handle(service: Service, request: PromptRequest, control: RequestControl, request_id: str) -> Outcome:
    """Admit, decode, run and account for one request (its progress on the service's board under
    ``request_id``); every failure leaves as a `TryOnError`."""
    engine = service.require_engine()
    preview = request.options["preview"]
    try:
        with service.admit(), service.progress.track(request_id) as tracker:
            control.check()
            with service.decode_lock:  # decoded one request at a time, only once admitted
                if preview != "none":  # the stages before diffusion only: the person (and a given mask)
                    tryon = engine.decode(request.person, {}, request.params, options=request.options,
                                          mask=request.mask)
                else:
                    tryon = engine.decode(request.person, request.garments, request.params, options=request.options,
                                          max_total_pixels=service.config["MAX_REQUEST_PIXELS"], mask=request.mask)
            if preview != "none":
                prep = service.run_on_gpu(lambda: engine.preview(tryon, lock_held=True), control)
                image = prep.mask if preview == "mask" else prep.masked_person
                outcome = Outcome(image, prep.seed, prep.timings, None, _synthetic(engine))
            else:
                def progress(step: int, total: int) -> None:
                    tracker.step(step, total)
                    control.step(step, total)

                result = service.run_on_gpu(
                    lambda prepared: engine.run(tryon, progress=progress, stage=tracker.stage, check=control.check,
                                                lock_held=True, prepared=prepared),
                    control,
                    prepare=lambda: engine.prepare(tryon, check=control.check),
                )
                outcome = Outcome(result.image, result.seed, result.timings, result.peak_vram_mb, _synthetic(engine))
    except ClientGone:
        service.metrics.cancelled.inc()
        log.info("request cancelled: the client closed the connection")
        raise
    except DeadlineExceeded:
        service.metrics.expired.inc()
        log.warning("request expired after %.0f s", service.config["REQUEST_TIMEOUT"])
        raise
    except NonFiniteOutputError:
        service.metrics.non_finite.inc()
        log.error("the model produced a non-finite output (corrupt weights or a numerical fault)")
        raise
    except TryOnError:
        raise
    except Exception:
        log.exception("processing failed")
        raise ProcessingFailed("the try-on could not be processed") from None
    return outcome


def _synthetic(engine: object) -> bool:
    return bool(getattr(engine, "synthetic_weights", False))  # random weights from fastfit_engine.synthetic
