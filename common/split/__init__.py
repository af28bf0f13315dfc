"""The split of a LLaVA checkpoint into an edge half and a cloud half, at a CLIP block boundary:
where it is cut (``point``), how its tensors are read by key (``weights``), the vision modules of
each side (``vision``) and how a checkpoint folder is loaded (``checkpoint``)."""
