"""The benchmark suite behind `make bench` (`python -m bench`); see bench/__main__.py."""

import warnings

from polaris_celery.errors import GraphWarning

# The benchmarks' workflows are made up (inputs and outputs nobody lists): no warnings for them.
warnings.filterwarnings("ignore", category=GraphWarning)
