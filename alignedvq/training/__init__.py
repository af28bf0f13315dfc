"""Training the embedded tiny LLaVA and AlignedVQ codecs."""
