"""Offline workflows behind the ``alignedvq`` command (dataset, training, evaluation)."""
