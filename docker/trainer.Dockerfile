# Parent image for the ZenML pipeline pods on GKE (configs/gcp.yaml: settings.docker).
# ZenML builds this with Cloud Build, then adds the repository code on top and
# pushes to Artifact Registry. CPU torch only: training runs on CPU node pools.
FROM python:3.11-slim-bookworm

RUN apt-get update \
    && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.txt .
# The PyTorch CPU index first, so torch and torchvision resolve to CPU wheels.
RUN pip install --no-cache-dir \
        --extra-index-url https://download.pytorch.org/whl/cpu \
        -r requirements.txt

RUN useradd --uid 10001 --create-home zenml
ENV PYTHONUNBUFFERED=1 \
    ZENML_LOGGING_VERBOSITY=INFO
USER 10001
