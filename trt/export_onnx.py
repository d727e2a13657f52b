#!/usr/bin/env python3
"""Export a checkpoint's graphs to ONNX and write graphs.json beside them (vla_driver.runtime.export).

    python trt/export_onnx.py --checkpoint ckpt/ --out export/
"""
import sys
from pathlib import Path


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout
    from vla_driver.cli.deploy import add_export_arguments, run_export, script_main

    return script_main(add_export_arguments, run_export, __doc__.splitlines()[0])


if __name__ == "__main__":
    sys.exit(main())
