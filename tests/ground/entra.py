"""A stand-in for Entra ID's token endpoint on 127.0.0.1 (HTTPS), as Azurite stands in for Blob Storage.

There is no Entra ID on the ground (no internet), and Azurite accepts OAuth bearer tokens (`--oauth basic`, HTTPS
only) by reading their claims, not their signature: `nbf`/`exp`, an issuer under https://sts.windows.net/ and a
storage audience. This server gives azure-identity (through MSAL) what Entra ID gives it, for one tenant and one
application:

- `GET /{tenant}/v2.0/.well-known/openid-configuration`: the tenant's OpenID metadata, every endpoint on this server;
- `POST /{tenant}/oauth2/v2.0/token`: the client-credentials grant, with the client secret (a service principal) or
  a client assertion (Azure Workload Identity's federated token). The client ID and the secret (or the assertion)
  must be the ones this server was made with; anything else is refused as Entra ID refuses it (400/401 and an
  AADSTS error body), and each request is counted so tests can tell how often a refused client asked.

The access token is a JWT with Entra ID's claims for a storage token (iss, aud, tid, oid, appid, nbf, exp), signed
with a random key nobody checks (Azurite does not, and datamover never reads the token).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import ipaddress
import json
import secrets
import ssl
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

STORAGE_AUDIENCE = "https://storage.azure.com"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
TOKEN_LIFETIME = 3600


@dataclass
class TokenIssuer:
    """One running issuer: its authority host (https://127.0.0.1:<port>), the tenant and the one client it knows."""

    authority_host: str
    tenant_id: str
    client_id: str
    client_secret: str = field(repr=False)
    federated_token: str = field(repr=False)  # the workload identity assertion it trusts
    object_id: str = field(default_factory=lambda: str(uuid.uuid4()))  # the principal's object ID (oid)
    requests: list[str] = field(default_factory=list)  # "<grant>:<outcome>" per token request, in order

    def access_token(self) -> str:
        now = int(time.time())
        claims = {
            "aud": STORAGE_AUDIENCE, "iss": f"https://sts.windows.net/{self.tenant_id}/", "iat": now, "nbf": now - 60,
            "exp": now + TOKEN_LIFETIME, "appid": self.client_id, "oid": self.object_id, "sub": self.object_id,
            "tid": self.tenant_id, "ver": "1.0",
        }
        return jwt.encode(claims, secrets.token_bytes(32), algorithm="HS256")


def loopback_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost that is its own CA: (cert file, key file).

    Self-signed rather than issued by a ground CA because Azurite, reading a copy's source from itself over HTTPS
    (Put Block From URL), trusts exactly the certificate it serves, and a leaf without its issuer fails that check.
    Clients trust the same file as their CA bundle.

    Azurite 3.37 rebuilds that PEM from the certificate's DER, wrapping the base64 every 64 characters and then
    adding a newline of its own: when the base64 length is a multiple of 64 the PEM gets an empty line, Node drops
    it as a CA, and every Put Block From URL fails with "self-signed certificate" (CannotVerifyCopySource). An
    ECDSA signature's length varies by a byte or two, so about one certificate in three hit it; one whose base64
    length is not a multiple of 64 is drawn instead.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "datamover-ground-loopback")])
    now = datetime.datetime.now(datetime.UTC)
    while True:
        cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        if len(base64.b64encode(cert.public_bytes(serialization.Encoding.DER))) % 64:
            break
    directory.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = directory / "loopback.crt", directory / "loopback.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    return cert_file, key_file


def _aadsts(status: int, error: str, code: int, text: str) -> tuple[int, dict[str, object]]:
    return status, {"error": error, "error_description": f"AADSTS{code}: {text}", "error_codes": [code],
                    "timestamp": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
                    "trace_id": str(uuid.uuid4()), "correlation_id": str(uuid.uuid4())}


