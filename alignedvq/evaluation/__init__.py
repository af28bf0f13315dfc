"""Accuracy of a checkpoint through any mode, the unmodified model it is compared with, and
answer matching."""
