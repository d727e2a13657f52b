"""SROS2: the keystore ``vla-driver keystore create`` writes, and what Fast DDS does with it.

The files are checked as sros2 and Fast DDS read them: certificates chain to the CA, S/MIME signatures verify
with ``openssl smime`` over exactly the XML, the permissions have the DDS-Security shape and grant each node
exactly the topics it creates (read off the real nodes' graph). Then a node is started with the keystore:
on the PyPI wheels' Fast DDS (built without security) Enforce must refuse to start it; on a Fast DDS with the
security plugins (Debian's ros-jazzy-fastrtps) an uncredentialed publisher must not be heard on trajectory.
"""
import datetime
import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
import rclpy
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from rclpy.parameter import Parameter

from vla_driver.cli import main as cli_main
from vla_driver.nodes.action_node import ActionNode
from vla_driver.nodes.controller_node import ControllerNode
from vla_driver.nodes.decision_node import DecisionNode
from vla_driver.nodes.logger_node import LoggerNode
from vla_driver.nodes.security import (
    CAMERA_INFOS,
    CAMERAS,
    NODE_TOPICS,
    XSI,
    create_keystore,
    dds_grant,
    enclave_path,
    qualified_name,
)
from vla_driver.nodes.sim_bridge_node import SimBridgeNode

DOMAIN_ID = 231  # distinct from the other ROS test files
DAYS = 30
PROBE = Path(__file__).with_name("security_probe.py")
NO_SECURITY_LIBRARIES = "This Fast DDS version doesn't have the security libraries"
OUTPUTS = {"rt/decision": "decision_node", "rt/trajectory": "action_node", "rt/cmd_vel": "controller_node"}
SECURITY_ENV = ("ROS_SECURITY_ENABLE", "ROS_SECURITY_STRATEGY", "ROS_SECURITY_KEYSTORE",
                "ROS_SECURITY_ENCLAVE_OVERRIDE")


