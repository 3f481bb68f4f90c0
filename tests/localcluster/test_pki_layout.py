"""Generated certificates and the control plane's command lines and kubeconfigs."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key
from cryptography.x509.oid import NameOID

from neuron_localcluster import layout, pki
from neuron_localcluster.binaries import Binaries


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> pki.Pki:
    return pki.generate(tmp_path_factory.mktemp("pki"))


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_serving_certificate_covers_loopback_and_service_names(keys: pki.Pki) -> None:
    cert = _cert(keys.serving_cert)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in sans.get_values_for_type(x509.IPAddress)
    assert "kubernetes.default.svc" in sans.get_values_for_type(x509.DNSName)


@pytest.mark.parametrize(
    "who", pki.CLIENT_IDENTITIES, ids=[w.file_stem for w in pki.CLIENT_IDENTITIES]
)
def test_client_certificates_are_signed_by_the_ca(keys: pki.Pki, who: pki.Identity) -> None:
    ca = _cert(keys.ca_cert)
    cert = _cert(keys.client_cert(who))
    cert.verify_directly_issued_by(ca)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == who.user
    orgs = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    assert orgs == list(who.groups)


def test_keys_are_private_and_sa_pair_matches(keys: pki.Pki) -> None:
    assert keys.sa_key.stat().st_mode & 0o077 == 0
    private = load_pem_private_key(keys.sa_key.read_bytes(), None)
    public = load_pem_public_key(keys.sa_pub.read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert private.public_key().public_numbers() == public.public_numbers()  # type: ignore[union-attr]


def _setup(tmp_path: Path) -> tuple[Binaries, layout.Layout, layout.Ports]:
    bins = Binaries(*(tmp_path / n for n in ("a", "cm", "s", "e", "k")))
    return bins, layout.Layout(tmp_path / "state"), layout.Ports(1, 2, 3, 4, 5, 6)


def test_apiserver_enables_rbac_podsecurity_and_token_signing(tmp_path: Path) -> None:
    bins, lay, ports = _setup(tmp_path)
    args = layout.apiserver_args(bins, lay, ports)
    assert "--authorization-mode=Node,RBAC" in args
    assert any(a.startswith("--enable-admission-plugins=") and "PodSecurity" in a for a in args)
    assert f"--service-account-signing-key-file={lay.pki.sa_key}" in args
    assert "--bind-address=127.0.0.1" in args
    assert "--etcd-servers=https://127.0.0.1:2" in args
    assert f"--etcd-certfile={lay.pki.client_cert(pki.ETCD_CLIENT)}" in args


def test_etcd_serves_tls_to_certified_clients_only(tmp_path: Path) -> None:
    bins, lay, ports = _setup(tmp_path)
    args = layout.etcd_args(bins, lay, ports)
    assert "--client-cert-auth=true" in args
    assert f"--trusted-ca-file={lay.pki.ca_cert}" in args
    assert "--listen-client-urls=https://127.0.0.1:2" in args


def test_controller_manager_signs_per_controller_credentials(tmp_path: Path) -> None:
    bins, lay, ports = _setup(tmp_path)
    args = layout.controller_manager_args(bins, lay, ports)
    assert "--use-service-account-credentials=true" in args
    assert f"--service-account-private-key-file={lay.pki.sa_key}" in args
    assert "--bind-address=127.0.0.1" in args


def test_kwok_manages_only_annotated_nodes(tmp_path: Path) -> None:
    bins, lay, ports = _setup(tmp_path)
    args = layout.kwok_args(bins, lay, ports)
    assert "--manage-all-nodes=false" in args
    assert "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake" in args


def test_every_component_listens_on_loopback_only(tmp_path: Path) -> None:
    bins, lay, ports = _setup(tmp_path)
    every = [
        *layout.etcd_args(bins, lay, ports),
        *layout.apiserver_args(bins, lay, ports),
        *layout.controller_manager_args(bins, lay, ports),
        *layout.scheduler_args(bins, lay, ports),
        *layout.kwok_args(bins, lay, ports),
    ]
    addresses = [a.split("=", 1)[1] for a in every if "address" in a.split("=")[0] or "urls" in a]
    assert addresses
    assert all(not a or "127.0.0.1" in a for a in addresses), addresses


def test_kubeconfig_round_trips_through_yaml(keys: pki.Pki) -> None:
    data = yaml.safe_load(
        layout.dump_yaml(layout.kubeconfig("https://127.0.0.1:6443", keys, pki.ADMIN))
    )
    assert data["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:6443"
    assert data["users"][0]["user"]["client-certificate"] == str(keys.client_cert(pki.ADMIN))
    assert data["current-context"] == layout.CLUSTER_NAME


def test_state_dir_honours_the_env(tmp_path: Path) -> None:
    assert layout.default_state_dir({"NEURON_GROUPS_CLUSTER_DIR": str(tmp_path)}) == tmp_path
    assert layout.default_state_dir({}).name == ".cluster"
