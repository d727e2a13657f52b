"""An SROS2 keystore for the runtime's nodes, written without ``ros2 security`` (sros2 does not install here).

The files and formats are sros2's, which rcl looks up under ``ROS_SECURITY_KEYSTORE`` and Fast DDS's builtin
plugins (PKI-DH, Permissions, AES-GCM-GMAC) read, where Fast DDS is built with them (docs/design.md#sros2)::

    public/ca.cert.pem, identity_ca.cert.pem -> ca.cert.pem, permissions_ca.cert.pem -> ca.cert.pem
    private/ca.key.pem, identity_ca.key.pem -> ca.key.pem, permissions_ca.key.pem -> ca.key.pem
    enclaves/governance.xml, governance.p7s (S/MIME, signed by the permissions CA)
    enclaves/vla_driver/<node>/cert.pem, key.pem (CN = the enclave path), permissions.xml, permissions.p7s,
        identity_ca.cert.pem, permissions_ca.cert.pem, governance.p7s (links to the shared files)

ECDSA P-256 keys and SHA-256 signatures, as DDS-Security 9.3.1 and sros2. Each node's grant allows exactly
the topics :data:`NODE_TOPICS` lists, so that only the action node may publish ``trajectory`` and only the
controller ``cmd_vel``; everything else is denied, and a participant without credentials may not join.
"""
from __future__ import annotations

import datetime
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from vla_driver.core.camera_rig import camera_topic as rig_camera_topic
from vla_driver.model.signing import write_private_key

from .camera_set import LEGACY_CAMERA, PRESET_CAMERAS, camera_topic

ENCLAVE_ROOT = "/vla_driver"
DEFAULT_DAYS = 3650  # sros2's certificate lifetime
CA_NAME = "vla_driver keystore CA"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
SCHEMA = "http://www.omg.org/spec/DDS-SECURITY/20170901/omg_shared_ca_{}.xsd"
ET.register_namespace("xsi", XSI)
Identity = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]  # a certificate and its private key


@dataclass(frozen=True)
class NodeTopics:
    """A node's topics as the node names them: relative (to its namespace), absolute, or ``~/`` private."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


# every camera a preset rig may have (the node subscribes its rig's), and the top-down models' one
CAMERAS = (LEGACY_CAMERA, *(camera_topic(name) for name in PRESET_CAMERAS))
CAMERA_INFOS = tuple(rig_camera_topic(name, "camera_info") for name in PRESET_CAMERAS)
# what every node has: /diagnostics (NodeDiagnostics); from rclpy parameter events, its log, sim time
EVERY_NODE = NodeTopics(publish=("/diagnostics", "/parameter_events", "/rosout"), subscribe=("/clock",))
# the services rclpy starts on every node, answered (``~/<service>``)
NODE_SERVICES = ("describe_parameters", "get_parameter_types", "get_parameters", "get_type_description",
                 "list_parameters", "set_parameters", "set_parameters_atomically")
NODE_TOPICS = {
    "decision_node": NodeTopics(publish=("decision",), subscribe=(*CAMERAS, "odom", "navigation")),
    "action_node": NodeTopics(publish=("trajectory", "trajectory_markers"),
                              subscribe=(*CAMERAS, "odom", "navigation", "decision")),
    "controller_node": NodeTopics(publish=("cmd_vel",), subscribe=("trajectory", "odom")),
    "logger_node": NodeTopics(publish=(), subscribe=(
        *CAMERAS, *CAMERA_INFOS, "odom", "navigation", "decision", "trajectory", "cmd_vel", "/vla/takeover",
        "/vla/events", "/diagnostics", "~/keep")),
    "sim_bridge_node": NodeTopics(publish=("/clock", *CAMERAS, *CAMERA_INFOS, "odom", "navigation",
                                           "episode"), subscribe=("cmd_vel",)),
}


class KeystoreError(ValueError):
    """A keystore that cannot be written as asked (one line for the command)."""


def enclave_path(node: str) -> str:
    """The enclave a node runs in (``--ros-args --enclave``), also its certificate's common name."""
    return f"{ENCLAVE_ROOT}/{node}"


