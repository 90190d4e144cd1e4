"""The product's test fixtures (tests/support.py), for the experiments' tests."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from support import UNet, demo_ds, demo_root, real_root, unet_ns  # noqa: E402, F401
