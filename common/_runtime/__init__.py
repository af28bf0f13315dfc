"""Process-level fixes both commands need: ending without interpreter teardown, and making
PyPI's torchvision importable beside a CPU torch."""
