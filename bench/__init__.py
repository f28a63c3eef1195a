"""The benchmark suite behind `make bench` (`python -m bench`); see bench/__main__.py."""