def qualified_name(name: str, node: str) -> str:
    """A node's topic name as rcl expands it in the root namespace: ``odom`` -> ``/odom``, ``~/keep`` ->
    ``/<node>/keep``."""
    if name.startswith("~"):
        return f"/{node}{name[1:]}"
    return name if name.startswith("/") else f"/{name}"


def _uses(node: str, name: str) -> bool:
    topics = NODE_TOPICS[node]
    return qualified_name(name, node) in {qualified_name(t, node) for t in topics.publish + topics.subscribe}


def _check_remaps(remaps: dict[str, str]) -> None:
    """A remap that names no topic of any node is a typo: refused rather than silently granting nothing."""
    for old, new in remaps.items():
        if not any(_uses(node, old) for node in NODE_TOPICS):
            raise KeystoreError(f"remap {old}:={new}: no node uses a topic {old!r}")


def dds_grant(node: str, remaps: dict[str, str] | None = None) -> tuple[list[str], list[str]]:
    """The DDS topics (rt/ topics, the rq/ and rr/ topics of the node's services, rmw's ros_discovery_info)
    ``node`` may publish and subscribe, sorted. ``remaps`` renames topics as a launch file does (``cmd_vel``:
    ``/carla/ego_vehicle/twist``), so that the grant names the topics the node really uses."""
    renamed = {qualified_name(old, node): qualified_name(new, node) for old, new in (remaps or {}).items()}

    def rt(names):
        return {"rt" + renamed.get(qualified_name(n, node), qualified_name(n, node)) for n in names}

    topics = NODE_TOPICS[node]
    services = [f"/{node}/{service}" for service in NODE_SERVICES]
    publish = rt(topics.publish + EVERY_NODE.publish) | {f"rr{s}Reply" for s in services}
    subscribe = rt(topics.subscribe + EVERY_NODE.subscribe) | {f"rq{s}Request" for s in services}
    return sorted(publish | {"ros_discovery_info"}), sorted(subscribe | {"ros_discovery_info"})


def _element(parent: ET.Element, tag: str, text: str | None = None) -> ET.Element:
    child = ET.SubElement(parent, tag)
    child.text = text
    return child


def _dds_document(kind: str) -> ET.Element:
    return ET.Element("dds", {f"{{{XSI}}}noNamespaceSchemaLocation": SCHEMA.format(kind)})


def _xml_bytes(root: ET.Element) -> bytes:
    ET.indent(root)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, xml_declaration=False) + b"\n"


def governance_xml(domain_id: int) -> bytes:
    """sros2's default governance: no unauthenticated participants, join access control, and discovery,
    liveliness, RTPS and every topic's metadata and data encrypted, with read and write access control."""
    root = _dds_document("governance")
    rule = _element(_element(root, "domain_access_rules"), "domain_rule")
    _element(_element(rule, "domains"), "id", str(domain_id))
    for tag, value in (("allow_unauthenticated_participants", "false"),
                       ("enable_join_access_control", "true"), ("discovery_protection_kind", "ENCRYPT"),
                       ("liveliness_protection_kind", "ENCRYPT"), ("rtps_protection_kind", "ENCRYPT")):
        _element(rule, tag, value)
    topic_rule = _element(_element(rule, "topic_access_rules"), "topic_rule")
    for tag, value in (("topic_expression", "*"), ("enable_discovery_protection", "true"),
                       ("enable_liveliness_protection", "true"), ("enable_read_access_control", "true"),
                       ("enable_write_access_control", "true"), ("metadata_protection_kind", "ENCRYPT"),
                       ("data_protection_kind", "ENCRYPT")):
        _element(topic_rule, tag, value)
    return _xml_bytes(root)


def permissions_xml(node: str, cert: x509.Certificate, domain_id: int,
                    remaps: dict[str, str] | None = None) -> bytes:
    """The node's one grant: its certificate's subject and validity, its topics allowed, the rest denied."""
    root = _dds_document("permissions")
    grant = ET.SubElement(_element(root, "permissions"), "grant", {"name": enclave_path(node)})
    _element(grant, "subject_name", cert.subject.rfc4514_string())
    validity = _element(grant, "validity")
    _element(validity, "not_before", cert.not_valid_before_utc.isoformat())
    _element(validity, "not_after", cert.not_valid_after_utc.isoformat())
    rule = _element(grant, "allow_rule")
    _element(_element(rule, "domains"), "id", str(domain_id))
    for action, topics in zip(("publish", "subscribe"), dds_grant(node, remaps), strict=True):
        listed = _element(_element(rule, action), "topics")
        for topic in topics:
            _element(listed, "topic", topic)
    _element(grant, "default", "DENY")
    return _xml_bytes(root)


