# One image for every service of docker-compose.yml: the library, the cab-ride worker app
# (`worker/`), the `polaris` CLI and Flower.
#   docker build -t polaris-celery:dev .
#   docker run --rm -e POLARIS_REDIS_URL=redis://host:6379/0 polaris-celery:dev
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, so editing the worker app does not reinstall them.
COPY pyproject.toml README.md LICENSE ./
COPY polaris_celery ./polaris_celery
RUN pip install ".[flower]"

COPY worker ./worker

# Celery warns against running workers as root; so do we.
RUN useradd --create-home --uid 10001 polaris
USER polaris
ENV PYTHONPATH=/app

CMD ["celery", "-A", "worker", "worker", "--loglevel=INFO", "-E", "--concurrency=2"]