def _handler(issuer: TokenIssuer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_: object) -> None:  # quiet: tests read `issuer.requests`
            pass

        def _answer(self, status: int, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            parts = urllib.parse.urlsplit(self.path).path.strip("/").split("/")
            if len(parts) >= 2 and parts[1:] == ["v2.0", ".well-known", "openid-configuration"]:
                tenant = parts[0]
                if tenant != issuer.tenant_id:
                    self._answer(*_aadsts(400, "invalid_tenant", 90002, f"Tenant '{tenant}' not found."))
                    return
                base = f"{issuer.authority_host}/{tenant}"
                self._answer(200, {
                    "issuer": f"{base}/v2.0", "token_endpoint": f"{base}/oauth2/v2.0/token",
                    "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                    "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                    "jwks_uri": f"{base}/discovery/v2.0/keys", "tenant_region_scope": "NA",
                    "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                    "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt",
                                                              "client_secret_basic"],
                })
                return
            self._answer(404, {"error": "not_found"})

        def do_POST(self) -> None:
            parts = urllib.parse.urlsplit(self.path).path.strip("/").split("/")
            length = int(self.headers.get("Content-Length") or 0)
            form = {k: v[0] for k, v in urllib.parse.parse_qs(self.rfile.read(length).decode()).items()}
            if len(parts) != 4 or parts[1:] != ["oauth2", "v2.0", "token"]:
                self._answer(404, {"error": "not_found"})
                return
            grant = "assertion" if "client_assertion" in form else "secret"
            status, body = self._grant(parts[0], form)
            issuer.requests.append(f"{grant}:{'ok' if status == 200 else body['error']}")
            self._answer(status, body)

        def _grant(self, tenant: str, form: dict[str, str]) -> tuple[int, dict[str, object]]:
            if tenant != issuer.tenant_id:
                return _aadsts(400, "invalid_request", 90002, f"Tenant '{tenant}' not found.")
            if form.get("grant_type") != "client_credentials":
                return _aadsts(400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type.")
            if form.get("client_id") != issuer.client_id:
                return _aadsts(400, "unauthorized_client", 700016,
                               f"Application with identifier '{form.get('client_id')}' was not found in the directory.")
            if "client_assertion" in form:
                if form.get("client_assertion_type") != ASSERTION_TYPE or \
                        form["client_assertion"] != issuer.federated_token:
                    return _aadsts(400, "invalid_client", 700213, "No matching federated identity record found for "
                                                                  "presented assertion.")
            elif form.get("client_secret") != issuer.client_secret:
                return _aadsts(401, "invalid_client", 7000215, "Invalid client secret provided. Ensure the secret "
                                                               "being sent in the request is the client secret value, "
                                                               "not the client secret ID.")
            if not form.get("scope", "").startswith(STORAGE_AUDIENCE):
                return _aadsts(400, "invalid_scope", 1002012, f"The provided value for scope {form.get('scope')} "
                                                              "is not valid.")
            return 200, {"token_type": "Bearer", "expires_in": TOKEN_LIFETIME, "ext_expires_in": TOKEN_LIFETIME,
                         "access_token": issuer.access_token()}

    return Handler


@contextlib.contextmanager
def start_token_issuer(cert_file: Path, key_file: Path) -> Iterator[TokenIssuer]:
    """Serve a fresh tenant and client (random IDs, secret and federated token) on 127.0.0.1 over HTTPS."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert_file), str(key_file))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    issuer = TokenIssuer(authority_host=f"https://127.0.0.1:{server.server_address[1]}", tenant_id=str(uuid.uuid4()),
                         client_id=str(uuid.uuid4()), client_secret=secrets.token_urlsafe(30),
                         federated_token=secrets.token_urlsafe(40))
    server.RequestHandlerClass = _handler(issuer)
    thread = threading.Thread(target=server.serve_forever, name="entra-token-issuer", daemon=True)
    thread.start()
    try:
        yield issuer
    finally:
        server.shutdown()
        server.server_close()
