"""Executors: in-process (`Executor`) and distributed (`CeleryExecutor`, imported lazily so the
core never imports celery)."""
