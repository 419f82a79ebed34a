"""Test set-up: 8 fake CPU devices (for the 1-vs-8-device tests) before JAX initialises its backend."""
import os

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The official ISIC-2019-LT split CSVs live beside the checkout (never copied into the tree).
SHARED_SPLITS = os.path.join(os.path.dirname(ROOT), "shared", "isic2019_lt_splits")
