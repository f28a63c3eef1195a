"""The test suite. Its scenarios are deliberately minimal graphs that do not list their inputs,
so registration's GraphWarnings are silenced here, in every process that imports the tests
(pytest, the simulator's worker processes, `python -m tests.sim`, the test apps of Celery
workers); tests/test_api.py checks the warnings themselves with pytest.warns."""

import warnings

from polaris_celery.errors import GraphWarning

warnings.filterwarnings("ignore", category=GraphWarning)