def smime_sign(data: bytes, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bytes:
    """Clear-signed S/MIME (text/plain, detached signature), the form Fast DDS reads governance and
    permissions in."""
    options = [pkcs7.PKCS7Options.Text, pkcs7.PKCS7Options.DetachedSignature]
    return (pkcs7.PKCS7SignatureBuilder().set_data(data).add_signer(cert, key, hashes.SHA256())
            .sign(serialization.Encoding.SMIME, options))


def _certificate(common_name: str, days: int, issuer: Identity | None) -> Identity:
    """A new P-256 key and its certificate: the self-signed CA without ``issuer``, else signed by it."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    issuer_name, signing_key = (subject, key) if issuer is None else (issuer[0].subject, issuer[1])
    is_ca = issuer is None
    constraints = x509.BasicConstraints(ca=is_ca, path_length=1 if is_ca else None)
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=days))
               .add_extension(constraints, critical=is_ca))
    return builder.sign(signing_key, hashes.SHA256()), key


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _link(path: Path, target: Path) -> None:
    """A relative symlink, as sros2 makes them: the keystore can be moved as a whole."""
    path.symlink_to(os.path.relpath(target, path.parent))


def _write_enclave(root: Path, node: str, ca: Identity, days: int, domain_id: int,
                   remaps: dict[str, str] | None) -> Path:
    folder = root / "enclaves" / enclave_path(node).lstrip("/")
    folder.mkdir(parents=True)
    cert, key = _certificate(enclave_path(node), days, ca)
    _write_cert(folder / "cert.pem", cert)
    write_private_key(folder / "key.pem", key)
    for name in ("identity_ca.cert.pem", "permissions_ca.cert.pem"):
        _link(folder / name, root / "public" / name)
    _link(folder / "governance.p7s", root / "enclaves" / "governance.p7s")
    permissions = permissions_xml(node, cert, domain_id, remaps)
    (folder / "permissions.xml").write_bytes(permissions)
    (folder / "permissions.p7s").write_bytes(smime_sign(permissions, *ca))
    return folder


def create_keystore(root: Path, days: int = DEFAULT_DAYS, domain_id: int = 0,
                    remaps: dict[str, str] | None = None) -> list[Path]:
    """Write a new keystore with one enclave per node of :data:`NODE_TOPICS`; returns the enclave folders.

    One CA is both identity and permissions CA, as sros2 makes it. An existing non-empty ``root`` is refused:
    a second CA would leave the nodes already deployed unable to authenticate each other."""
    root = Path(root)
    if days < 1:
        raise KeystoreError(f"--days must be at least 1, got {days}")
    if not 0 <= domain_id <= 232:
        raise KeystoreError(f"the domain id must be 0..232 (ROS 2's range), got {domain_id}")
    _check_remaps(remaps or {})
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise KeystoreError(f"{root} exists and is not an empty directory; not replacing a keystore")
    for folder in ("public", "private", "enclaves"):
        (root / folder).mkdir(parents=True)
    ca = _certificate(CA_NAME, days, None)
    _write_cert(root / "public" / "ca.cert.pem", ca[0])
    write_private_key(root / "private" / "ca.key.pem", ca[1])
    for role in ("identity_ca", "permissions_ca"):
        _link(root / "public" / f"{role}.cert.pem", root / "public" / "ca.cert.pem")
        _link(root / "private" / f"{role}.key.pem", root / "private" / "ca.key.pem")
    governance = governance_xml(domain_id)
    (root / "enclaves" / "governance.xml").write_bytes(governance)
    (root / "enclaves" / "governance.p7s").write_bytes(smime_sign(governance, *ca))
    return [_write_enclave(root, node, ca, days, domain_id, remaps) for node in NODE_TOPICS]
