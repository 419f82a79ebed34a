"""Converting PyTorch checkpoints (torchvision, MoCo-v2, timm, DINOv2) into Flax teacher artifacts.

Only launch/convert_teacher.py and tests import torch."""
