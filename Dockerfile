# syntax=docker/dockerfile:1
# Build stage: install the project and its pinned dependencies into a virtualenv.
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY app ./app
COPY chains ./chains
RUN /opt/venv/bin/pip install --upgrade pip && /opt/venv/bin/pip install .
# Train once at build time: a smoke check that the models and the embeddings load offline,
# and the interaction models' cache (keyed by the corpus hash), so no replica trains at start.
RUN /opt/venv/bin/python -c "from pathlib import Path; from chains.scoring.priors import train_models; from chains.embeddings import embed; from chains.local.classifier import load_or_train; train_models(); embed(['ok']); load_or_train(Path('/opt/models'))"

# Runtime stage: only the virtualenv, run as an unprivileged user.
FROM python:3.11-slim-bookworm AS runtime
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 DATA_DIR=/var/lib/crm-ai APP_ENV=production \
    MODEL_CACHE_DIR=/opt/models
RUN useradd --system --uid 10001 --home-dir /var/lib/crm-ai --create-home crm
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/models /opt/models
USER crm
WORKDIR /var/lib/crm-ai
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2).status == 200 else 1)"]
# APP_ENV=production: set AUTH_JWT_SECRET (or AUTH_JWKS_URL with AUTH_ISSUER and
# AUTH_AUDIENCE), METRICS_TOKEN (or METRICS_PUBLIC=true) and DATA_ENCRYPTION_KEY, or the
# service refuses to start.
CMD ["uvicorn", "app.server:app", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers", "--forwarded-allow-ips", "*", \
     "--http", "app.api.http_protocol:GuardedHttpToolsProtocol", "--timeout-keep-alive", "5", \
     "--ws", "app.api.ws_protocol:LeanWebSocketsProtocol", \
     "--ws-per-message-deflate", "false", "--ws-max-size", "1048576"]
