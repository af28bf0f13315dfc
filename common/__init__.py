"""What both halves run: the wire format (``wire``, torch-free), the image policy (``imaging``,
torch-free), the AlignedVQ codec and feature encodings (``codec``), the split of a checkpoint
(``split``), the shipped model as package data (``models/``, found through ``paths``) and
process-level fixes (``_runtime``). Importing it imports nothing heavy."""
