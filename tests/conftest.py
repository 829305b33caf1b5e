"""Shared fixtures. Tests never use the network: the hub is forced offline unless a test
serves files on loopback itself."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="session")
def tiny_model():
    """A tiny SamModel with the seeded synthetic init, fp32, eval mode."""
    from transformers import SamModel

    from samrep.model import synthetic_init_, tiny_config

    return synthetic_init_(SamModel(tiny_config()), seed=0).eval()
