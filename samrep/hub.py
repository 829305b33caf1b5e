"""Hugging Face hub access: offline mode and a quick reachability probe (huggingface_hub retries
an unreachable host ~25 s per file; probing first keeps a run without network fast, and says why)."""

import os
import socket
from urllib.parse import urlparse


def offline_mode() -> bool:
    """True when HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) asks for no network."""
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return any(f.strip().lower() in {"1", "true", "yes", "on"} for f in flags)


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Can a TCP connection be opened to the hub endpoint (HF_ENDPOINT honoured)?"""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout_s):
            return True
    except OSError:
        return False
