"""Signed checkpoints: keys, signatures over the manifest, refusal at load, at hot swap and in the CLI."""
import json
import shutil
import stat

import pytest
from conftest import wait_until

from vla_driver.cli import main as cli
from vla_driver.model.checkpoint import CheckpointError, read_manifest
from vla_driver.model.signing import (
    SIGNATURE_FILE,
    generate_key,
    load_trusted_keys,
    sign_checkpoint,
    verify_signature,
)
from vla_driver.runtime.loading import load_policy

DOMAIN_ID = 171


@pytest.fixture()
def keys(tmp_path):
    owner, _ = generate_key(tmp_path / "keys" / "owner")
    stranger, _ = generate_key(tmp_path / "other" / "stranger")
    return owner, stranger


@pytest.fixture()
def signed(tiny_checkpoint, tmp_path, keys):
    ckpt = shutil.copytree(tiny_checkpoint, tmp_path / "signed")
    sign_checkpoint(ckpt, keys[0])
    return ckpt


def test_keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites(tmp_path, keys):
    owner, _ = keys
    assert stat.S_IMODE(owner.stat().st_mode) == 0o600
    assert (owner.parent / "owner.pub").read_text().startswith("ssh-ed25519 ")
    with pytest.raises(FileExistsError):
        generate_key(owner)
    assert cli(["keygen", str(owner)]) == 1


def test_a_signed_checkpoint_loads_with_its_key_and_is_refused_for_every_other_reason(signed, keys, tmp_path):
    owner, stranger = keys
    trusted = str(owner.parent)  # a directory of *.pub files, as the nodes' trusted_keys names one
    assert verify_signature(signed, load_trusted_keys(trusted)) == json.loads(
        (signed / SIGNATURE_FILE).read_text())["signatures"][0]["key_id"]
    assert load_policy(signed, "torch", threads=1, trusted_keys=trusted).model_version == \
        read_manifest(signed)["model_version"]

    with pytest.raises(CheckpointError, match="none of them trusted"):  # signed, by a key not trusted here
        load_policy(signed, "torch", threads=1, trusted_keys=f"{stranger}.pub")

    unsigned = shutil.copytree(signed, tmp_path / "unsigned")
    (unsigned / SIGNATURE_FILE).unlink()
    with pytest.raises(CheckpointError, match="unsigned"):
        load_policy(unsigned, "torch", threads=1, trusted_keys=trusted)
    assert load_policy(unsigned, "torch", threads=1).model_version  # without trusted keys hashes suffice

    forged = shutil.copytree(signed, tmp_path / "forged")  # the manifest edited after signing
    manifest = read_manifest(forged)
    manifest["metrics"] = {"driving_score": 0.99}
    (forged / "manifest.json").write_text(json.dumps(manifest, indent=2))
    with pytest.raises(CheckpointError, match="does not match the manifest"):
        load_policy(forged, "torch", threads=1, trusted_keys=trusted)

    tampered = shutil.copytree(signed, tmp_path / "tampered")  # a weight file changed, manifest intact
    weights = tampered / "modules.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="modules.safetensors: sha256"):
        load_policy(tampered, "torch", threads=1, trusted_keys=trusted)
    with pytest.raises(CheckpointError, match="modules.safetensors: sha256"):
        sign_checkpoint(tampered, owner)  # a signature never vouches for a broken checkpoint


def test_trust_lists_and_key_files_that_are_wrong_say_so(tmp_path, keys):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_trusted_keys(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"no \*.pub file"):
        load_trusted_keys(str(tmp_path / "empty"))
    (tmp_path / "junk.pub").write_text("not a key")
    with pytest.raises(CheckpointError, match="not a public key"):
        load_trusted_keys(str(tmp_path / "junk.pub"))
    assert len(load_trusted_keys(f"{keys[0]}.pub, {keys[1]}.pub")) == 2


def test_the_cli_signs_inspects_and_promote_signs_what_it_installs(tiny_checkpoint, tmp_path, keys, capsys):
    from vla_driver.rl.gate import promote

    owner, stranger = keys
    ckpt = shutil.copytree(tiny_checkpoint, tmp_path / "ckpt")
    assert cli(["inspect", str(ckpt), "--trusted-keys", f"{owner}.pub"]) == 1
    assert "REFUSED" in capsys.readouterr().out
    assert cli(["sign", str(ckpt), "--key", str(owner)]) == 0
    assert cli(["sign", str(ckpt), "--key", str(stranger)]) == 0  # a second signer (key rotation)
    assert len(json.loads((ckpt / SIGNATURE_FILE).read_text())["signatures"]) == 2
    capsys.readouterr()
    assert cli(["inspect", str(ckpt), "--trusted-keys", f"{owner}.pub"]) == 0
    assert "signed by trusted key" in capsys.readouterr().out
    assert cli(["sign", str(ckpt), "--key", str(tmp_path / "missing")]) == 1

    registry = tmp_path / "registry"
    record = promote(tiny_checkpoint, registry, sign_key=owner)
    assert record["signed_by"] == verify_signature(registry / "current", load_trusted_keys(f"{owner}.pub"))
    # the graphs a node would otherwise export unsigned at its first start are made and signed with it
    assert load_policy(registry / "current", "onnxruntime", threads=1, trusted_keys=f"{owner}.pub").backend_name \
        == "onnxruntime"
    with pytest.raises(CheckpointError):
        promote(tiny_checkpoint, tmp_path / "registry2", sign_key=f"{owner}.pub")  # a public key cannot sign
    assert not (tmp_path / "registry2").exists()  # refused before anything was installed


