"""ament_python package; also installs with plain pip (console scripts then land in the venv's bin)."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "vla_driver"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    package_data={PACKAGE: ["assets/*", "assets/**/*"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.xml")),
        (f"share/{PACKAGE}/config/schema", glob("config/schema/*.json")),
        (f"share/{PACKAGE}/config/rigs", glob("config/rigs/*.yaml")),
    ],
    install_requires=["setuptools"],
    extras_require={"ray": ["ray>=2.60,<3"]},  # train-rl --executor ray; `make test` installs it
    zip_safe=True,
    maintainer="vla_driver maintainers",
    maintainer_email="vla-driver@example.com",
    description="VLA driving runtime for ROS 2 with decision/action LoRA experts and RL refresh",
    license="Apache-2.0",
    python_requires=">=3.10",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "decision_node = vla_driver.nodes.decision_node:main",
            "action_node = vla_driver.nodes.action_node:main",
            "controller_node = vla_driver.nodes.controller_node:main",
            "sim_bridge_node = vla_driver.nodes.sim_bridge_node:main",
            "logger_node = vla_driver.nodes.logger_node:main",
            "vla-driver = vla_driver.cli:main",
        ],
    },
)
