"""The service's Flask-free core: `core.handle(service, request, control)` outside any Flask app
or request context, on the shared CPU engine."""
from __future__ import annotations

import numpy as np
import pytest

from fastfit_engine.errors import DeadlineExceeded
from fastfit_service.admission import RequestControl, Service
from fastfit_service.config import default_config
from fastfit_service.core import handle
from fastfit_service.prompt import check_prompt


@pytest.fixture()
def service(engine):
    svc = Service(config=default_config({}))
    svc.set_engine(engine)
    return svc


def _request(sample_files, **values):
    uploads = {name: sample_files[name].read_bytes() for name in ("person", "lower", "upper")}
    return check_prompt(uploads, values)


def test_handle_runs_a_try_on_without_flask(service, engine, sample_files):
    req = _request(sample_files, steps="1", seed="7", guidance_scale="1")
    assert list(req.garments) == ["upper", "lower"]  # reference order, whatever the body's order
    outcome = handle(service, req, RequestControl(service, None, lambda: False), "core-test")
    direct = engine.process(sample_files["person"], {"upper": sample_files["upper"], "lower": sample_files["lower"]},
                            steps=1, seed=7, guidance_scale=1.0)
    assert outcome.seed == 7 and outcome.peak_vram_mb is None and outcome.synthetic_weights == engine.synthetic_weights
    assert np.array_equal(np.asarray(outcome.image), np.asarray(direct.image))
    assert not service.gpu_lock.locked() and service.gpu_lock is engine.gpu_lock  # one lock, the engine's


def test_handle_preview_and_a_passed_deadline(service, sample_files):
    prep = handle(service, _request(sample_files, preview="mask", seed="3"), RequestControl(service, None, lambda: False), "p")
    assert prep.seed == 3 and prep.image.mode == "L" and list(prep.timings)[-1] == "total"
    expired = RequestControl(service, 1e-9, lambda: False)
    with pytest.raises(DeadlineExceeded):
        handle(service, _request(sample_files, steps="1"), expired, "e")
    assert service.metrics.expired._value.get() == 1 and not service.gpu_lock.locked()
