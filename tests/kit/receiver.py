"""A real webhook receiver on 127.0.0.1: the outside world, so a real socket rather than respx.

It records every request that arrives (headers, body, the TLS server name asked for) and answers
200 (with a JSON body if given one), after a delay if asked. Held, it keeps each request unanswered until released, and notes a
request whose sender went away meanwhile (a process killed with a delivery in flight).
"""

from __future__ import annotations

import datetime as dt
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass
class Arrival:
    """One request as the receiver read it."""

    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes
    abandoned: bool = False  # the sender closed the connection before any answer

    @property
    def key(self) -> str:
        """The delivery's idempotency key."""
        return self.headers["idempotency-key"]


@dataclass
class Receiver:
    """What arrived, and how to answer."""

    port: int = 0
    delay_seconds: float = 0.0
    answer: bytes = b""  # the JSON body of every answer
    arrivals: list[Arrival] = field(default_factory=list)
    server_names: list[str | None] = field(default_factory=list)  # TLS SNI, per handshake
    _changed: threading.Condition = field(default_factory=threading.Condition)
    _released: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._released.set()

    def url(self, host: str = "127.0.0.1", path: str = "/hooks", scheme: str = "http") -> str:
        """This receiver's URL under a host name (which the client must map to 127.0.0.1)."""
        return f"{scheme}://{host}:{self.port}{path}"

    def hold(self) -> None:
        """Leave requests unanswered until `release`."""
        self._released.clear()

    def release(self) -> None:
        """Answer the held requests and every later one."""
        self._released.set()

    def wait_for(self, condition: Callable[[list[Arrival]], bool], seconds: float) -> list[Arrival]:
        """The arrivals once `condition` holds for them; fails after `seconds`."""
        deadline = time.monotonic() + seconds
        with self._changed:
            while not condition(self.arrivals):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"the receiver did not see that in {seconds} s")
                self._changed.wait(left)
            return list(self.arrivals)

    def _arrived(self, arrival: Arrival) -> None:
        with self._changed:
            self.arrivals.append(arrival)
            self._changed.notify_all()

    def _abandoned(self, arrival: Arrival) -> None:
        with self._changed:
            arrival.abandoned = True
            self._changed.notify_all()

    def _wait_released(self, connection: socket.socket, arrival: Arrival) -> bool:
        """Whether to answer: released, or False when the sender went away first."""
        while not self._released.wait(0.05):
            if _peer_closed(connection):
                self._abandoned(arrival)
                return False
        return True


def _peer_closed(connection: socket.socket) -> bool:
    """The other end closed (or reset) a connection on which it has nothing more to send."""
    readable, _, _ = select.select([connection], [], [], 0)
    if not readable:
        return False
    try:
        return connection.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        self.do_POST()

    def do_POST(self) -> None:
        receiver = self.server.receiver
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        arrival = Arrival(self.command, self.path, headers, body)
        receiver._arrived(arrival)
        if not receiver._wait_released(self.connection, arrival):
            self.close_connection = True
            return
        time.sleep(receiver.delay_seconds)  # a slow receiver
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(receiver.answer)))
        self.end_headers()
        self.wfile.write(receiver.answer)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the test asserts on what arrived."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    receiver: Receiver


@contextmanager
def receiving(
    tls: ssl.SSLContext | None = None, delay_seconds: float = 0.0, answer: bytes = b""
) -> Iterator[Receiver]:
    """A receiver listening on 127.0.0.1 (TLS with this server context) until the block ends."""
    server = _Server(("127.0.0.1", 0), _Handler)
    receiver = Receiver(port=server.server_address[1], delay_seconds=delay_seconds, answer=answer)
    server.receiver = receiver
    if tls is not None:

        def record_name(_: ssl.SSLObject, name: str | None, __: ssl.SSLContext) -> None:
            receiver.server_names.append(name)

        tls.sni_callback = record_name
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield receiver
    finally:
        receiver.release()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@dataclass(frozen=True)
class Certificates:
    """A test certificate authority, and a server certificate it issued for one host name."""

    ca_file: Path  # what a client trusts (PEM)
    server: ssl.SSLContext  # a server context presenting the certificate


def issue_certificate(folder: Path, host: str) -> Certificates:
    """A new CA and a certificate for `host` signed by it, valid 2000-2100 (OpenSSL reads the real
    clock, not the tests' frozen one)."""
    valid = (dt.datetime(2000, 1, 1, tzinfo=dt.UTC), dt.datetime(2100, 1, 1, tzinfo=dt.UTC))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "trialbridge test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = folder / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    chain = folder / f"{host}.pem"
    chain.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        + leaf.public_bytes(serialization.Encoding.PEM)
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(chain)
    return Certificates(ca_file, server)
