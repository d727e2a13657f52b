#!/usr/bin/env python3
"""Build TensorRT engines (+ manifests) from exported ONNX graphs; the same as `vla-driver build-engine`.

    python trt/build_engine.py --spec export/graphs.json --precision fp16 --out engines/ --timing-cache engines/timing.cache
"""
import sys
from pathlib import Path


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout
    from vla_driver.cli.deploy import add_build_arguments, run_build_engine, script_main

    return script_main(add_build_arguments, run_build_engine, __doc__.splitlines()[0])


if __name__ == "__main__":
    sys.exit(main())
