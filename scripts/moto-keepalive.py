"""moto's app behind waitress, which keeps HTTP/1.1 connections alive as DynamoDB and Kinesis do
(moto's own server, werkzeug's, answers `Connection: close` to every call, so a client opens a
TCP connection per call). For measuring a client's per-call cost; the tests use moto's server.

    .venv/bin/python scripts/moto-keepalive.py PORT
"""

import os
import sys

port = int(sys.argv[1])
os.environ.setdefault("MOTO_PORT", str(port))

import waitress  # noqa: E402
from moto.server import DomainDispatcherApplication, create_backend_app  # noqa: E402

waitress.serve(
    DomainDispatcherApplication(create_backend_app),
    host="127.0.0.1",
    port=port,
    threads=4,
    _quiet=True,
)
