"""The start-up sentence that says how to get past the Ray dashboard's token dialog."""

from __future__ import annotations

from pathlib import Path

import pytest

from study.cluster import dashboard_sign_in


@pytest.fixture
def token_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "auth_token"
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    return path


def test_names_the_command_the_token_file_and_the_tunnel(token_file, monkeypatch) -> None:
    token_file.write_text("abc")
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    line = dashboard_sign_in("http://127.0.0.1:8271")
    assert "`ray get-auth-token`" in line
    assert str(token_file) in line
    assert "Authentication Token Required" in line
    assert "ssh -L 8271:127.0.0.1:8271 " in line
    assert "http://localhost:8271" in line


def test_the_tunnel_goes_to_the_head_of_a_joined_cluster(token_file, monkeypatch) -> None:
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    line = dashboard_sign_in("http://127.0.0.1:8265", address="10.0.0.5:6379")
    assert "`ssh -L 8265:127.0.0.1:8265 10.0.0.5`" in line


def test_a_token_in_the_environment_is_named_instead_of_the_file(token_file, monkeypatch) -> None:
    monkeypatch.setenv("RAY_AUTH_TOKEN", "abc")
    line = dashboard_sign_in("http://127.0.0.1:8265")
    assert "from RAY_AUTH_TOKEN" in line
    assert str(token_file) not in line


def test_nothing_to_say_without_authentication_or_dashboard(token_file, monkeypatch) -> None:
    token_file.write_text("abc")
    assert dashboard_sign_in("") == ""
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert dashboard_sign_in("http://127.0.0.1:8265") == ""
    # a joined cluster without a token anywhere on this machine has no dialog to explain
    token_file.unlink()
    monkeypatch.delenv("RAY_AUTH_MODE")
    assert dashboard_sign_in("http://127.0.0.1:8265") == ""
