"""Question files and the ShapesVQA task (docs/shapes_vqa.md)."""
