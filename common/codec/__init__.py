"""The feature codec (AlignedVQ), its k-means initialisation, and the encodings that put
features at the cut on the wire."""
