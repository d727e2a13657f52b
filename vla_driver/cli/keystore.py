"""``vla-driver keystore create``: an SROS2 keystore for the nodes, without the ``ros2 security`` CLI."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ..harness.replay_input import parse_remaps
from ..nodes.security import DEFAULT_DAYS, create_keystore, enclave_path


def register(sub) -> None:
    keystore = sub.add_parser("keystore", help="SROS2 keystore: CA, governance, an enclave per node")
    keystore_sub = keystore.add_subparsers(dest="keystore_command", required=True)
    create = keystore_sub.add_parser(
        "create", help="write a new keystore: CA, governance, an enclave per node granted exactly its topics")
    create.add_argument("dir", help="folder to create (new or empty); ROS_SECURITY_KEYSTORE points here")
    create.add_argument("--days", type=int, default=DEFAULT_DAYS,
                        help=f"validity of certificates and permissions (default {DEFAULT_DAYS}, as sros2)")
    create.add_argument("--domain-id", type=int, default=None,
                        help="ROS domain the grants cover (default: ROS_DOMAIN_ID, else 0, as sros2)")
    create.add_argument("--remap", nargs="+", default=[], metavar="OLD:=NEW",
                        help="topics a launch file renames (cmd_vel:=/carla/ego_vehicle/twist), so that the "
                             "grants name the topics the nodes use")
    create.set_defaults(func=_create)


def _domain_id(args) -> int:
    if args.domain_id is not None:
        return args.domain_id
    try:
        return int(os.environ.get("ROS_DOMAIN_ID") or 0)
    except ValueError:
        raise ValueError(f"ROS_DOMAIN_ID={os.environ['ROS_DOMAIN_ID']!r} is not a number; "
                         "pass --domain-id") from None


def _create(args) -> int:
    try:
        domain_id = _domain_id(args)
        enclaves = create_keystore(Path(args.dir), args.days, domain_id, parse_remaps(args.remap))
    except (ValueError, OSError) as err:  # KeystoreError, a bad --remap or ROS_DOMAIN_ID, a read-only disk
        print(f"keystore: {err}", file=sys.stderr)
        return 2
    root = Path(args.dir).resolve()
    print(f"keystore {root} (domain {domain_id}, {args.days} days): enclaves "
          + ", ".join(enclave_path(folder.name) for folder in enclaves))
    print(f"run the nodes in them: export ROS_SECURITY_KEYSTORE={root} ROS_SECURITY_ENABLE=true "
          "ROS_SECURITY_STRATEGY=Enforce; ros2 launch vla_driver vla_driver.launch.py")
    return 0
