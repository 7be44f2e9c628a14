# The image every wkr-celery service in docker-compose.yml runs. It holds, under /app:
#   wkr_celery/  the package, installed with its console scripts (wkr-serving-start,
#                wkr-serving-http, wkr-serving-check, celery…)
#   workers/     ready-to-serve workers: workers.linear.Worker, workers.echo.Worker
#   examples/    the README's server, client and decentralize examples; worker classes are
#                imported from the working directory, so run them there:
#                docker run --rm -w /app/examples wkr-celery:latest wkr-serving-start server.Worker
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY wkr_celery ./wkr_celery
RUN pip install .

# Worker classes are imported from the working directory: workers.linear.Worker is here.
COPY workers ./workers
COPY examples ./examples
RUN useradd --create-home --uid 10001 wkr
USER wkr

EXPOSE 8900 5555
CMD ["wkr-serving-start", "workers.linear.Worker"]
