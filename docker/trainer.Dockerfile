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

# The pipeline user: numeric uid 10001 (steps/gcp_settings.py PIPELINE_UID), so the
# "restricted" Pod Security level can verify runAsNonRoot. It owns /app, where ZenML
# unpacks the pipeline code at run time.
RUN groupadd --gid 10001 zenml \
    && useradd --uid 10001 --gid 10001 --create-home zenml \
    && chown 10001:10001 /app
ENV PYTHONUNBUFFERED=1 \
    ZENML_LOGGING_VERBOSITY=INFO
# No USER here, on purpose: this is ZenML's parent image. ZenML builds the pipeline
# image FROM it with `COPY . .` and `RUN chmod -R a+rw .`, which only root may run on
# root-owned files; configs/gcp.yaml (settings.docker.user: "10001") then makes ZenML
# chown /app and end its Dockerfile with `USER 10001`. The pods' security context
# (runAsNonRoot, runAsUser 10001) enforces the same user in the cluster.
