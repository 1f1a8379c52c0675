# FastFit try-on service on a CUDA GPU.
#   docker build -t fastfit .
#   docker run --gpus all -p 8000:8000 -v "$PWD/Models:/app/Models" fastfit
FROM nvidia/cuda:12.4.1-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-pip libglib2.0-0 libgomp1 \
    && rm -rf /var/lib/apt/lists/*

RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /app
COPY requirements.txt .
RUN pip install --upgrade pip && pip install -r requirements.txt

COPY fastfit_engine/ fastfit_engine/
COPY parse_utils/ parse_utils/
COPY fastfit_service/ fastfit_service/
COPY inference.py server.py gunicorn.conf.py ./

RUN useradd --create-home --uid 1000 app && mkdir -p /app/Models && chown app:app /app/Models
USER app

ENV FASTFIT_MODELS_DIR=/app/Models \
    HF_HOME=/app/Models/.hf-cache \
    GUNICORN_BIND=0.0.0.0:8000
VOLUME ["/app/Models"]
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import urllib.request, sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status == 200 else 1)"

CMD ["gunicorn", "-c", "gunicorn.conf.py", "server:app"]
