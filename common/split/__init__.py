"""The split of a LLaVA checkpoint into an edge half and a cloud half, at a CLIP block boundary,
as both halves need it: where it is cut and the CLS rule (``point``), how tensors are read by key
and fingerprinted (``weights``), the vision blocks before the cut, which the edge runs and the
server runs for image uploads (``vision``), and loading a checkpoint's processors
(``checkpoint``)."""
