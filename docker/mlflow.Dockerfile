# The MLflow tracking server on GKE: PostgreSQL backend, artifacts in GCS,
# basic-auth on (the ZenML stack authenticates with the catsdogs-mlflow secret).
FROM python:3.11-slim-bookworm
# Keep mlflow equal to requirements.txt. The [auth] extra (Flask-WTF) is what
# `--app-name=basic-auth` (k8s/base/mlflow.yaml) needs; without it the server exits.
RUN pip install --no-cache-dir "mlflow[auth]==3.17.2" psycopg2-binary google-cloud-storage \
    && useradd --uid 10001 --create-home mlflow
USER 10001
EXPOSE 5000
ENTRYPOINT ["mlflow", "server"]
