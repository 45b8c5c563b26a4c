"""Shared fixtures: quiet TensorFlow, fixed seeds, small helpers for TFLite op inventories."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    import numpy as np

    np.random.seed(0)
    yield
