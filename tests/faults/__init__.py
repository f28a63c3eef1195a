"""Fault tests with real processes: private redis-servers, `celery worker` subprocesses, SIGKILLs.

    .venv/bin/pytest -q tests/faults -x      # the fast subset (part of `make test`)
    .venv/bin/pytest -q -m soak tests/faults  # the soak (`make soak`); POLARIS_SOAK_INSTANCES,
                                              # POLARIS_SOAK_RATE, POLARIS_SOAK_SEED tune it
"""
