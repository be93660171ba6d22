"""Build pyalexnet and its CUDA host-emulation extensions.

pyalexnet._emu compiles every kernels/*.cu with g++ against kernels/emu/cuda_emu.h, so the
same kernel source runs on the CPU. No CUDA library is needed to build it. Where clang++ is
installed, pyalexnet._emu_profile (the emulator as a profiler, see kernels/emu/profile.h)
is built too; without clang it is skipped with a message. kernels/emu/build.py generates
the kernel unit and makes every build but the first.
"""
import importlib.util
import os
import shutil
from pathlib import Path

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
KERNELS = ROOT / "kernels"
GENERATED = ROOT / "build" / "emu_generated"

_spec = importlib.util.spec_from_file_location("emu_build", KERNELS / "emu" / "build.py")
emu_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(emu_build)


class BuildPyWithKernels(build_py):
    """Ship kernels/ inside the package so a non-editable install finds the sources."""

    def run(self):
        super().run()
        target = Path(self.build_lib) / "pyalexnet" / "_kernels"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(KERNELS, target, ignore=shutil.ignore_patterns("*.cpp", "*.h", "*.py"))


class BuildExtWithProfiler(build_ext):
    """The extensions setuptools knows, with its compiler's flags, then the profiling build
    (clang) where it can."""

    def build_extensions(self):
        cxx = (getattr(self.compiler, "compiler_so_cxx", None) or self.compiler.compiler_so)[0]
        for ext in self.extensions:
            ext.extra_compile_args += emu_build.compiler_flags(cxx)
        super().build_extensions()

    def run(self):
        super().run()
        if os.environ.get("PYALEXNET_EMU_PROFILE_BUILD", "1") == "0":
            print("PYALEXNET_EMU_PROFILE_BUILD=0: not building pyalexnet._emu_profile")
            return
        if emu_build.find_compiler("profile") is None:
            print("clang++ not found: skipping pyalexnet._emu_profile, the emulator's profiler "
                  "(install clang and rebuild to get it)")
            return
        out = Path(self.get_ext_fullpath("pyalexnet._emu_profile"))
        emu_build.build("_emu_profile", emu_build.product_kernels(), out, "profile")


ParallelCompile("PYALEXNET_BUILD_JOBS", default=2).install()

emu = Pybind11Extension(
    "pyalexnet._emu",
    sources=[emu_build.generate_unit(emu_build.product_kernels(), GENERATED / "emu_kernels.cpp")
             .relative_to(ROOT).as_posix(),
             *[f"kernels/emu/{f}" for f in emu_build.RUNTIME_SOURCES], "kernels/emu/module.cpp"],
    include_dirs=[str(KERNELS), str(KERNELS / "emu")],
    # Editing any kernel or emulator header must rebuild: the generated unit includes them.
    depends=[p.relative_to(ROOT).as_posix() for p in sorted(KERNELS.rglob("*"))
             if p.suffix in (".cu", ".cuh", ".h")],
    cxx_std=17,
    extra_link_args=["-pthread"],
)

setup(
    name="pyalexnet",
    version="0.1.0",
    description="AlexNet from scratch: hand-written CUDA kernels, a CPU emulator, NumPy references",
    packages=find_packages(include=["pyalexnet", "pyalexnet.*"]),
    package_data={"pyalexnet": ["configs/*.toml"]},
    python_requires=">=3.10",
    install_requires=["numpy>=1.23", "pillow>=9"],
    extras_require={
        "cuda13": ["cupy-cuda13x>=13"],
        "cuda12": ["cupy-cuda12x>=13"],
        # threadpoolctl: which BLAS kernels NumPy runs, for tests/test_golden.py's exact check
        "test": ["pytest>=7", "pytest-xdist>=3", "pybind11>=2.11", "threadpoolctl>=3"],
        # torch.distributed moves the gradients between processes (torchrun). Install the
        # CPU build first (pip install torch==2.13.0) where a CUDA build must not be pulled.
        "distributed": ["torch>=2.4,<3"],
        # reading and writing torchvision .pth files (.safetensors needs nothing)
        "torch": ["torch>=2.4,<3"],
        # ONNX export, and the test that runs it in onnxruntime
        "onnx": ["onnx>=1.15", "onnxruntime>=1.17", "safetensors>=0.4"],
    },
    ext_modules=[emu],
    cmdclass={"build_ext": BuildExtWithProfiler, "build_py": BuildPyWithKernels},
    zip_safe=False,
)
