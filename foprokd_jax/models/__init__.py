"""Flax Linen models: torchvision-exact ResNets and the EKD student heads."""
