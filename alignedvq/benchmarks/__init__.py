"""The benchmarks behind ``alignedvq bench``: each measures side by side in one run."""
