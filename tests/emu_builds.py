"""The test suite's own emulator builds (kernels/*.cu plus tests/kernels/*.cu), made by
kernels/emu/build.py once per source state. PYALEXNET_EMU_TEST_BUILD picks the variant of
the emulator tests (gcc, clang, asan, hardened, ...: see VARIANTS there); CI runs several."""
import functools
import importlib.util
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("emu_build", ROOT / "kernels" / "emu" / "build.py")
emu_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(emu_build)

VARIANT = os.environ.get("PYALEXNET_EMU_TEST_BUILD", "gcc")


@functools.lru_cache(maxsize=None)
def selftest_build(variant=VARIANT):
    """The built module, or a skip where the variant's compiler is missing."""
    if emu_build.find_compiler(variant) is None:
        pytest.skip(f"emulator build {variant!r} needs {emu_build.VARIANTS[variant]['cxx']}, "
                    "not installed here")
    return emu_build.test_module(variant)
