"""Spinning a node in its own process, and the two things every spinning loop here needs (no GC pauses,
a clean executor shutdown). Each node's ``main()`` uses :func:`spin_standalone`, as in ros2/examples."""
from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from contextlib import contextmanager

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.impl.implementation_singleton import rclpy_implementation

from vla_driver.model.checkpoint import CheckpointError

from .dds import use_profile
from .executor import MultiThreadedExecutor
from .params import ParameterValueError


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Spin with everything alive so far (modules, models, nodes) hidden from Python's cyclic collector.

    A full collection walks every tracked object, ~400k once torch, transformers and rclpy are loaded,
    holding the GIL throughout: measured 0.36-0.47 s every ~5 s on a busy 2-core machine, long enough
    for the action node to miss four 10 Hz cycles. Frozen objects are not scanned; new garbage still
    is collected. Not nestable: leaving unfreezes everything, so that the loop's nodes can be freed.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()



def spin_standalone(node_cls, args=None) -> None:
    """``main()`` of every node: one node in its own process on a multi-threaded executor, on the runtime's
    Fast DDS profile (``dds.use_profile``: large frames in shared memory)."""
    use_profile()
    node = None
    try:
        rclpy.init(args=args)
        node = node_cls()
        with frozen_heap():
            rclpy.spin(node, executor=MultiThreadedExecutor())
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (CheckpointError, ParameterValueError) as err:  # refused at start (a hash, a signature, a parameter
        # value it cannot run with): one line for the launch log
        rclpy.logging.get_logger(node_cls.__name__).fatal(f"not starting: {err}")
        raise SystemExit(1) from None
    except rclpy_implementation.RCLError as err:  # the middleware refused: e.g. SROS2 enforced, no enclave
        rclpy.logging.get_logger(node_cls.__name__).fatal(f"not starting: {str(err).splitlines()[0]}")
        raise SystemExit(1) from None
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()



def stop_executor(executor, timeout_s: float = 5.0) -> None:
    """Shut an executor down once its in-flight callbacks are done.

    rclpy 7.1's ``Executor.shutdown`` destroys its guard condition without waiting for callbacks still
    running on MultiThreadedExecutor's thread pool, which then fail with InvalidHandle. Call this
    after spinning has stopped.
    """
    deadline = time.monotonic() + timeout_s
    while any(not f.done() for f in list(getattr(executor, "_futures", []))) and time.monotonic() < deadline:
        time.sleep(0.01)
    executor.shutdown()
