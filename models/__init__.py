"""Models only: the Caffe runtime (``models.caffe``, with its train/test/time tool), the face
detector (``models.faces``) and the selfie net (``models.selfie``: scoring, crop search, weights)."""
