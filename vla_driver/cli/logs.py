"""``vla-driver logs info|repair|keep``: look after experience segments; ``vla-driver bench logger``."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def register(sub, bench_sub) -> None:
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

    bench = bench_sub.add_parser("logger", help="SegmentWriter.write() cost and sustained logging throughput")
    bench.add_argument("--seconds", type=float, default=3.0)
    bench.add_argument("--rate", type=float, default=200.0, help="messages per second offered")
    bench.add_argument("--width", type=int, default=640, help="camera image width (rgb8)")
    bench.add_argument("--height", type=int, default=480)
    bench.set_defaults(func=_bench)


def _segments(path: Path):
    from vla_driver.experience.segments import SegmentInfo, is_bag_dir, list_segments, segment_state

    if is_bag_dir(path):
        size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
        return [SegmentInfo(path, segment_state(path), (path / "KEEP").exists(), size)]
    return list_segments(path)


def _describe(info) -> dict:
    from rosbags.rosbag2 import Reader

    row = {"name": info.name, "state": info.state, "kept": info.kept, "size_bytes": info.size_bytes}
    if info.state != "complete":
        return row
    try:
        with Reader(info.path) as reader:
            row["duration_s"] = round(reader.duration / 1e9, 3) if reader.message_count else 0.0
            row["messages"] = reader.message_count
            row["topics"] = {name: {"type": t.msgtype, "count": t.msgcount} for name, t in reader.topics.items()}
    except Exception as err:  # a damaged bag is reported, not fatal
        row["error"] = f"{type(err).__name__}: {err}"
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
    total = sum(r["size_bytes"] for r in rows)
    states = {s: sum(r["state"] == s for r in rows) for s in ("complete", "open", "crashed")}
    print(f"{len(rows)} segments, {total / 1e6:.1f} MB; " + ", ".join(f"{n} {s}" for s, n in states.items())
          + f", {sum(r['kept'] for r in rows)} kept")
    return 0


def _repair(args) -> int:
    from vla_driver.experience.repair import repair_all, repair_segment
    from vla_driver.experience.segments import is_bag_dir

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
    from vla_driver.experience.segments import mark_keep

    status = 0
    for segment in args.segment:
        try:
            print(f"kept: {mark_keep(Path(segment)).parent}")
        except OSError as err:
            print(f"cannot keep {segment}: {err}", file=sys.stderr)
            status = 1
    return status


def _bench(args) -> int:
    import tempfile
    import time

    import numpy as np

    from vla_driver.experience.messages import IMAGE, image_message
    from vla_driver.experience.segments import SegmentWriter

    frame = np.random.default_rng(0).integers(0, 255, (args.height, args.width, 3), dtype=np.uint8)
    payload = image_message(frame, 0)
    period = 1.0 / args.rate
    latencies = []
    with tempfile.TemporaryDirectory() as tmp:
        writer = SegmentWriter(tmp, segment_duration_s=10.0, min_free_bytes=0)
        writer.add_topic("/bench", IMAGE)
        start = time.perf_counter()
        next_due = start
        while time.perf_counter() - start < args.seconds:
            t0 = time.perf_counter()
            writer.write("/bench", time.time_ns(), payload)
            latencies.append(time.perf_counter() - t0)
            next_due += period
            time.sleep(max(0.0, next_due - time.perf_counter()))
        close_start = time.perf_counter()
        stats = writer.close()
        elapsed = time.perf_counter() - start
        close_s = time.perf_counter() - close_start
    lat = np.array(latencies) * 1e6
    result = {
        "bench": "logger", "offered": len(latencies), "written": stats["written"], "dropped": stats["dropped"],
        "write_us_p50": round(float(np.percentile(lat, 50)), 2), "write_us_p99": round(float(np.percentile(lat, 99)), 2),
        "throughput_mb_s": round(stats["bytes"] / elapsed / 1e6, 1), "close_s": round(close_s, 3),
        "message_bytes": len(payload), "rate_hz": args.rate,
    }
    print(f"write(): p50 {result['write_us_p50']} us, p99 {result['write_us_p99']} us; "
          f"{result['written']}/{result['offered']} written, {result['dropped']} dropped; "
          f"{result['throughput_mb_s']} MB/s; close {result['close_s']} s")
    print(json.dumps(result))
    return 0
