# FastFit try-on service: nginx (buffering front) + one gunicorn instance per GPU.
#   docker build -t fastfit .
#   docker run --gpus all -p 8000:8000 -v fastfit-models:/app/Models -v fastfit-cache:/app/cache fastfit
#
# One CUDA stack: the PyTorch wheels (pinned in constraints.txt) bring their own CUDA 13.0 runtime
# libraries, so the base is plain Debian Python rather than a CUDA image (which would add a second,
# unused CUDA). The host needs the NVIDIA driver >= 580 (CUDA 13.0) and the NVIDIA Container Toolkit.
# The install steps are those of CI (.ci/run): requirements + constraints.txt, and Debian's nginx.
FROM python:3.11-slim-bookworm

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# nginx: the front (fastfit_service/launch.py); libglib2.0-0, libgomp1: OpenCV and onnxruntime;
# gcc, g++, libc6-dev: torch.compile's toolchain (Triton builds its CUDA driver stub with a C
# compiler at first use, Inductor's CPU kernels are C++; without them the engine falls back to
# the slower eager path, see fastfit_engine/compile_fallback.py).
# Debian's security updates replace these versions, so they follow the release instead of a pin.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends nginx libglib2.0-0 libgomp1 gcc g++ libc6-dev \
    && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /app
# requirements-gpu.txt (FlashAttention-4 for Hopper and newer) is installed when the build
# context has it, exactly as listed (--no-deps: it names its whole closure, see its header);
# build with --build-arg GPU_EXTRA=0 to leave it out.
ARG GPU_EXTRA=1
COPY requirements*.txt constraints.txt ./
RUN pip install -r requirements.txt -c constraints.txt \
    && if [ "$GPU_EXTRA" = "1" ] && [ -f requirements-gpu.txt ]; then pip install --no-deps -r requirements-gpu.txt -c constraints.txt; fi

COPY fastfit_engine/ fastfit_engine/
COPY parse_utils/ parse_utils/
COPY fastfit_service/ fastfit_service/
COPY deploy/ deploy/
COPY examples/ examples/
# fastfit_client.py: deploy/loadtest.py builds its requests with it
COPY inference.py server.py gunicorn.conf.py fastfit_client.py LICENSE ./

# uid 1000 owns the two volumes: a named volume starts with this ownership, so the first model
# download and the compile cache can be written (a bind-mounted host folder keeps its own owner:
# create it first, owned by uid 1000, see the README).
RUN groupadd --gid 1000 app && useradd --create-home --uid 1000 --gid 1000 app \
    && mkdir -p /app/Models /app/cache \
    && chown app:app /app/Models /app/cache
USER 1000:1000

ENV FASTFIT_MODELS_DIR=/app/Models \
    HF_HOME=/app/Models/.hf-cache \
    FASTFIT_COMPILE_CACHE=/app/cache \
    XDG_CACHE_HOME=/app/cache \
    FASTFIT_RUN_DIR=/tmp/fastfit-front \
    PORT=8000
VOLUME ["/app/Models", "/app/cache"]
EXPOSE 8000

# Docker has one health check, so it answers "can this container serve?": every instance /ready
# (models loaded and warm). The long start period covers the first download of the models.
# Kubernetes separates the two: liveness on /health, readiness and startup on /ready (deploy/k8s).
HEALTHCHECK --interval=30s --timeout=10s --start-period=900s --retries=3 \
    CMD ["python", "-m", "fastfit_service.launch", "--check"]

# SIGTERM drains (nginx stops accepting, running requests finish): give it time, docker stop -t 90.
CMD ["python", "-m", "fastfit_service.launch"]
