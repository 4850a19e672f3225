"""deploy/kubernetes, checked as strictly as can be without a cluster.

* Every object, in every YAML file and in what ``kubectl kustomize`` renders from the base and
  the overlay, parses into the official ``kubernetes`` client's typed models with no unknown
  field (the client itself ignores unknown fields: :func:`typed` refuses them) and passes the
  models' own checks (required fields, enums).
* cert-manager's Issuer and Certificate have no typed model there: their fields are checked
  against the table below (cert-manager.io/v1, every field name and enum value these
  manifests may use), and each Certificate's key against what link and node accept
  (:func:`flwrmtls.wire.credentials.tls_key_problem`: tests/deploy/test_certmanager_keys.py
  runs each such key through a real link and node).
* Container commands are the console scripts; their args parse with the entry points' own
  argparse parsers; every file flag names a file a mounted volume holds (a cert-manager
  Secret's ``tls.crt``, ``tls.key`` or ``ca.crt``, the CRL ConfigMap's directory); state flags
  name a writable volume; probe and scrape ports are the flags' ports; nodes dial the link's
  Service by a name its certificate holds.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes.client.models as k8s
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from flwrmtls.link.main import parser as link_parser
from flwrmtls.node.main import parser as node_parser
from flwrmtls.wire.credentials import tls_key_problem
from tests.pki.openssl_tools import REPOSITORY_ROOT

KUBERNETES = REPOSITORY_ROOT / "deploy" / "kubernetes"
KUSTOMIZATIONS = [KUBERNETES / "base", KUBERNETES / "overlays" / "federation"]

_TYPED = {
    ("v1", "Namespace"): k8s.V1Namespace,
    ("v1", "Service"): k8s.V1Service,
    ("v1", "ConfigMap"): k8s.V1ConfigMap,
    ("v1", "Secret"): k8s.V1Secret,
    ("apps/v1", "Deployment"): k8s.V1Deployment,
    ("apps/v1", "StatefulSet"): k8s.V1StatefulSet,
    ("networking.k8s.io/v1", "NetworkPolicy"): k8s.V1NetworkPolicy,
}

_USAGES = {
    "signing", "digital signature", "content commitment", "key encipherment", "key agreement",
    "data encipherment", "cert sign", "crl sign", "encipher only", "decipher only", "any",
    "server auth", "client auth", "code signing", "email protection", "s/mime",
    "ipsec end system", "ipsec tunnel", "ipsec user", "timestamping", "ocsp signing",
    "microsoft sgc", "netscape sgc",
}  # fmt: skip
_LIST = "list"
_CERT_MANAGER: dict[str, Any] = {
    "Certificate": {
        "secretName": str, "commonName": str, "dnsNames": [str], "ipAddresses": [str],
        "uris": [str], "emailAddresses": [str], "literalSubject": str, "duration": str,
        "renewBefore": str, "renewBeforePercentage": int, "isCA": bool,
        "revisionHistoryLimit": int, "encodeUsagesInRequest": bool,
        "usages": [_USAGES],
        "subject": {
            "organizations": [str], "organizationalUnits": [str], "countries": [str],
            "provinces": [str], "localities": [str], "streetAddresses": [str],
            "postalCodes": [str], "serialNumber": str,
        },
        "privateKey": {
            "algorithm": {"RSA", "ECDSA", "Ed25519"}, "encoding": {"PKCS1", "PKCS8"},
            "size": int, "rotationPolicy": {"Never", "Always"},
        },
        "issuerRef": {"name": str, "kind": {"Issuer", "ClusterIssuer"}, "group": str},
        "secretTemplate": {"annotations": dict, "labels": dict},
    },
    "Issuer": {"ca": {"secretName": str, "crlDistributionPoints": [str],
                      "ocspServers": [str], "issuingCertificateURLs": [str]},
               "selfSigned": {"crlDistributionPoints": [str]}},
}  # fmt: skip
"""cert-manager.io/v1: the fields of Certificate.spec and Issuer.spec these manifests may use
(names and enums as cert-manager's API reference gives them)."""

_CERT_MANAGER_SECRET_FILES = {"tls.crt", "tls.key", "ca.crt"}
_WRITABLE_FLAGS = {"--database", "--state-dir"}


def _kustomize(directory: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with its built-in kustomize) is needed to render deploy/kubernetes"
    done = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, check=False,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def _files() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(KUBERNETES.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                yield str(path.relative_to(REPOSITORY_ROOT)), document


def _rendered() -> dict[str, list[dict[str, Any]]]:
    return {str(d.relative_to(REPOSITORY_ROOT)): _kustomize(d) for d in KUSTOMIZATIONS}


def typed(data: Any, kind: str, path: str) -> Any:
    """``data`` as the client's model ``kind`` (its ``openapi_types`` spelling), refusing a
    field the model does not have; the model's constructor checks required fields and enums."""
    if kind.lower().startswith("list["):
        assert isinstance(data, list), f"{path}: expected a list"
        return [typed(item, kind[5:-1], f"{path}[{i}]") for i, item in enumerate(data)]
    if kind.lower().startswith(("dict(", "dict[")):
        assert isinstance(data, dict), f"{path}: expected a mapping"
        value_kind = kind[5:-1].split(", ", 1)[1]
        return {key: typed(value, value_kind, f"{path}.{key}") for key, value in data.items()}
    scalar: dict[str, Callable[[Any], bool]] = {
        "str": lambda v: isinstance(v, str), "int": lambda v: isinstance(v, int),
        "bool": lambda v: isinstance(v, bool), "float": lambda v: isinstance(v, int | float),
        "object": lambda v: True, "datetime": lambda v: True,
    }  # fmt: skip
    if kind in scalar:
        assert scalar[kind](data), f"{path}: {data!r} is not a {kind}"
        return data
    model = getattr(k8s, kind)
    assert isinstance(data, dict), f"{path}: expected a {kind} mapping"
    by_json = {json_name: attr for attr, json_name in model.attribute_map.items()}
    unknown = sorted(set(data) - set(by_json))
    assert not unknown, f"{path}: {kind} has no field {', '.join(unknown)}"
    values = {
        by_json[key]: typed(value, model.openapi_types[by_json[key]], f"{path}.{key}")
        for key, value in data.items()
    }
    return model(**values)


def _cert_manager(data: Any, schema: Any, path: str) -> None:
    if schema is str or schema is int or schema is bool or schema is dict:
        assert isinstance(data, schema), f"{path}: {data!r} is not a {schema.__name__}"
    elif isinstance(schema, set):
        assert data in schema, f"{path}: {data!r} is not one of {sorted(schema)}"
    elif isinstance(schema, list):
        assert isinstance(data, list), f"{path}: expected a list"
        for i, item in enumerate(data):
            _cert_manager(item, schema[0], f"{path}[{i}]")
    else:
        assert isinstance(data, dict), f"{path}: expected a mapping"
        unknown = sorted(set(data) - set(schema))
        assert not unknown, f"{path}: no field {', '.join(unknown)} in cert-manager.io/v1"
        for key, value in data.items():
            _cert_manager(value, schema[key], f"{path}.{key}")


def _check_object(where: str, obj: dict[str, Any]) -> None:
    api, kind = obj.get("apiVersion"), obj.get("kind")
    name = f"{where}: {kind} {obj.get('metadata', {}).get('name')}"
    if api == "cert-manager.io/v1":
        assert kind in _CERT_MANAGER, f"{name}: not a kind these manifests expect"
        assert set(obj) <= {"apiVersion", "kind", "metadata", "spec"}, f"{name}: extra fields"
        typed(obj["metadata"], "V1ObjectMeta", f"{name}.metadata")
        _cert_manager(obj["spec"], _CERT_MANAGER[kind], f"{name}.spec")
        return
    model = _TYPED.get((str(api), str(kind)))
    assert model is not None, f"{name}: {api} {kind} has no typed model here"
    typed(obj, model.__name__, name)


def test_every_object_parses_into_typed_models_with_no_unknown_field() -> None:
    seen = 0
    for where, obj in _files():
        _check_object(where, obj)
        seen += 1
    for where, objects in _rendered().items():
        for obj in objects:
            _check_object(where, obj)
            seen += 1
    assert seen > 10


def test_the_strict_parse_refuses_what_the_client_would_ignore() -> None:
    """The control: the checks above fail on a misspelt field, in both kinds of object."""
    container = {"name": "c", "imagePullPolicy": "Always", "readinessprobe": {}}
    template = {"spec": {"containers": [container]}}
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
                  "spec": {"selector": {}, "template": template}}  # fmt: skip
    with pytest.raises(AssertionError, match="V1Container has no field readinessprobe"):
        _check_object("control", deployment)
    certificate: dict[str, Any] = {"apiVersion": "cert-manager.io/v1", "kind": "Certificate",
                   "metadata": {"name": "x"}, "spec": {"secretName": "s",
                   "issuerRef": {"name": "i"}, "privateKey": {"algorithm": "ECDSA",
                   "rotationpolicy": "Always"}}}  # fmt: skip
    with pytest.raises(AssertionError, match="no field rotationpolicy"):
        _check_object("control", certificate)
    certificate["spec"]["privateKey"] = {"algorithm": "ECDSA", "encoding": "PEM"}
    with pytest.raises(AssertionError, match="'PEM' is not one of"):
        _check_object("control", certificate)


def _objects(kind: str) -> list[dict[str, Any]]:
    return [o for o in _kustomize(KUSTOMIZATIONS[-1]) if o["kind"] == kind]


def _certificates() -> dict[str, dict[str, Any]]:
    return {c["spec"]["secretName"]: c for c in _objects("Certificate")}


def _key_of(spec: dict[str, Any]) -> object:
    key = spec.get("privateKey", {})
    algorithm, size = key.get("algorithm", "RSA"), key.get("size")
    if algorithm == "RSA":
        return rsa.generate_private_key(65537, size or 2048)
    if algorithm == "ECDSA":
        curve = {256: ec.SECP256R1(), 384: ec.SECP384R1(), 521: ec.SECP521R1()}[size or 256]
        return ec.generate_private_key(curve)
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519.Ed25519PrivateKey.generate()


def test_every_certificate_asks_for_a_key_link_and_node_accept() -> None:
    certificates = _certificates()
    assert certificates
    for secret, certificate in certificates.items():
        spec = certificate["spec"]
        assert tls_key_problem(_key_of(spec)) is None, f"{secret}: {spec['privateKey']}"
        assert spec["privateKey"].get("rotationPolicy") == "Always", secret
        assert spec["issuerRef"]["name"] in {i["metadata"]["name"] for i in _objects("Issuer")}


def _pods() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for kind in ("Deployment", "StatefulSet"):
        for workload in _objects(kind):
            yield workload["metadata"]["name"], workload, workload["spec"]["template"]


_PARSERS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "flwrmtls-superlink": link_parser,
    "flwrmtls-supernode": node_parser,
}


