"""Vision: image and video preprocessing, the vision encoder."""
