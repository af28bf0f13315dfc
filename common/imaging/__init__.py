"""The image policy both halves apply (torch-free)."""
