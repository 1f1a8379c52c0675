"""Gunicorn settings for the try-on service: `gunicorn -c gunicorn.conf.py server:app`.

One worker process owns the GPU and the models (loaded inside the worker, never in the master,
so CUDA is never initialised before the fork). A few threads let /health, /ready and /metrics
answer while a try-on runs; the app itself lets one request at a time onto the GPU.
Every setting can be overridden from the environment (see the README).

The worker class is gthread with read deadlines (fastfit_service/gunicorn_worker.py): a client
that trickles its request gets 408 after FASTFIT_CLIENT_HEADER_TIMEOUT / _BODY_TIMEOUT seconds
instead of holding a thread. In production put the buffering front in front of it
(deploy/nginx/, `python -m fastfit_service.launch`), which then binds gunicorn to loopback.
"""
import os

from fastfit_engine.settings import read

bind = read("GUNICORN_BIND") or f"127.0.0.1:{read('PORT')}"  # loopback unless told: the front (nginx) faces clients
workers = 1  # one model copy per GPU; scale out with more containers, not more workers
worker_class = "fastfit_service.gunicorn_worker.DeadlineThreadWorker"
# Threads are cheap (the app lets one request onto the GPU and QUEUE_SIZE wait); 8 leaves room for
# /health and a few slow clients while they run into their read deadline.
threads = read("GUNICORN_THREADS")
preload_app = False  # the app (and with it the engine) is created in the worker
timeout = read("GUNICORN_TIMEOUT")  # a cold first request on a slow GPU can take minutes
graceful_timeout = read("GUNICORN_GRACEFUL_TIMEOUT")  # let the running try-on finish
keepalive = read("GUNICORN_KEEPALIVE")
# No runtime control socket (gunicorn >= 25): changing the worker count or reloading would load a
# second model copy on the GPU, and several instances on one host would share its default path.
control_socket_disable = True
max_requests = 0  # never recycle the worker: reloading the models costs far more than it saves
limit_request_line = 8190
accesslog = read("GUNICORN_ACCESSLOG")
logger_class = "fastfit_service.gunicorn_worker.EscapingLogger"  # control characters in access lines escaped
# gunicorn's default access line, plus the response's X-Request-ID (fastfit_service/security.py)
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %({x-request-id}o)s'
errorlog = "-"
loglevel = read("GUNICORN_LOGLEVEL")
capture_output = True


def post_fork(server, worker):  # noqa: ARG001 - gunicorn hook signature
    """Send the app's own log lines (engine loading, failures) to the error log, in the worker, and
    let a worker whose engine cannot be loaded exit so that this master starts a new one."""
    import logging

    from fastfit_service.security import RequestIdFilter

    os.environ.setdefault("FASTFIT_EXIT_ON_LOAD_FAILURE", "1")
    logger = logging.getLogger("fastfit")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.addFilter(RequestIdFilter())  # the X-Request-ID of the request a line belongs to
        handler.setFormatter(logging.Formatter(
            "[%(asctime)s] [%(process)d] [%(levelname)s] [%(request_id)s] %(name)s: %(message)s",
            "%Y-%m-%d %H:%M:%S %z"))
        logger.addHandler(handler)
        logger.setLevel(loglevel.upper())


def post_worker_init(worker):
    """SIGTERM (graceful stop) first puts the app into draining: requests that still reach it get
    503 `draining` at once while the running try-on finishes (fastfit_service.admission)."""
    from fastfit_service.admission import drain_on_signal

    drain_on_signal(worker.wsgi)