@pytest.fixture(scope="module")
def keystore(tmp_path_factory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("sros2")  # removed afterwards: pytest keeps module fixtures' folders
    create_keystore(folder / "keystore", days=DAYS, domain_id=DOMAIN_ID)
    yield folder / "keystore"
    shutil.rmtree(folder)


def enclave_dir(keystore: Path, node: str) -> Path:
    return keystore / "enclaves" / enclave_path(node).lstrip("/")


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def grant_topics(grant: ET.Element, action: str) -> list[str]:
    return [t.text for t in grant.findall(f"allow_rule/{action}/topics/topic")]


def test_certificates_chain_to_the_ca_with_the_enclave_as_common_name(keystore):
    ca = load_cert(keystore / "public" / "ca.cert.pem")
    ca.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for role in ("identity_ca", "permissions_ca"):  # one CA for both, linked as sros2 links them
        assert (keystore / "public" / f"{role}.cert.pem").resolve() == (keystore / "public" / "ca.cert.pem")
        assert (keystore / "private" / f"{role}.key.pem").resolve() == (keystore / "private" / "ca.key.pem")
    now = datetime.datetime.now(datetime.timezone.utc)
    for node in NODE_TOPICS:
        folder = enclave_dir(keystore, node)
        cert = load_cert(folder / "cert.pem")
        cert.verify_directly_issued_by(ca)
        assert cert.subject.rfc4514_string() == f"CN={enclave_path(node)}"
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        assert isinstance(cert.public_key().curve, ec.SECP256R1)
        assert cert.not_valid_before_utc <= now < cert.not_valid_after_utc
        assert cert.not_valid_after_utc - cert.not_valid_before_utc == datetime.timedelta(days=DAYS)
        key = serialization.load_pem_private_key((folder / "key.pem").read_bytes(), None)
        assert key.public_key() == cert.public_key()
        assert (folder / "key.pem").stat().st_mode & 0o777 == 0o600
        for name in ("identity_ca.cert.pem", "permissions_ca.cert.pem"):
            assert (folder / name).resolve() == keystore / "public" / "ca.cert.pem"
        assert (folder / "governance.p7s").resolve() == keystore / "enclaves" / "governance.p7s"


def signed_files(keystore: Path) -> list[Path]:
    return [keystore / "enclaves" / "governance.xml",
            *(enclave_dir(keystore, node) / "permissions.xml" for node in NODE_TOPICS)]


def smime_verify(p7s: Path, ca: Path) -> subprocess.CompletedProcess:
    """openssl's S/MIME verification, as Fast DDS does it (text mode: the text/plain header is stripped)."""
    return subprocess.run(["openssl", "smime", "-verify", "-text", "-in", str(p7s), "-CAfile", str(ca)],
                          capture_output=True, timeout=30)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl CLI to verify S/MIME signatures with")
def test_governance_and_permissions_are_signed_by_the_permissions_ca_over_exactly_the_xml(keystore, tmp_path):
    ca = keystore / "public" / "permissions_ca.cert.pem"
    for xml in signed_files(keystore):
        verified = smime_verify(xml.with_suffix(".p7s"), ca)
        assert verified.returncode == 0, verified.stderr.decode()
        assert verified.stdout.replace(b"\r\n", b"\n") == xml.read_bytes()  # S/MIME canonical text is CRLF
    signed = (enclave_dir(keystore, "logger_node") / "permissions.p7s").read_bytes()
    forged = tmp_path / "permissions.p7s"  # the logger granting itself trajectory: the signature breaks
    forged.write_bytes(signed.replace(b"<topic>rt/trajectory</topic>", b"<topic>rt/trajectorx</topic>"))
    assert forged.read_bytes() != signed
    assert smime_verify(forged, ca).returncode != 0


def test_governance_is_sros2s_default_for_the_domain(keystore):
    root = ET.parse(keystore / "enclaves" / "governance.xml").getroot()
    assert root.tag == "dds" and root.get(f"{{{XSI}}}noNamespaceSchemaLocation").endswith("governance.xsd")
    [rule] = root.findall("domain_access_rules/domain_rule")
    assert [d.text for d in rule.findall("domains/id")] == [str(DOMAIN_ID)]
    settings = {e.tag: e.text for e in rule if e.tag not in ("domains", "topic_access_rules")}
    assert settings == {"allow_unauthenticated_participants": "false", "enable_join_access_control": "true",
                        "discovery_protection_kind": "ENCRYPT", "liveliness_protection_kind": "ENCRYPT",
                        "rtps_protection_kind": "ENCRYPT"}
    [topic_rule] = rule.findall("topic_access_rules/topic_rule")
    assert {e.tag: e.text for e in topic_rule} == {
        "topic_expression": "*", "enable_discovery_protection": "true", "enable_liveliness_protection": "true",
        "enable_read_access_control": "true", "enable_write_access_control": "true",
        "metadata_protection_kind": "ENCRYPT", "data_protection_kind": "ENCRYPT"}


def test_permissions_have_the_dds_security_shape_and_each_nodes_topics(keystore):
    for node in NODE_TOPICS:
        folder = enclave_dir(keystore, node)
        cert = load_cert(folder / "cert.pem")
        root = ET.parse(folder / "permissions.xml").getroot()
        assert root.tag == "dds" and [c.tag for c in root] == ["permissions"]
        assert root.get(f"{{{XSI}}}noNamespaceSchemaLocation").endswith("permissions.xsd")
        [grant] = root.findall("permissions/grant")
        assert grant.get("name") == enclave_path(node)
        assert [c.tag for c in grant] == ["subject_name", "validity", "allow_rule", "default"]
        assert grant.findtext("subject_name") == cert.subject.rfc4514_string()
        validity = [grant.findtext(f"validity/{t}") for t in ("not_before", "not_after")]
        assert [datetime.datetime.fromisoformat(v) for v in validity] == [cert.not_valid_before_utc,
                                                                          cert.not_valid_after_utc]
        assert [c.tag for c in grant.find("allow_rule")] == ["domains", "publish", "subscribe"]
        assert [d.text for d in grant.findall("allow_rule/domains/id")] == [str(DOMAIN_ID)]
        assert grant.findtext("default") == "DENY"
        publish, subscribe = grant_topics(grant, "publish"), grant_topics(grant, "subscribe")
        assert (publish, subscribe) == dds_grant(node)
        assert not any("*" in t or "?" in t for t in publish + subscribe)  # no wildcards: exactly these topics


def test_only_the_runtimes_own_nodes_publish_decision_trajectory_and_cmd_vel(keystore):
    publishers = {}
    for node in NODE_TOPICS:
        grant = ET.parse(enclave_dir(keystore, node) / "permissions.xml").getroot().find("permissions/grant")
        for topic in grant_topics(grant, "publish"):
            publishers.setdefault(topic, set()).add(node)
    assert {topic: publishers[topic] for topic in OUTPUTS} == {t: {node} for t, node in OUTPUTS.items()}
    assert publishers["rt/clock"] == {"sim_bridge_node"}
    # credentials exist for the nodes' enclaves only (sros2 lists enclaves by their key.pem): a node started
    # without --enclave, or in any other enclave, has none
    keys = keystore.glob("enclaves/**/key.pem")
    enclaves = {f"/{key.parent.relative_to(keystore / 'enclaves').as_posix()}" for key in keys}
    assert enclaves == {enclave_path(node) for node in NODE_TOPICS}


def test_remapped_topics_are_granted_under_their_new_names(tmp_path):
    create_keystore(tmp_path / "carla", days=1, domain_id=DOMAIN_ID,
                    remaps={"cmd_vel": "/carla/ego_vehicle/twist", "trajectory": "/vla_driver/trajectory"})
    grant = ET.parse(enclave_dir(tmp_path / "carla", "controller_node") / "permissions.xml").getroot()
    publish, subscribe = (grant_topics(grant.find("permissions/grant"), a) for a in ("publish", "subscribe"))
    assert "rt/carla/ego_vehicle/twist" in publish and "rt/cmd_vel" not in publish
    assert "rt/vla_driver/trajectory" in subscribe and "rt/trajectory" not in subscribe


def test_keystore_command_writes_once_and_refuses_in_one_line(tmp_path, capsys):
    target = tmp_path / "keystore"
    assert cli_main(["keystore", "create", str(target), "--days", "1", "--domain-id", str(DOMAIN_ID)]) == 0
    assert "ROS_SECURITY_ENABLE=true" in capsys.readouterr().out
    new = str(tmp_path / "new")
    for argv in ([str(target)], [new, "--days", "0"], [new, "--remap", "x:=/y"], [new, "--domain-id", "233"]):
        assert cli_main(["keystore", "create", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("keystore: ") and err.count("\n") == 1, err
    assert not (tmp_path / "new").exists()


@pytest.fixture(scope="module")
def node_graph(tmp_path_factory) -> dict[str, tuple[set[str], set[str]]]:
    """The DDS topics each node really writes and reads (its services' rr/ and rq/ included), read off the
    ROS graph with the launch files' defaults (sim time, the embedded model's front rig)."""
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=DOMAIN_ID)
    sim_time = Parameter("use_sim_time", value=True)
    experience = tmp_path_factory.mktemp("experience")
    log_dir = Parameter("output_dir", value=str(experience))
    nodes = []
    try:
        for node_cls, extra in ((DecisionNode, []), (ActionNode, []), (ControllerNode, []),
                                (LoggerNode, [log_dir]), (SimBridgeNode, [])):
            nodes.append(node_cls(context=context, parameter_overrides=[sim_time, *extra]))
        graph = nodes[0]
        return {n.get_name(): (
            {"rt" + t for t, _ in graph.get_publisher_names_and_types_by_node(n.get_name(), "/")}
            | {f"rr{s}Reply" for s, _ in graph.get_service_names_and_types_by_node(n.get_name(), "/")},
            {"rt" + t for t, _ in graph.get_subscriber_names_and_types_by_node(n.get_name(), "/")}
            | {f"rq{s}Request" for s, _ in graph.get_service_names_and_types_by_node(n.get_name(), "/")},
        ) for n in nodes}
    finally:
        for node in nodes:
            node.destroy_node()
        rclpy.try_shutdown(context=context)
        shutil.rmtree(experience)


def test_each_grant_is_exactly_what_the_node_creates_plus_the_other_rigs_cameras(node_graph):
    assert set(node_graph) == set(NODE_TOPICS)
    for node, (writes, reads) in node_graph.items():
        other_cameras = {"rt" + qualified_name(t, node) for t in CAMERAS + CAMERA_INFOS}
        for granted, used in zip(dds_grant(node), (writes, reads), strict=True):
            assert used <= set(granted), f"{node} would be denied {used - set(granted)}"
            unused = set(granted) - used - {"ros_discovery_info"}
            assert unused <= other_cameras, f"{node} is granted {unused - other_cameras} it does not use"


def probe(role: str, node: str, frame_id: str, seconds: float, keystore: Path | None, enclave: str = "",
          strategy: str = "Enforce") -> subprocess.Popen:
    """A security_probe process: with ``keystore``, security on under ``strategy`` in ``enclave``; without,
    security off (and no enclave unless given)."""
    env = {k: v for k, v in os.environ.items() if k not in SECURITY_ENV}
    env.update(ROS_DOMAIN_ID=str(DOMAIN_ID), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    if keystore is not None:
        env.update(ROS_SECURITY_ENABLE="true", ROS_SECURITY_STRATEGY=strategy,
                   ROS_SECURITY_KEYSTORE=str(keystore))
    ros_args = ["--ros-args", "--enclave", enclave] if enclave else []
    return subprocess.Popen([sys.executable, str(PROBE), role, node, frame_id, str(seconds), *ros_args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def outcome(process: subprocess.Popen, timeout_s: float = 60) -> dict:
    out, err = process.communicate(timeout=timeout_s)
    assert out.strip(), err
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def credentialed_start(keystore) -> dict:
    """The controller's credentials under Enforce: does the node start, and on which Fast DDS."""
    return outcome(probe("listen", "controller_node", "", 0, keystore, enclave_path("controller_node")))


def has_security_plugins(fast_dds: str) -> bool:
    assert fast_dds, "the probe loaded no Fast DDS library (is RMW_IMPLEMENTATION another rmw?)"
    return b"DDS:Auth:PKI-DH" in Path(fast_dds).read_bytes()


def test_enforce_refuses_to_start_a_node_on_a_fast_dds_without_security(keystore, credentialed_start):
    fast_dds = credentialed_start["fast_dds"]
    if has_security_plugins(fast_dds):
        pytest.skip(f"{fast_dds} has the security plugins: the next test checks what they enforce")
    # the PyPI ros-jazzy wheels: no plugins in the library, and the rmw says so instead of running unsecured
    assert not credentialed_start["started"]
    error = credentialed_start["error"]
    assert NO_SECURITY_LIBRARIES in error and "-DSECURITY=ON" in error
    library = Path(fast_dds).read_bytes()
    assert b"DDS:Access:Permissions" not in library and b"DDS:Crypto:AES-GCM-GMAC" not in library
    # an enclave without credentials is refused earlier, by rcl; Permissive runs such a node unsecured
    stranger = outcome(probe("listen", "stranger", "", 0, keystore, "/vla_driver/stranger"))
    assert not stranger["started"]
    assert "SECURITY ERROR: directory" in stranger["error"], stranger
    assert "enclaves/vla_driver/stranger' does not exist" in stranger["error"], stranger
    assert outcome(probe("listen", "stranger", "", 0, keystore, "/vla_driver/stranger", "Permissive"))["started"]
    # with security off the launch files' --enclave changes nothing
    assert outcome(probe("listen", "controller_node", "", 0, None, enclave_path("controller_node")))["started"]


def test_an_uncredentialed_publisher_is_not_heard_on_trajectory_while_the_nodes_communicate(keystore,
                                                                                          credentialed_start):
    fast_dds = credentialed_start["fast_dds"]
    if not has_security_plugins(fast_dds):
        pytest.skip(f"{fast_dds} is built without DDS Security (no DDS:Auth:PKI-DH plugin, as in the PyPI "
                    "ros-jazzy wheels); this runs on a Fast DDS built with -DSECURITY=ON (Debian ros-jazzy)")
    assert credentialed_start["started"], credentialed_start
    listener = probe("listen", "controller_node", "", 12, keystore, enclave_path("controller_node"))
    talkers = [probe("talk", "action_node", "action_node", 10, keystore, enclave_path("action_node")),
               # credentials, but no grant to publish trajectory
               probe("talk", "logger_node", "logger_node", 10, keystore, enclave_path("logger_node")),
               probe("talk", "intruder", "intruder", 10, None)]  # no credentials at all
    heard = outcome(listener)["received"]
    for talker in talkers:
        talker.communicate(timeout=60)
    assert heard.get("action_node", 0) > 0, heard
    assert "logger_node" not in heard and "intruder" not in heard, heard
