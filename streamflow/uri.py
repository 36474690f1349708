"""Keep credentials out of logs, errors and stats.

Camera uris usually carry a user and password (`rtsp://admin:secret@10.0.0.7/stream1`). Anything
that prints a uri (log lines, exception messages, `StreamInfo.uri`, run stats) goes through
`redact_uri` first; free text that may embed a uri (an FFmpeg error message) goes through
`redact_text`.

Example:
    >>> redact_uri("rtsp://admin:secret@10.0.0.7:554/stream1?channel=1")
    'rtsp://admin:***@10.0.0.7:554/stream1?channel=1'
    >>> redact_text("cannot open rtsps://u:p%40ss@cam/live: 401 Unauthorized")
    'cannot open rtsps://u:***@cam/live: 401 Unauthorized'
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["MASK", "SECRET_QUERY_KEYS", "redact_text", "redact_uri"]

MASK = "***"
#: Query parameters that some cameras and servers use to pass secrets; their values are masked too.
SECRET_QUERY_KEYS = frozenset({"password", "passwd", "pass", "pwd", "secret", "token", "access_token", "key", "auth"})

# scheme://user:password@ : the password runs to the *last* '@' of the token, even across '/' or '?'.
# A password with a raw '/' or '@' is malformed, but users type them and clients disagree on where
# the host starts, so masking too much (part of a path) is the safe side of the trade.
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^\s:/@]*):(?P<password>\S*)@")


def redact_uri(uri: str) -> str:
    """Return `uri` with any password replaced by `***`; everything else is kept for debugging.

    Works for any scheme with an authority part (rtsp, rtsps, http, https, rtmp...). A user without a
    password is kept as is; secret-looking query parameters (`?password=...`, `?token=...`) are masked.
    Strings that are not uris (file paths) come back unchanged.

    Example:
        >>> redact_uri("http://user:p@ss:word@host/x.m3u8")
        'http://user:***@host/x.m3u8'
        >>> redact_uri("rtsp://cam/live?user=a&password=b")
        'rtsp://cam/live?user=a&password=***'
        >>> redact_uri("/videos/clip.mp4")
        '/videos/clip.mp4'
    """
    if "://" not in uri:
        return uri
    redacted = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", uri, count=1)
    try:
        parts = urlsplit(redacted)
    except ValueError:
        # Malformed beyond parsing (bad IPv6 brackets...): the userinfo pass above already ran.
        return redacted
    if not parts.query:
        return redacted
    query = parse_qsl(parts.query, keep_blank_values=True)
    if not any(key.lower() in SECRET_QUERY_KEYS for key, _ in query):
        return redacted
    masked = [(key, MASK if key.lower() in SECRET_QUERY_KEYS else value) for key, value in query]
    return urlunsplit(parts._replace(query=urlencode(masked, safe="*/:")))


def redact_text(text: str) -> str:
    """Redact every uri password inside free text (exception messages, FFmpeg log lines).

    Example:
        >>> redact_text("a rtsp://u:pw@h/a and http://x:y@h2/b")
        'a rtsp://u:***@h/a and http://x:***@h2/b'
    """
    return _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
