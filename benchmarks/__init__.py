"""Speed measurements for docs/performance.md (not training code): contention-aware step timing, our own
PyTorch EKD step as the reference, XLA:CPU profiles grouped by op kind. torch is optional here."""
