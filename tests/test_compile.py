"""Every kernel file compiles for sm_80 and sm_90 with no warnings and zero spills, and
through the emulation header with g++."""
import functools

import pytest

from pyalexnet.backends import kernel_dir
from pyalexnet.compile_check import (ARCHS, Occupancy, describe, find_nvcc, gxx_check,
                                     kernel_files, launch_bounds_threads, nvcc_check, occupancy)
from pyalexnet.ops.conv_mma import MMA_TILES
from pyalexnet.ops.conv import FILTER_V2_BLOCKS_PER_SM
from pyalexnet.ops.winograd import BGEMM_BLOCKS_PER_SM
from pyalexnet.ops.linear import TILE_OCCUPANCY

FILES = kernel_files()


@functools.lru_cache(maxsize=None)
def _nvcc(path, arch):
    """One ptxas run per file and architecture for all the tests here."""
    nvcc = find_nvcc()
    if nvcc is None:
        pytest.skip("no CUDA compiler (nvcc) on this machine")
    return nvcc_check(path, arch, nvcc)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_nvcc_no_warnings_no_spills(path, arch):
    r = _nvcc(path, arch)
    assert r.kernels, f"{path.name}: ptxas reported no kernels\n{r.log}"
    spilled = [k.name for k in r.kernels if k.spill_stores or k.spill_loads]
    assert not spilled, f"{path.name} [{arch}] spills in {spilled}"
    assert r.ok, f"{path.name} [{arch}]:\n{r.log}"


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_gxx_through_emulator_header(path):
    r = gxx_check(path)
    assert r.ok, f"{path.name}:\n{r.log}"


def test_occupancy_rules():
    """Hand-computed with the CUDA occupancy rules (sm_90: 64K registers in per-warp units
    of 256, 228 kB shared memory, 1 kB reserved per block, 64 warps, 32 blocks)."""
    assert occupancy(128, 256, 16896).blocks == 2   # 4096 registers a warp: 16 warps
    assert occupancy(129, 256, 16896).blocks == 1   # rounds up to 136 a thread
    assert occupancy(47, 256, 8704) == Occupancy(5, 40, "registers")
    assert occupancy(32, 256, 100 * 1024) == Occupancy(2, 16, "shared memory")
    assert occupancy(16, 64, 0) == Occupancy(32, 64, "warps")  # 32 blocks = 64 warps
    assert occupancy(16, 32, 0) == Occupancy(32, 32, "blocks")
    assert occupancy(32, 256, 100 * 1024, "sm_80").blocks == 1  # 164 kB on sm_80


def _sm90_usage(name):
    return {k.name: k for k in _nvcc(kernel_dir() / name, "sm_90").kernels}


def test_planner_occupancy_tables_match_ptxas():
    """The launchers' resident-blocks tables are what sm_90 ptxas gives the kernels."""
    usage = _sm90_usage("conv.cu")
    for (bm, bn), blocks in FILTER_V2_BLOCKS_PER_SM.items():
        k = usage[f"conv_bwd_filter_v2_{bm}x{bn}"]
        assert (k.threads, k.assumed) == (256, False)
        assert k.occupancy.blocks == blocks, f"{k.name}: {k.registers} registers"
    usage = _sm90_usage("winograd.cu")
    for (ops, tile), blocks in BGEMM_BLOCKS_PER_SM.items():
        k = usage[f"wino_bgemm_{ops}_{tile}"]
        assert k.occupancy.blocks == blocks, f"{k.name}: {k.registers} registers"
    usage = _sm90_usage("gemm.cu")
    for tile, blocks in TILE_OCCUPANCY.items():
        for ops in ("nn", "nt", "tn", "tt"):
            k = usage[f"gemm_{ops}_{tile}"]
            assert k.occupancy.blocks >= blocks, f"{k.name}: {k.registers} registers"


def test_launch_bounds_written_as_arithmetic_give_the_block_size():
    assert launch_bounds_threads("(256)") == 256
    assert launch_bounds_threads("((128 / 64) * (128 / 32) * 32)") == 256
    assert launch_bounds_threads("((64 / 32) * (64 / 32) * 32, 65536 / (128 * 128))") == 128
    assert launch_bounds_threads("((-7) / 2 + 5)") == 2  # C division truncates toward zero
    assert launch_bounds_threads("((2 * 64), (2 * 64) == 128 ? 4 : 1)") == 128
    with pytest.raises(ValueError, match="integer arithmetic"):
        launch_bounds_threads("(BLOCK)")
    with pytest.raises(ValueError, match="integer arithmetic"):
        launch_bounds_threads("(a ? 1 : 2)")


def test_tensor_core_kernels_report_the_block_their_launcher_uses():
    """The mma kernels' launch bounds are template arithmetic; the report must still read
    them (it once assumed 256 threads for the 128-thread tile-64 kernels)."""
    usage = _sm90_usage("conv_mma.cu")
    for tile, threads in MMA_TILES.items():
        for kind in ("fwd", "bwd_data", "bwd_filter"):
            for precision in ("tf32", "bf16"):
                k = usage[f"conv_mma_{kind}_{precision}_{tile}"]
                assert (k.threads, k.assumed) == (threads, False), k.name
                if tile == 64:  # held to 128 registers: 16 warps an SM (mma_tile.cuh)
                    assert k.occupancy.blocks >= 4, f"{k.name}: {k.registers} registers"
    # bf16's fetched elements two to a register: its tile-128 gradients fit 2 blocks an SM
    for kind in ("bwd_data", "bwd_filter"):
        k = usage[f"conv_mma_{kind}_bf16_128"]
        assert k.occupancy.blocks >= 2, f"{k.name}: {k.registers} registers"
    usage = _sm90_usage("gemm_mma.cu")
    for precision in ("tf32", "bf16"):
        for ops, tile, blocks in (("nt", 128, 2), ("tn", 128, 2), ("nn", 64, 4), ("nt", 64, 4)):
            k = usage[f"gemm_mma_{precision}_{ops}_{tile}"]
            assert k.occupancy.blocks >= blocks, f"{k.name}: {k.registers} registers"
    k = usage["gemm_mma_bf16_nn_128"]
    assert k.occupancy.blocks >= 2, f"{k.name}: {k.registers} registers"


def test_report_lists_every_kernel_with_occupancy():
    usage = _sm90_usage("pool.cu")
    names = ["pool_max_forward", "pool_max_backward_v1", "pool_max_backward_v2"]
    names += [f"pool_max_{entry}_k{k}" for k in (2, 3) for entry in ("forward_v2", "backward_v3")]
    assert set(usage) == {name + storage for name in names for storage in ("", "_bf16")}
    for storage in ("", "_bf16"):
        for v2 in (usage["pool_max_backward_v2" + storage], usage["pool_max_backward_v3_k3" + storage]):
            assert v2.dynamic_smem and not v2.assumed and v2.threads == 256
    assert usage["pool_max_forward"].assumed  # no __launch_bounds__
    line = describe(v2)
    assert "+dyn" in line and "blocks/SM" in line and "warps/SM" in line
