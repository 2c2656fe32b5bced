"""Helpers the test modules share: servers, workers, Kafka clients, SSE readers, checks.

A test module imports these, never another test module (tests/test_house.py checks it).
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent  #: the checkout
