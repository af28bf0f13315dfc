"""Offline workflows behind the ``alignedvq`` command: building and training the embedded model."""
