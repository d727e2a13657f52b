"""``vla-driver logs info|repair|keep``: look after experience segments."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from vla_driver.experience.bag_open import BagError, open_bags
from vla_driver.experience.repair import repair_all, repair_segment
from vla_driver.experience.segments import SegmentInfo, is_bag_dir, list_segments, mark_keep, segment_state


def register(sub) -> None:
    logs = sub.add_parser("logs", help="experience segments (rosbag2 MCAP): info, repair, keep")
    logs_sub = logs.add_subparsers(dest="logs_command", required=True)

    info = logs_sub.add_parser("info", help="segments, sizes, topics, message counts, locked/kept")
    info.add_argument("dir", help="a folder of segments, or one segment")
    info.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    info.set_defaults(func=_info)

    repair = logs_sub.add_parser("repair", help="make segments of a killed logger readable (like ros2 bag reindex)")
    repair.add_argument("dir", help="a folder of segments, or one segment")
    repair.add_argument("--force", action="store_true", help="repair even segments whose lock a live process holds")
    repair.set_defaults(func=_repair)

    keep = logs_sub.add_parser("keep", help="flag segments so the disk quota never deletes them")
    keep.add_argument("segment", nargs="+")
    keep.set_defaults(func=_keep)


def _segments(path: Path):
    if is_bag_dir(path):
        size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
        return [SegmentInfo(path, segment_state(path), (path / "KEEP").exists(), size)]
    return list_segments(path)


def _describe(info) -> dict:
    row = {"name": info.name, "state": info.state, "kept": info.kept, "size_bytes": info.size_bytes}
    if info.state != "complete":
        return row
    try:
        with open_bags([info.path]) as reader:
            row["topics"] = {name: {"type": t.msgtype, "count": t.msgcount} for name, t in reader.topics.items()}
            row["messages"] = sum(t["count"] for t in row["topics"].values())
            row["duration_s"] = round(reader.duration / 1e9, 3) if row["messages"] else 0.0
            if reader.left_out:  # topics it cannot decode: named, not fatal
                row["skipped_topics"], row["skipped"] = dict(reader.left_out.topics), reader.left_out.note()
    except BagError as err:  # a damaged bag is reported, not fatal
        row["error"] = str(err)
    return row


def _info(args) -> int:
    root = Path(args.dir)
    if not root.exists():
        print(f"no such directory: {root}", file=sys.stderr)
        return 2
    rows = [_describe(info) for info in _segments(root)]
    if args.json:
        print(json.dumps({"root": str(root), "segments": rows}, indent=2))
        return 0
    if not rows:
        print(f"{root}: no segments")
        return 0
    for row in rows:
        flags = ",".join(f for f in (row["state"], "KEEP" if row["kept"] else "") if f)
        extra = (f"{row.get('duration_s', 0):7.1f} s {row.get('messages', 0):8d} msgs"
                 if "messages" in row else "  " + row.get("error", "needs `vla-driver logs repair`"))
        print(f"{row['name']:48s} {row['size_bytes'] / 1e6:9.2f} MB {extra}  [{flags}]")
        for name, topic in sorted(row.get("topics", {}).items()):
            print(f"    {name:32s} {topic['count']:8d}  {topic['type']}")
        if row.get("skipped"):
            print(f"    {row['skipped']}")
    total = sum(r["size_bytes"] for r in rows)
    states = {s: sum(r["state"] == s for r in rows) for s in ("complete", "open", "crashed")}
    print(f"{len(rows)} segments, {total / 1e6:.1f} MB; " + ", ".join(f"{n} {s}" for s, n in states.items())
          + f", {sum(r['kept'] for r in rows)} kept")
    return 0


def _repair(args) -> int:
    path = Path(args.dir)
    if not path.is_dir():
        print(f"no such directory: {path}", file=sys.stderr)
        return 2
    reports = [repair_segment(path, force=args.force)] if is_bag_dir(path) else repair_all(path, args.force)
    for report in reports:
        print(report.summary())
    if not reports:
        print(f"{path}: nothing to repair")
    return 1 if any(r.status == "failed" for r in reports) else 0


def _keep(args) -> int:
    status = 0
    for segment in args.segment:
        try:
            print(f"kept: {mark_keep(Path(segment)).parent}")
        except OSError as err:
            print(f"cannot keep {segment}: {err}", file=sys.stderr)
            status = 1
    return status
