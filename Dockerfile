# The image 'batchscore schedule --print kubernetes' names:
#   docker build -t batchscore:0.1.0 .
# Runs as a non-root user (uid 10001, as the CronJob's securityContext expects);
# the config is mounted at /config and the workspace at /workspace.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MLFLOW_DISABLE_TELEMETRY=true

WORKDIR /opt/batchscore
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir "./[aws]" \
    && useradd --uid 10001 --create-home --shell /usr/sbin/nologin batchscore \
    && mkdir -p /workspace \
    && chown batchscore /workspace

USER 10001
WORKDIR /workspace
ENTRYPOINT ["batchscore"]
CMD ["--help"]
