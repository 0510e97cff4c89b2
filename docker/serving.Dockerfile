# TorchServe on CPU for the cats-vs-dogs model. Build from the repo root:
#   docker build -f docker/serving.Dockerfile -t <registry>/catsdogs-serving:<tag> .
# Holds only what serving needs: torch/torchvision CPU wheels, TorchServe, Pillow,
# the handler code and serve_config/. No model inside: the .mar is fetched from
# GCS by version at start (docker/fetch_model.py, run as the init container).
FROM python:3.11-slim-bookworm

# TorchServe's frontend is Java (17 or newer).
RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
    && rm -rf /var/lib/apt/lists/*

# Keep these pins equal to requirements.txt (CPU wheels from the PyTorch index).
RUN pip install --no-cache-dir \
        --index-url https://download.pytorch.org/whl/cpu \
        torch==2.14.1 torchvision==0.29.1 \
    && pip install --no-cache-dir \
        torchserve==0.12.0 pillow==13.0.0 pyyaml

RUN useradd --uid 10001 --create-home --home-dir /home/model-server model-server
WORKDIR /opt/catsdogs
COPY handlers/ handlers/
COPY serve_config/ serve_config/
COPY docker/fetch_model.py docker/serving_entrypoint.py ./

ENV APP_DIR=/opt/catsdogs \
    MODEL_DIR=/models \
    TS_RUN_DIR=/tmp/torchserve \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Numeric user, so Kubernetes can verify runAsNonRoot.
USER 10001
EXPOSE 8080 8081 8082
# Kubernetes uses its own probes (httpGet /ping); this is for plain `docker run`. /ping
# needs no token when CATSDOGS_API_KEY_FILE is set (TorchServe's tokens are then off);
# otherwise the check sends the inference token from TorchServe's key_file.json.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s \
    CMD ["python", "/opt/catsdogs/serving_entrypoint.py", "healthcheck"]
# The entrypoint stays PID 1: it supervises TorchServe and forwards SIGTERM to its Java
# frontend, so `docker stop` and pod deletion shut it down gracefully.
ENTRYPOINT ["python", "/opt/catsdogs/serving_entrypoint.py"]
