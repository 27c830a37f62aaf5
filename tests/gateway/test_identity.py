"""mTLS identities: the local CA's files, and identities read off a real TLS handshake."""

from __future__ import annotations

import stat
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from gateway._proto.govgate.v1 import ledger_pb2, ledger_pb2_grpc
from gateway.identity import IdentityError, identity_of, init_certs


def test_init_certs_files_modes_and_chain(tmp_path: Path):
    paths = init_certs(tmp_path / "certs", ["engine-1", "alice"])
    assert set(paths) == {"ca", "server", "engine-1", "alice"}
    ca = x509.load_pem_x509_certificate(paths["ca"].cert.read_bytes())
    for name, p in paths.items():
        assert stat.S_IMODE(p.key.stat().st_mode) == 0o600, name
        cert = x509.load_pem_x509_certificate(p.cert.read_bytes())
        cert.verify_directly_issued_by(ca)
    assert identity_of(paths["alice"].cert.read_bytes()) == "spiffe://govgate.local/alice"
    assert identity_of(paths["server"].cert.read_bytes()) == "localhost"
    added = init_certs(tmp_path / "certs", ["bob"])  # the CA is there: only bob is issued
    assert set(added) == {"bob"}
    assert stat.S_IMODE(added["bob"].key.stat().st_mode) == 0o600
    x509.load_pem_x509_certificate(added["bob"].cert.read_bytes()).verify_directly_issued_by(ca)
    assert identity_of(added["bob"].cert.read_bytes()) == "spiffe://govgate.local/bob"
    with pytest.raises(IdentityError, match="already exists"):
        init_certs(tmp_path / "certs", ["alice"])
    with pytest.raises(IdentityError, match="not a usable identity"):
        init_certs(tmp_path / "other", ["Bad Name"])
    with pytest.raises(IdentityError, match="not a PEM certificate"):
        identity_of(b"junk")
    with pytest.raises(IdentityError, match="no subject alternative name"):
        identity_of(paths["ca"].cert.read_bytes())


class _WhoAmI(ledger_pb2_grpc.LedgerServiceServicer):
    """Answers with the identity the TLS layer proved (a test servicer, not the gateway's)."""

    async def GetCheckpoint(self, request, context):  # type: ignore[no-untyped-def]
        pem = context.auth_context()["x509_pem_cert"][0]
        return ledger_pb2.Checkpoint(note=identity_of(pem))


async def test_identity_comes_from_the_client_certificate(tmp_path: Path):
    paths = init_certs(tmp_path, ["alice", "bob"])
    read = {n: (p.cert.read_bytes(), p.key.read_bytes()) for n, p in paths.items()}
    server = grpc.aio.server()
    ledger_pb2_grpc.add_LedgerServiceServicer_to_server(_WhoAmI(), server)
    creds = grpc.ssl_server_credentials(
        [(read["server"][1], read["server"][0])],
        root_certificates=read["ca"][0],
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    try:
        for who in ("alice", "bob"):
            client = grpc.ssl_channel_credentials(read["ca"][0], read[who][1], read[who][0])
            async with grpc.aio.secure_channel(f"localhost:{port}", client) as ch:
                stub = ledger_pb2_grpc.LedgerServiceStub(ch)
                reply = await stub.GetCheckpoint(ledger_pb2.GetCheckpointRequest(), timeout=5)
                assert reply.note == f"spiffe://govgate.local/{who}"
        # No client certificate: the handshake fails before any method runs.
        anonymous = grpc.ssl_channel_credentials(read["ca"][0])
        async with grpc.aio.secure_channel(f"localhost:{port}", anonymous) as ch:
            stub = ledger_pb2_grpc.LedgerServiceStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.GetCheckpoint(ledger_pb2.GetCheckpointRequest(), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(None)


@pytest.mark.parametrize(
    "san",
    [x509.UniformResourceIdentifier(""), x509.DNSName(""), x509.DNSName(" "),
     x509.UniformResourceIdentifier(" spiffe://govgate.local/alice"),
     x509.UniformResourceIdentifier("spiffe://govgate.local/al\tice")],
)  # fmt: skip
def test_a_blank_or_padded_san_is_no_identity(san: x509.GeneralName):
    """Recorded as the actor of what it does: it must name somebody, as written."""
    import datetime as dt

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([san]), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    with pytest.raises(IdentityError, match="is not an identity"):
        identity_of(cert.public_bytes(serialization.Encoding.PEM))
