"""A throwaway S3-compatible server for the tests: moto's S3 in a process of its own, on a free
loopback port, everything in memory (gone when it stops).

moto does not check the signature of a pre-signed (query-authenticated) request: its IAM
authentication (``INITIAL_NO_AUTH_ACTION_COUNT``) reads only the ``Authorization`` header, and a
pre-signed URL has none.  So the server runs moto's WSGI application behind
:class:`PresignedCheck`, which checks every pre-signed request as S3 does: a known access key,
not expired (``X-Amz-Date`` + ``X-Amz-Expires``), every header named in ``X-Amz-SignedHeaders``
present, and the SigV4 signature recomputed over the request as received (botocore's own
canonical request and signing) — else 403 with S3's error document (``SignatureDoesNotMatch``,
``AccessDenied``, ``InvalidAccessKeyId``).  A tampered URL, or a body of another length or type
than the URL signed, is really refused.  Requests signed in the ``Authorization`` header (the
node's listing and deleting, the tests' own setup) go to moto unchecked.

``python -m tests.helpers.s3 PORT ACCESS_KEY SECRET_KEY`` is the server process itself.
"""

from __future__ import annotations

import hmac
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from .ports import free_port
from .process import terminate, wait_listening

__all__ = ["S3Server", "PresignedCheck", "presigned_error"]

ROOT = Path(__file__).resolve().parents[2]
AUTH_PARAMS = frozenset({"X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires",
                         "X-Amz-SignedHeaders", "X-Amz-Signature", "X-Amz-Security-Token"})


def presigned_error(method: str, raw_path: str, query: str, headers: Mapping[str, str], keys: Mapping[str, str],
                    now: float) -> tuple[str, str] | None:
    """Why S3 would refuse this pre-signed request — (error code, message) — or None when the
    signature holds.  ``headers`` by lower-case name, ``raw_path`` as sent (percent-encoded)."""
    from botocore.auth import S3SigV4QueryAuth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    pairs = parse_qsl(query, keep_blank_values=True)
    params = dict(pairs)
    try:
        access_key, _day, region, service, _term = params["X-Amz-Credential"].split("/")
        amz_date, expires = params["X-Amz-Date"], int(params["X-Amz-Expires"])
        signed, given = params["X-Amz-SignedHeaders"].split(";"), params["X-Amz-Signature"]
        start = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
    except (KeyError, ValueError):
        return "AuthorizationQueryParametersError", "malformed query authentication"
    secret = keys.get(access_key)
    if secret is None:
        return "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records."
    if params.get("X-Amz-Algorithm") != "AWS4-HMAC-SHA256":
        return "AuthorizationQueryParametersError", "X-Amz-Algorithm only supports AWS4-HMAC-SHA256"
    if now > start + expires:
        return "AccessDenied", "Request has expired"
    if any(name not in headers for name in signed):
        return "SignatureDoesNotMatch", "a signed header is missing"
    rest = [(k, v) for k, v in pairs if k not in AUTH_PARAMS]
    url = f"http://{headers.get('host', '')}{raw_path}" + (f"?{urlencode(rest, quote_via=quote)}" if rest else "")
    request = AWSRequest(method=method, url=url, headers={name: headers[name] for name in signed})
    request.context["timestamp"] = amz_date
    auth = S3SigV4QueryAuth(Credentials(access_key, secret), service, region, expires=expires)
    auth._modify_request_before_signing(request)
    expected = auth.signature(auth.string_to_sign(request, auth.canonical_request(request)), request)
    if not hmac.compare_digest(expected, given):
        return "SignatureDoesNotMatch", ("The request signature we calculated does not match the signature you "
                                         "provided. Check your key and signing method.")
    return None


class PresignedCheck:
    """WSGI middleware: pre-signed requests whose signature does not hold get S3's 403."""

    def __init__(self, app: Callable[..., Iterable[bytes]], keys: Mapping[str, str]) -> None:
        self.app = app
        self.keys = dict(keys)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        query = environ.get("QUERY_STRING", "")
        if "X-Amz-Signature=" in query:
            raw = environ.get("RAW_URI") or environ.get("REQUEST_URI") or quote(environ.get("PATH_INFO", ""))
            headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")}
            for key, name in (("CONTENT_LENGTH", "content-length"), ("CONTENT_TYPE", "content-type")):
                if environ.get(key):
                    headers[name] = environ[key]
            error = presigned_error(environ["REQUEST_METHOD"], raw.split("?", 1)[0], query, headers, self.keys,
                                    time.time())
            if error is not None:
                body = ("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
                        f"<Error><Code>{error[0]}</Code><Message>{error[1]}</Message></Error>").encode()
                if environ.get("wsgi.input") is not None and environ.get("CONTENT_LENGTH"):
                    environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))  # the body, unread, would stay
                start_response("403 Forbidden", [("Content-Type", "application/xml"),
                                                 ("Content-Length", str(len(body)))])
                return [body]
        return self.app(environ, start_response)


class S3Server:
    """moto's S3 (behind :class:`PresignedCheck`) on a free port; one access key."""

    def __init__(self) -> None:
        self.host = "127.0.0.1"
        self.port = free_port()
        self.region = "us-east-1"
        self.access_key_id = "AKIAMERIDIANTEST0001"
        self.secret_access_key = os.urandom(20).hex()
        self.log_path = Path(tempfile.mkstemp(prefix="meridian-s3-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def settings(self, bucket: str, **more: Any) -> dict[str, Any]:
        """The node's ``[modules.http_upload.s3]`` table for this server."""
        return {"endpoint_url": self.endpoint_url, "region": self.region, "bucket": bucket, "path_style": True,
                "access_key_id": self.access_key_id, "secret_access_key": self.secret_access_key, **more}

    def client(self) -> Any:
        """A synchronous boto3 client, for setup and checks in tests."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=self.region,
                            aws_access_key_id=self.access_key_id, aws_secret_access_key=self.secret_access_key)

    def start(self, timeout: float = 30.0) -> S3Server:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.helpers.s3", str(self.port), self.access_key_id, self.secret_access_key],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(ROOT), "MOTO_PORT": str(self.port)})
        wait_listening(self.proc, [self.port], timeout, "moto S3 server", self.log)
        return self

    def stop(self) -> None:
        terminate(self.proc, 10)
        self.proc = None

    def __enter__(self) -> S3Server:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self.stop()
        self.log_path.unlink(missing_ok=True)

    def __exit__(self, *exc: object) -> None:
        self.close()


def _serve(port: int, access_key: str, secret: str) -> None:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    app = PresignedCheck(DomainDispatcherApplication(create_backend_app), {access_key: secret})
    make_server("127.0.0.1", port, app, threaded=True, request_handler=MotoRequestHandler).serve_forever()


if __name__ == "__main__":
    _serve(int(sys.argv[1]), sys.argv[2], sys.argv[3])
