"""The face filter stage: MTCNN (P-Net, R-Net, O-Net) as Caffe prototxt on models.caffe."""
