"""Celery tasks: worker-side vectorization of tokenized documents."""
