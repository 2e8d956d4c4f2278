"""An opt-in bearer token on the OpenAI ingress, and the one place every client finds the token.

Anyone who reaches the ingress port can otherwise spend the cluster's GPUs (issue 16.5). The token is
never part of a config or a Serve config file: the ingress reads it where it runs, from a mounted secret
file (``serve.api_key_file``, a Kubernetes Secret volume) or an environment variable (``serve.api_key_env``,
default ``PBT_API_KEY``, e.g. ``valueFrom.secretKeyRef`` in a KubeRay pod), and clients read the same
sources on their side. No token found means no authentication, unless ``serve.require_api_key`` is set,
in which case the ingress refuses to start rather than run open.

Serve's own probes (``/-/healthz``, ``/-/routes`` on the proxy, which KubeRay polls) never reach the
ingress, so they keep working with a token set.
"""

from __future__ import annotations

import hmac
import json
import os
from pathlib import Path
from typing import Any

DEFAULT_API_KEY_ENV = "PBT_API_KEY"
# What an OpenAI SDK client sends when it has no key: accepted only by an ingress without a token.
NO_KEY = "not-needed"


class AuthError(ValueError):
    """The token's configured source is unusable (a secret file that is missing or empty)."""


def read_token(env_name: str | None = DEFAULT_API_KEY_ENV, file: str | None = None) -> str | None:
    """The bearer token from ``file`` (first) or the environment variable ``env_name``; None when neither has one.

    A configured file that does not exist is an error, not "no token": an unmounted secret must not
    silently turn authentication off.
    """
    if file:
        path = Path(file).expanduser()
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise AuthError(f"serve.api_key_file {file}: cannot read the token ({exc.strerror or exc}). "
                            "Mount the secret there, or unset serve.api_key_file") from None
        if not token:
            raise AuthError(f"serve.api_key_file {file} is empty: write the token into it, or unset serve.api_key_file")
        return token
    token = os.environ.get(env_name or "", "").strip() if env_name else ""
    return token or None


def client_key(serve_cfg: Any = None) -> str:
    """The ``api_key`` an OpenAI client of this project sends (as ``Authorization: Bearer``)."""
    if serve_cfg is None:
        return read_token() or NO_KEY
    return read_token(serve_cfg.api_key_env, serve_cfg.api_key_file) or NO_KEY


def auth_headers(serve_cfg: Any = None) -> dict[str, str]:
    """Headers for a plain HTTP call (httpx) to the ingress."""
    key = client_key(serve_cfg)
    return {} if key == NO_KEY else {"Authorization": f"Bearer {key}"}


class BearerAuth:
    """ASGI middleware: every HTTP request must carry ``Authorization: Bearer <token>``; others get a 401.

    The comparison is constant-time (``hmac.compare_digest``), so response timing does not leak how much
    of a guessed token was right. Lifespan and other non-HTTP scopes pass through.
    """

    def __init__(self, app, token: str):
        if not token:
            raise ValueError("BearerAuth needs a non-empty token")
        self.app = app
        self._token = token.encode()

    def __getattr__(self, name: str):  # FastAPI attributes (docs_url, ...) that Serve may ask the wrapped app for
        return getattr(self.app, name)

    async def __call__(self, scope, receive, send) -> None:
        if scope.get("type") != "http" or self.authorized(scope):
            await self.app(scope, receive, send)
            return
        body = json.dumps({"error": {
            "message": "Missing or wrong bearer token: send 'Authorization: Bearer <token>' with the token of this "
                       "endpoint (pbt clients read it from serve.api_key_file or $PBT_API_KEY).",
            "type": "authentication_error", "code": 401}}).encode()
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", b'Bearer realm="pbt-ray"')]})
        await send({"type": "http.response.body", "body": body})

    def authorized(self, scope) -> bool:
        sent = b""
        for name, value in scope.get("headers") or ():
            if name.lower() == b"authorization":
                sent = value
                break
        scheme, _, credentials = sent.partition(b" ")
        # compare_digest runs even for a wrong scheme, so both paths take the same time
        return hmac.compare_digest(credentials.strip(), self._token) and scheme.lower() == b"bearer"
