"""The Deformable DETR Explorer: the Gradio page, its command line and its serving policy."""
