"""Models: the Caffe runtime (``models.caffe``), the face detector, scoring and what builds on it."""
