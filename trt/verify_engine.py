#!/usr/bin/env python3
"""Check exported graphs and their engines (hashes, operators, cache rules, numerics); the same as `vla-driver verify`.

    python trt/verify_engine.py --spec export/graphs.json --engines engines/ --precision fp16 --checkpoint ckpt/ --frames frames/
"""
import sys
from pathlib import Path


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout
    from vla_driver.cli.deploy import add_verify_arguments, run_verify, script_main

    return script_main(add_verify_arguments, run_verify, __doc__.splitlines()[0])


if __name__ == "__main__":
    sys.exit(main())
