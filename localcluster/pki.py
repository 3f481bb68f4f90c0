"""Certificates and keys for a loopback-only control plane, generated fresh for every cluster.

Why generate rather than ship: a committed key would be a secret in git, and every cluster should
have its own trust root.  One CA signs the apiserver's and etcd's serving certificates (etcd
takes only clients with a certificate from it, so no other local user can read the cluster's data)
and one client certificate per identity (admin, controller-manager, scheduler, kwok, the emulated
node's agent, the apiserver towards etcd), so audit logs and RBAC see distinct users; the
service-account key pair lets the apiserver issue tokens and the controller-manager mint
credentials per controller
(``--use-service-account-credentials``).  EC P-256 keys keep generation to milliseconds.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = dt.timedelta(days=365)
SERVICE_IP = "10.0.0.1"
APISERVER_DNS = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)


@dataclass(frozen=True)
class Identity:
    """A client certificate's subject: user name (CN) and groups (O)."""

    file_stem: str
    user: str
    groups: tuple[str, ...] = ()


ADMIN = Identity("admin", "neuron-groups-admin", ("system:masters",))
CONTROLLER_MANAGER = Identity("controller-manager", "system:kube-controller-manager")
SCHEDULER = Identity("scheduler", "system:kube-scheduler")
KWOK = Identity("kwok", "neuron-groups:kwok", ("system:masters",))
NODE_AGENT = Identity("node-agent", "neuron-groups:node-agent", ("system:masters",))
# Karpenter (kwok provider) and the capacity publisher beside it, when the cluster autoscales.
KARPENTER = Identity("karpenter", "neuron-groups:karpenter", ("system:masters",))
# The apiserver's aggregation proxy presents this one to extension apiservers.
FRONT_PROXY = Identity("front-proxy-client", "front-proxy-client")
# The apiserver's identity towards etcd (etcd checks only that the CA signed it).
ETCD_CLIENT = Identity("apiserver-etcd-client", "kube-apiserver-etcd-client")
CLIENT_IDENTITIES = (
    ADMIN,
    CONTROLLER_MANAGER,
    SCHEDULER,
    KWOK,
    NODE_AGENT,
    KARPENTER,
    FRONT_PROXY,
    ETCD_CLIENT,
)


@dataclass(frozen=True)
class Pki:
    """Where the generated files lie."""

    folder: Path

    @property
    def ca_cert(self) -> Path:
        return self.folder / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.folder / "ca.key"

    @property
    def serving_cert(self) -> Path:
        return self.folder / "apiserver.crt"

    @property
    def serving_key(self) -> Path:
        return self.folder / "apiserver.key"

    @property
    def etcd_cert(self) -> Path:
        return self.folder / "etcd.crt"

    @property
    def etcd_key(self) -> Path:
        return self.folder / "etcd.key"

    @property
    def sa_key(self) -> Path:
        return self.folder / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.folder / "sa.pub"

    def client_cert(self, who: Identity) -> Path:
        return self.folder / f"{who.file_stem}.crt"

    def client_key(self, who: Identity) -> Path:
        return self.folder / f"{who.file_stem}.key"


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common: str, orgs: tuple[str, ...] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in orgs]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common))
    return x509.Name(attrs)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.write_bytes(pem)
    path.chmod(0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _builder(
    subject: x509.Name, issuer: x509.Name, public: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
    )


def generate(folder: Path, extra_ips: tuple[str, ...] = ()) -> Pki:
    """Write a CA, the apiserver serving pair, one client pair per identity and the SA key pair."""
    folder.mkdir(parents=True, exist_ok=True)
    pki = Pki(folder)
    ca_key = _key()
    ca_name = _name("neuron-groups-local-ca")
    ca = (
        _builder(ca_name, ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(pki.ca_key, ca_key)
    _write_cert(pki.ca_cert, ca)

    ips = [ipaddress.ip_address(ip) for ip in ("127.0.0.1", SERVICE_IP, *extra_ips)]
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in APISERVER_DNS]
    sans += [x509.IPAddress(ip) for ip in ips]
    serving_key = _key()
    serving = (
        _builder(_name("kube-apiserver"), ca_name, serving_key.public_key())
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(pki.serving_key, serving_key)
    _write_cert(pki.serving_cert, serving)

    etcd_key = _key()
    etcd = (
        _builder(_name("etcd"), ca_name, etcd_key.public_key())
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(pki.etcd_key, etcd_key)
    _write_cert(pki.etcd_cert, etcd)

    for who in CLIENT_IDENTITIES:
        key = _key()
        cert = (
            _builder(_name(who.user, who.groups), ca_name, key.public_key())
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write_key(pki.client_key(who), key)
        _write_cert(pki.client_cert(who), cert)

    sa_key = _key()
    _write_key(pki.sa_key, sa_key)
    pki.sa_pub.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return pki
