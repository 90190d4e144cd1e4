"""The fixtures of tests/support.py, for the tests in this folder."""
from support import UNet, demo_ds, demo_root, real_root, unet_ns  # noqa: F401
