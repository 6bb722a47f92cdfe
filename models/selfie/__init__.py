"""The selfie net: scoring a folder (score), best-crop search (crop), and fetching the ImageNet
VGG16 weights it is fine-tuned from (weights)."""
