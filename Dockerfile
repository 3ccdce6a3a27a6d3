# Image for the loader and the Celery workers (docker-compose.yml).
FROM python:3.12-slim
WORKDIR /app
COPY pyproject.toml README.md celeryconfig.py ./
COPY vectorstore ./vectorstore
COPY tasks ./tasks
RUN pip install --no-cache-dir . && useradd --create-home worker
USER worker
CMD ["celery", "-A", "tasks", "worker", "--autoscale=8,2", "--loglevel=INFO"]
