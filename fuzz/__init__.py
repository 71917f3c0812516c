"""srsd's atheris fuzz targets (see fuzz/README.md); a package so tests and run.py import them."""
