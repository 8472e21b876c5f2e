"""Builds the optional native kernels (`r3mes/model/kernels/ternary.c` and `head.c`).

A plain C shared library with no Python or torch headers, loaded with ctypes at run time, so
the build needs only a C compiler. Where there is none, or the build fails, installation
still succeeds and r3mes falls back to its torch path (one warning at run time).
"""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """build_ext that never fails the install: a kernel that does not build is skipped."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any compiler problem must not fail pip
            self.warn(f"r3mes: native ternary kernel not built ({exc}); using the torch path")

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            self.warn(f"r3mes: native ternary kernel not built ({exc}); using the torch path")

    def get_export_symbols(self, ext: Extension) -> list[str]:
        return []  # a ctypes library, not a Python module: no PyInit_ symbol to export


KERNEL = Extension(
    "r3mes.model.kernels._ternary",
    sources=["src/r3mes/model/kernels/ternary.c", "src/r3mes/model/kernels/head.c"],
    depends=["src/r3mes/model/kernels/kernels.h"],
    # -ffp-contract=off: the fused linear must do BitLinear's float32 ops one by one, as torch
    # does them (no multiply-add fused by the compiler), to give the same bits
    extra_compile_args=["-O3", "-std=c11", "-pthread", "-ffp-contract=off"],
    extra_link_args=["-pthread", "-lm"],
    optional=True,
)

setup(ext_modules=[KERNEL], cmdclass={"build_ext": OptionalBuildExt})
