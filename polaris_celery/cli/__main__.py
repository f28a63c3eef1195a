"""`python -m polaris_celery.cli`: the `polaris` command without its console script."""

from . import main

main()
