"""Credentials inside URLs kept out of settings, cache keys, metadata, rows and error messages."""


#: query parameters of a URL that carry a credential (kept out of settings, cache keys, footers, logs)
SECRET_PARAMS = ("key", "api_key", "apikey", "token", "access_token", "auth", "sig", "signature", "password",
                 "secret", "code")


def redact_url(url: str) -> str:
    """`url` without credentials: user:password@ -> ***@, secret query parameters -> ***. A URL
    without any is returned unchanged (so cache keys of ordinary servers do not move)."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k.lower() in SECRET_PARAMS for k, _ in pairs):
            query = urlencode([(k, "***" if k.lower() in SECRET_PARAMS else v) for k, v in pairs], safe="*")
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str, url: str) -> str:
    """`text` (an exception's message, which may quote the URL in any form) with the credentials of
    `url` (its password, its secret query values, raw or percent-encoded) replaced by ***."""
    from urllib.parse import parse_qsl, quote, urlsplit

    try:
        parts = urlsplit(url)
        secrets = [parts.password or ""] + [v for k, v in parse_qsl(parts.query, keep_blank_values=True)
                                            if k.lower() in SECRET_PARAMS]
    except ValueError:
        return "***"
    for secret in sorted({x for x in secrets if x}, key=len, reverse=True):
        for form in {secret, quote(secret, safe=""), quote(secret)}:
            text = text.replace(form, "***")
    return text
