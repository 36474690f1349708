from __future__ import annotations

import pytest

from streamflow.uri import MASK, redact_text, redact_uri


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("rtsp://admin:secret@10.0.0.7:554/stream1", "rtsp://admin:***@10.0.0.7:554/stream1"),
        ("rtsps://admin:secret@cam.example/live", "rtsps://admin:***@cam.example/live"),
        ("http://u:p@host/x.m3u8", "http://u:***@host/x.m3u8"),
        ("RTSP://Admin:Secret@Cam/Live", "RTSP://Admin:***@Cam/Live"),
        ("rtsp://u:p%40ss%2Fw@h/x", "rtsp://u:***@h/x"),  # percent-encoded '@' and '/'
        ("rtsp://u:p@ss@h/x", "rtsp://u:***@h/x"),  # a raw '@' inside the password
        ("rtsp://u:pa/ss@h/x", "rtsp://u:***@h/x"),  # a raw '/' inside the password: mask, don't guess
        ("rtsp://u:@h/x", "rtsp://u:***@h/x"),  # empty password still shows as masked
        ("rtsp://u:p@[::1]:8554/x", "rtsp://u:***@[::1]:8554/x"),
    ],
)
def test_password_is_masked_and_the_rest_kept(uri: str, expected: str) -> None:
    assert redact_uri(uri) == expected


@pytest.mark.parametrize(
    "uri",
    ["rtsp://10.0.0.7:554/stream1", "rtsp://user@host/live", "/videos/clip.mp4", "clip.mp4", "rtsp://[::1]:554/x"],
)
def test_uris_without_password_are_unchanged(uri: str) -> None:
    assert redact_uri(uri) == uri


def test_secret_query_parameters_are_masked() -> None:
    redacted = redact_uri("rtsp://cam/live?user=a&password=hunter2&Token=abc&channel=1")
    assert "hunter2" not in redacted and "abc" not in redacted
    assert redacted == f"rtsp://cam/live?user=a&password={MASK}&Token={MASK}&channel=1"


def test_redact_text_masks_every_uri_in_a_message() -> None:
    message = "cannot open 'rtsp://a:pw1@h1/x': 401; fallback http://b:pw2@h2/y failed"
    redacted = redact_text(message)
    assert "pw1" not in redacted and "pw2" not in redacted
    assert redacted == "cannot open 'rtsp://a:***@h1/x': 401; fallback http://b:***@h2/y failed"


def test_redaction_is_idempotent() -> None:
    once = redact_uri("rtsp://admin:secret@cam/live")
    assert redact_uri(once) == once
    assert redact_text(once) == once
