"""Build hook: compile the BPF programs with clang before packaging them as package data."""

import importlib.util
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def _load_build_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("_sentinel_build", ROOT / "src/sentinel_ebpf/_build.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildWithBpf(build_py):  # type: ignore[misc]
    def run(self) -> None:
        build = _load_build_module()
        try:
            build.build_all()
        except build.BuildError as exc:
            sys.stderr.write(f"\nsentinel-ebpf: {exc}\n\n")
            raise SystemExit(1) from None
        super().run()


setup(cmdclass={"build_py": BuildWithBpf})
