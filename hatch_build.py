"""Build hook: compile the optional C module ``hoptrace._speedups`` into the wheel.

hoptrace works without it (pure Python); with it, the common case of ``inject``/``extract``
runs in C. A missing compiler or Python headers only prints a warning and builds a
pure-Python wheel, unless ``HOPTRACE_REQUIRE_SPEEDUPS=1`` makes that an error.
``HOPTRACE_NO_SPEEDUPS=1`` skips the compile.

Editable installs (``pip install -e .``) put the module next to its source in
``src/hoptrace``, where the editable install imports from.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

_TRUE = ("1", "true", "yes", "on")


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


class SpeedupsBuildHook(BuildHookInterface):  # type: ignore[misc]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if _flag("HOPTRACE_NO_SPEEDUPS"):
            return
        root = Path(self.root)
        source = root / "src" / "hoptrace" / "_speedups.c"
        try:
            built = self._compile(source)
        except Exception as exc:
            if _flag("HOPTRACE_REQUIRE_SPEEDUPS"):
                raise RuntimeError(f"hoptrace: cannot build hoptrace._speedups: {exc}") from exc
            print(f"hoptrace: building without the C speedups ({exc})", file=sys.stderr)
            return
        if version == "editable":
            target = source.parent / built.name
            shutil.copyfile(built, target)
        else:
            build_data["force_include"][str(built)] = f"hoptrace/{built.name}"
        build_data["pure_python"] = False
        build_data["infer_tag"] = True

    def _compile(self, source: Path) -> Path:
        from setuptools import Distribution, Extension
        from setuptools.command.build_ext import build_ext

        work = Path(tempfile.mkdtemp(prefix="hoptrace-build-"))
        extension = Extension(
            "hoptrace._speedups", [str(source)], extra_compile_args=self._flags()
        )
        distribution = Distribution({"name": "hoptrace", "ext_modules": [extension]})
        command = build_ext(distribution)
        command.build_lib = str(work / "lib")
        command.build_temp = str(work / "temp")
        command.ensure_finalized()
        command.run()
        return Path(command.get_ext_fullpath("hoptrace._speedups"))

    @staticmethod
    def _flags() -> list[str]:
        if sys.platform == "win32":
            return []
        return ["-Wall"]
