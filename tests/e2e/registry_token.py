"""A registry token service for the OCI tests: what Docker Hub's and GHCR's
auth servers do, for Debian's docker-registry (distribution 2.8) configured
with `auth: token`. A client that gets a 401 challenge asks here, with its
basic credentials, for a bearer token (a JWT signed with --key, its
certificate in the `x5c` header, which the registry checks against its
`rootcertbundle`) granting the scopes it asked for.

    python3 registry_token.py --cert C --key K --user U --password P \
        --service S --issuer I

Prints `listening PORT` once it serves on 127.0.0.1.
"""

import argparse
import base64
import http.server
import json
import secrets
import ssl
import sys
import time
from urllib.parse import parse_qs, urlparse

import jwt


def main():
    ap = argparse.ArgumentParser()
    for name in ("cert", "key", "user", "password", "service", "issuer"):
        ap.add_argument(f"--{name}", required=True)
    a = ap.parse_args()
    with open(a.key) as f:
        key = f.read()
    with open(a.cert) as f:
        der = ssl.PEM_cert_to_DER_cert(f.read())
    x5c = [base64.b64encode(der).decode()]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            url = urlparse(self.path)
            if url.path != "/token":
                return self.answer(404, {"error": "no such path"})
            query = parse_qs(url.query)
            auth = self.headers.get("Authorization", "")
            user = None
            if auth.startswith("Basic "):
                given = base64.b64decode(auth[6:]).decode(errors="replace")
                if given != f"{a.user}:{a.password}":
                    return self.answer(401, {"errors": [{"code": "UNAUTHORIZED"}]})
                user = a.user
            access = []
            # Only a known user gets anything: an anonymous token opens
            # nothing, and the registry then refuses it.
            for scope in query.get("scope", []) if user else []:
                for one in scope.split(" "):
                    kind, _, rest = one.partition(":")
                    name, _, actions = rest.rpartition(":")
                    if kind == "repository" and name:
                        access.append(
                            {"type": "repository", "name": name, "actions": actions.split(",")}
                        )
            now = int(time.time())
            claims = {
                "iss": a.issuer,
                "sub": user or "",
                "aud": a.service,
                "iat": now,
                "nbf": now - 10,
                "exp": now + 300,
                "jti": secrets.token_hex(8),
                "access": access,
            }
            token = jwt.encode(claims, key, algorithm="ES256", headers={"x5c": x5c})
            self.answer(200, {"token": token, "access_token": token, "expires_in": 300})

        def answer(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"listening {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