@pytest.mark.usefixtures("node_threads")
def test_a_node_with_trusted_keys_keeps_its_model_when_swapped_to_an_unsigned_one(signed, keys, tiny_checkpoint):
    import rclpy
    from rclpy.parameter import Parameter

    from vla_driver.nodes.decision_node import DecisionNode

    owner, _ = keys
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=DOMAIN_ID)
    trusted = [Parameter("trusted_keys", value=str(owner.parent)), Parameter("backend", value="torch")]
    try:  # at start: an unsigned checkpoint is refused, naming why
        with pytest.raises(CheckpointError, match="unsigned"):
            DecisionNode(context=context, parameter_overrides=[*trusted, Parameter("checkpoint", value=str(tiny_checkpoint))])
        node = DecisionNode(context=context, parameter_overrides=[*trusted, Parameter("checkpoint", value=str(signed))])
        running = node.policy.model_version
        node.set_parameters([Parameter("checkpoint", value=str(tiny_checkpoint))])  # unsigned: refused
        assert wait_until(lambda: node.diagnostics.counters["swap_errors"] == 1)
        assert "unsigned" in node.diagnostics.values["last_swap_error"]
        assert not node.adopt_new_policy() and node.policy.model_version == running
        node.set_parameters([Parameter("checkpoint", value=str(signed))])  # signed: adopted at the next cycle
        assert wait_until(node.adopt_new_policy)
        assert node.diagnostics.counters["swaps"] == 1
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)


def test_graphs_run_only_when_signed_with_the_checkpoint_and_a_swapped_set_falls_back_to_torch(tmp_path, keys):
    """The ONNX graphs beside a checkpoint are trusted only with a signature over their manifest: graphs made
    after signing, or graphs and graphs.json swapped in by someone who can write the folder, are refused and
    the signed checkpoint drives on torch, saying why."""
    from vla_driver.runtime.loading import DEFAULT_CHECKPOINT
    from vla_driver.runtime.trust import sign_with_artifacts

    owner, stranger = keys
    trusted = f"{owner}.pub"
    ckpt = shutil.copytree(DEFAULT_CHECKPOINT, tmp_path / "ckpt")  # comes with its graphs in onnx/ and onnx-int8/
    sign_checkpoint(ckpt, owner)  # the checkpoint alone: its graphs are not vouched for
    unsigned = load_policy(ckpt, "onnxruntime", threads=1, trusted_keys=trusted)
    assert unsigned.backend_name == "torch"
    assert any("ONNX graphs refused" in w and "unsigned" in w for w in unsigned.backend_choice.warnings)

    kid, signed = sign_with_artifacts(ckpt, owner)
    assert {p.relative_to(ckpt).as_posix() for p in signed} == {"onnx/graphs.json", "onnx-int8/graphs.json"}
    assert load_policy(ckpt, "onnxruntime", threads=1, trusted_keys=trusted).backend_name == "onnxruntime"
    assert load_policy(ckpt, "onnxruntime", threads=1, trusted_keys=f"{stranger}.pub,{trusted}").backend_name \
        == "onnxruntime"

    # someone swaps in graphs of their own with a graphs.json naming them (and the checkpoint's hash)
    spec_file = ckpt / "onnx" / "graphs.json"
    specs = json.loads(spec_file.read_text())
    specs["note"] = "replaced"
    spec_file.write_text(json.dumps(specs))
    swapped = load_policy(ckpt, "onnxruntime", threads=1, trusted_keys=trusted)
    assert swapped.backend_name == "torch"
    assert any("ONNX graphs refused" in w and "does not match" in w for w in swapped.backend_choice.warnings)

    # signing refuses graphs whose files differ from their manifest
    weights = ckpt / "onnx-int8" / next(p.name for p in (ckpt / "onnx-int8").glob("*.onnx"))
    weights.write_bytes(weights.read_bytes() + b"\0")
    with pytest.raises(ValueError, match="does not match|sha256"):
        sign_with_artifacts(ckpt, owner)