def _path_flags(parser: argparse.ArgumentParser) -> set[str]:
    return {
        action.option_strings[0] for action in parser._actions if action.type is Path
    } | _WRITABLE_FLAGS  # fmt: skip


def _flags(args: list[str]) -> dict[str, str]:
    pairs = (arg.split("=", 1) for arg in args)
    return {pair[0]: pair[1] if len(pair) == 2 else "" for pair in pairs}


def test_container_args_are_flags_the_entry_points_accept_and_paths_are_mounted() -> None:
    certificates = _certificates()
    services = {s["metadata"]["name"]: s for s in _objects("Service")}
    checked = 0
    for name, workload, template in _pods():
        pod = template["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        claims = {c["metadata"]["name"] for c in workload["spec"].get("volumeClaimTemplates", [])}
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        for container in pod["containers"]:
            [command] = container["command"]
            parser = _PARSERS[command]()
            args = container["args"]
            try:
                parser.parse_args(args)  # unknown flags and bad values exit
            except SystemExit as exit_:
                raise AssertionError(f"{name}: {command} refuses {args}") from exit_
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
            mounts = {PurePosixPath(m["mountPath"]): m for m in container["volumeMounts"]}
            assert PurePosixPath("/tmp") in mounts, f"{name}: no writable /tmp"
            flags = _flags(args)
            for flag in _path_flags(parser) & set(flags):
                value = PurePosixPath(flags[flag])
                mount_path = next((p for p in mounts if value == p or p in value.parents), None)
                assert mount_path is not None, f"{name}: {flag} {value} is on no volume"
                mount = mounts[mount_path]
                volume = volumes.get(mount["name"])
                if flag in _WRITABLE_FLAGS:
                    assert not mount.get("readOnly"), f"{name}: {flag} on a read-only mount"
                    assert mount["name"] in claims or "emptyDir" in (volume or {}), name
                    continue
                assert volume is not None, f"{name}: {flag}: no volume {mount['name']}"
                if "secret" in volume:
                    secret = volume["secret"]["secretName"]
                    assert secret in certificates, f"{name}: {flag}: no Certificate writes {secret}"
                    assert value.parent == mount_path, f"{name}: {flag} {value}"
                    assert value.name in _CERT_MANAGER_SECRET_FILES, f"{name}: {flag} {value}"
                else:
                    assert "configMap" in volume, f"{name}: {flag}: {volume}"
                    assert value == mount_path, f"{name}: {flag} names the ConfigMap's directory"
                checked += 1
            _ports_match(name, template, container, flags)
            if "--superlink" in flags:
                host, port = flags["--superlink"].rsplit(":", 1)
                service = services[host]
                assert int(port) in {p["port"] for p in service["spec"]["ports"]}, name
                link_secret = _link_secret()
                assert host in certificates[link_secret]["spec"]["dnsNames"], name
    assert checked >= 7


def _link_secret() -> str:
    [link] = _objects("StatefulSet")
    [volume] = [v for v in link["spec"]["template"]["spec"]["volumes"] if v["name"] == "tls"]
    return str(volume["secret"]["secretName"])


def _port(flags: dict[str, str], flag: str) -> int | None:
    return int(flags[flag].rsplit(":", 1)[1]) if flag in flags else None


def _ports_match(
    name: str, template: dict[str, Any], container: dict[str, Any], flags: dict[str, str]
) -> None:
    health = _port(flags, "--health-api-address")
    assert health is not None, f"{name}: no --health-api-address for its probes"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        if probe in container:
            assert container[probe]["grpc"]["port"] == health, f"{name}: {probe}"
    assert container["readinessProbe"]["grpc"]["service"] == "readiness", name
    assert container["livenessProbe"]["grpc"]["service"] == "liveness", name
    metrics = _port(flags, "--metrics-address")
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true", name
    assert int(annotations["prometheus.io/port"]) == metrics, name
    declared = {p["name"]: p["containerPort"] for p in container["ports"]}
    for flag, port_name in (("--fleet-api-address", "fleet"), ("--control-api-address", "control")):
        if flag in flags:
            assert declared[port_name] == _port(flags, flag), f"{name}: {flag}"
