"""The webhook server key kept in a file: made once (0600), shared by racing processes, refused when exposed.

The stream-token key goes through the same code (streams.key_files); tests/test_sse_tokens.py covers it.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from notifier.tenant_secrets import server_key
from streams.key_files import KeyFileError
from streams.settings import Settings


def test_the_webhook_key_is_made_once_private_and_reused(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    key = server_key(settings)
    path = tmp_path / "webhook-secret.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(key) == 32
    assert server_key(settings) == key


def test_an_exposed_webhook_key_file_is_refused_without_showing_it(tmp_path: Path) -> None:
    path = tmp_path / "webhook-secret.key"
    path.write_text("ab" * 32 + "\n")
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="0644") as refused:
        server_key(Settings(data_dir=tmp_path))
    assert "ab" * 8 not in str(refused.value)


def test_a_set_webhook_key_needs_no_file(tmp_path: Path) -> None:
    assert server_key(Settings(data_dir=tmp_path, webhook_secret_key="k" * 32)) == b"k" * 32
    assert not (tmp_path / "webhook-secret.key").exists()
