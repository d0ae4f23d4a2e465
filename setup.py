"""Packaging hook (the project's metadata is in pyproject.toml): a built wheel, and so
`pip install .`, carries samples/hello-world as the package data reconciler/demo_workspace,
the workspace `reconciler demo` copies. An editable install reads it from the checkout."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

DEMO_SAMPLE = Path(__file__).resolve().parent / "samples" / "hello-world"


class BuildPyWithDemo(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / "reconciler" / "demo_workspace"
        if DEMO_SAMPLE.is_dir():
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(DEMO_SAMPLE, target)


setup(cmdclass={"build_py": BuildPyWithDemo})
