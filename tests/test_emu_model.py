"""The H200 model behind bench_kernels.py --emulated: occupancy, scaling of sampled
counters, rank correlation, and the --emulated run itself on a small case."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import emu_model  # noqa: E402


@pytest.mark.parametrize("threads,regs,smem,blocks,limit", [
    (256, 32, 0, 8, "warps"),             # 8 warps a block, 64 warps an SM
    (256, 128, 0, 2, "registers"),        # 128 * 256 = 32768 registers a block
    (128, 32, 48 * 1024, 4, "shared memory"),  # 228 KiB / (48 + 1) KiB
    (32, 16, 0, 32, "blocks"),
])
def test_occupancy_on_sm_90(threads, regs, smem, blocks, limit):
    occ = emu_model.occupancy(threads, regs, smem)
    assert (occ["blocks_per_sm"], occ["limited_by"]) == (blocks, limit)
    assert occ["warps_per_sm"] == blocks * threads // 32


def profile(**kw):
    p = {"kernel": "k", "grid": (8, 1, 1), "block": (256, 1, 1), "shared_mem": 0,
         "blocks_run": 2, "blocks_total": 8, "flops": 0, "global_load_sectors": 100,
         "global_store_sectors": 10, "shared_load_wavefronts": 0, "shared_store_wavefronts": 0,
         "arrays": [{"arg": 0, "bytes": 32 * 300, "unique_load_sectors": 100,
                     "unique_store_sectors": 0, "requested_load_sectors": 100,
                     "requested_store_sectors": 0},
                    {"arg": 1, "bytes": 32 * 40, "unique_load_sectors": 0,
                     "unique_store_sectors": 10, "requested_load_sectors": 0,
                     "requested_store_sectors": 10}]}
    p.update(kw)
    return p


def test_sampled_counts_scale_and_dram_is_capped_at_each_array():
    c = emu_model.scaled(profile())
    assert c["scale"] == 4 and c["global_load_sectors"] == 400
    # loads: 4 * 100 sectors, capped at the array's 300; stores: 40 of 40
    assert c["dram_bytes_lower_bound"] == 32 * (300 + 40)
    assert c["dram_bytes"] == c["dram_bytes_lower_bound"]  # fits in L2: no repeats miss


def two_arrays(table_share, stream_share):
    """Blocks that read a table of `table_share` sectors 10 times over and a stream of
    `stream_share` sectors twice over (2 blocks run)."""
    arrays = [{"arg": 0, "bytes": 32 * 4096, "unique_load_sectors": table_share,
               "block_unique_load_sectors": 2 * table_share,
               "requested_load_sectors": 2 * 10 * table_share, "unique_store_sectors": 0,
               "requested_store_sectors": 0},
              {"arg": 1, "bytes": 32 * 10 ** 6, "unique_load_sectors": 2 * stream_share,
               "block_unique_load_sectors": 2 * stream_share,
               "requested_load_sectors": 2 * 2 * stream_share, "unique_store_sectors": 0,
               "requested_store_sectors": 0}]
    return profile(arrays=arrays, global_load_sectors=sum(a["requested_load_sectors"] for a in arrays))


def test_a_blocks_rereads_hit_l1_while_its_arrays_fit():
    """A block's repeated reads of an array are L1 hits while its share of that array, and
    of every smaller one, fits in the 256 KiB beside shared memory for each resident block."""
    table, stream = 32, 1024                     # 1 KiB and 32 KiB per block
    p = two_arrays(table, stream)
    both = 2 * 9 * table + 2 * stream            # every re-read of both arrays
    assert emu_model.l1_hits(p, blocks_per_sm=4, smem_per_block=0) == both
    # 4 blocks of 32 KiB shared each leave 256 - 4 * 33 = 124 KiB: 4 * (1 + 32) KiB is too
    # much for the stream, the table's still fit
    assert emu_model.l1_hits(p, blocks_per_sm=4, smem_per_block=32 * 1024) == 2 * 9 * table
    assert emu_model.l1_hits(p, blocks_per_sm=4, smem_per_block=63 * 1024) == 0  # no room
    c = emu_model.scaled(p, l1_hit_sectors=2 * 9 * table)
    assert c["l2_load_sectors"] == 4 * (2 * table + 2 * 2 * stream)  # scaled by 8 / 2 blocks


def test_an_lru_share_hits_the_loads_within_its_reuse_distance():
    """Loads at distance 0, 127 and 1000 (buckets 0, 7 and 10): a 128-sector share hits
    the first two; 64 sectors only the first (127 >= 64); the bucket [512, 1024) holds
    1000, spread evenly: a 768-sector share takes half of it."""
    buckets = [0] * 40
    buckets[0], buckets[7], buckets[10] = 5, 7, 11
    assert emu_model.reuse_hits(buckets, 128) == 5 + 7
    assert emu_model.reuse_hits(buckets, 64) == 5
    assert emu_model.reuse_hits(buckets, 768) == pytest.approx(5 + 7 + 11 / 2)
    assert emu_model.reuse_hits(buckets, 0) == 0
    # through l1_hits: 4 blocks of 32 KiB shared memory leave (256 - 4 * 33) / 4 = 31 KiB
    # each, 992 sectors: all of buckets 0 and 7, (992 - 512) / 512 of bucket 10
    p = profile(load_reuse_sectors=buckets)
    assert emu_model.l1_hits(p, blocks_per_sm=4, smem_per_block=32 * 1024) == \
        pytest.approx(5 + 7 + 11 * (992 - 512) / 512)


def test_modeled_time_follows_the_bound():
    base = emu_model.model_launch(profile(), {})
    more = emu_model.model_launch(profile(flops=10 ** 12), {})
    assert base["bound"] != "fp32" and more["bound"] == "fp32"
    assert more["seconds"] > 10 ** 12 / emu_model.H200.fp32_flops


def test_waves_take_as_long_as_their_busiest_sm():
    """256-thread blocks of 32 registers: 8 resident per SM, 1056 on the GPU at once. A
    grid of at most 132 blocks puts one on each SM: a block's time whatever the grid; a
    full wave is 8 blocks an SM; one block past it is a wave of its own."""
    flops_per_block = 10 ** 9

    def seconds(blocks):
        p = profile(blocks_total=blocks, blocks_run=1, flops=flops_per_block,
                    global_load_sectors=0, global_store_sectors=0, arrays=[])
        return emu_model.model_launch(p, {})["seconds"] - emu_model.H200.launch_s

    one = flops_per_block / (emu_model.H200.fp32_flops / emu_model.H200.sms)
    assert seconds(1) == pytest.approx(one) and seconds(132) == pytest.approx(one)
    assert seconds(133) == pytest.approx(2 * one)
    assert seconds(1056) == pytest.approx(8 * one)
    assert seconds(1057) == pytest.approx(9 * one)


def test_latency_slows_a_wave_of_few_warps():
    """One 8-warp block alone on an SM hides a quarter of the memory latency (32 warps
    needed): its bytes move at a quarter of one SM's share of the bandwidth."""
    p = profile(blocks_total=1, blocks_run=1, global_load_sectors=10 ** 6, global_store_sectors=0,
                arrays=[{"arg": 0, "bytes": 32 * 10 ** 6, "unique_load_sectors": 10 ** 6,
                         "unique_store_sectors": 0, "requested_load_sectors": 10 ** 6,
                         "requested_store_sectors": 0}])
    m = emu_model.model_launch(p, {})
    dev = emu_model.H200
    assert m["bound"] == "dram"
    assert m["seconds"] - dev.launch_s == pytest.approx(32 * 10 ** 6 / (dev.dram_bw / dev.sms) * 4)


def test_a_gpus_probes_replace_the_assumed_constants(tmp_path):
    """bench_device.py's "model" constants go into the Device; the L2 term follows l2_bw."""
    import bench_device
    read = [{"warps_per_sm": w, "ilp": i, "bytes_per_s": 1e12 * min(4.0, w * i / 32)}
            for w in (4, 8, 16, 32, 64) for i in (1, 2, 4, 8)]
    probe = {"read": read, "l2_read_bytes_per_s": 3.5e12, "fp32_flops": 60e12,
             "mma_tf32_flops": 300e12, "mma_bf16_flops": 600e12,
             "smem_wavefronts_per_sm_per_s": 1.5e9}
    probe["model"] = bench_device.model_constants(probe)
    # 64 warps with one load each reach 2 of the best 4 TB/s: the rule needs 128 warps
    assert probe["model"]["warps_hide_memory"] == pytest.approx(128)
    path = tmp_path / "probe.json"
    path.write_text(json.dumps(probe))
    dev = emu_model.load_device(path)
    assert (dev.l2_bw, dev.fp32_flops, dev.tf32_flops, dev.bf16_flops) == \
        (3.5e12, 60e12, 300e12, 600e12)
    assert dev.smem_wavefronts_per_s == 1.5e9 and dev.sms == emu_model.H200.sms
    assert emu_model.load_device(None) is emu_model.H200
    stream = {"arg": 0, "bytes": 32 * 10 ** 9, "unique_load_sectors": 10 ** 4,
              "unique_store_sectors": 0, "requested_load_sectors": 10 ** 6,
              "requested_store_sectors": 0}
    p = profile(blocks_total=132 * 8, blocks_run=1, global_load_sectors=10 ** 6,
                global_store_sectors=0, arrays=[stream])
    assumed, measured = (emu_model.model_launch(p, {}, d)["terms"]["l2"]
                         for d in (emu_model.H200, dev))
    # half the L2 rate, and 64 warps hide half the latency under the measured rule
    assert measured == pytest.approx(assumed * (7e12 / 3.5e12) * (128 / 64))


def test_spearman():
    assert emu_model.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1)
    assert emu_model.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1)
    assert emu_model.spearman([1, 2, 3], [1, 1, 2]) == pytest.approx(0.866, abs=1e-3)


def test_emulated_benchmark_runs_and_compares(tmp_path):
    if emu_model_unavailable():
        pytest.skip("no profiling build (pyalexnet._emu_profile needs clang++)")
    out = tmp_path / "em.json"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_kernels.py"), "--emulated",
                        "--batch", "2", "--blocks", "2", "--threads", "2",
                        "--precision", "fp32", "tf32", "--only", "relu1", "lrn2", "fc8 forward",
                        "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    d = json.loads(out.read_text())
    names = [r["name"] for r in d["results"]]
    assert names == ["fc8 forward previous plan", "fc8 forward", "fc8 forward [tf32]",
                     "lrn2 forward v1", "lrn2 backward v1", "lrn2 forward v2", "lrn2 backward v2",
                     "relu1 forward v1", "relu1 backward v1", "relu1 forward v2", "relu1 backward v2"]
    fc8 = d["results"][names.index("fc8 forward")]
    # 2 x 4096 @ 4096 x 1000, all blocks of the GEMM run (2 are fewer than the grid's)
    assert fc8["flops"] > 2 * 2 * 4096 * 1000 * 0.99 and fc8["model_ms"] > 0
    assert fc8["tensor_flops_tf32"] == 0 and fc8["tensor_share_of_peak"] is None
    tc = d["results"][names.index("fc8 forward [tf32]")]
    # the same product on the tensor cores: m16n8k8 tiles cover it (padded to 16 rows)
    assert tc["tensor_flops_tf32"] >= 2 * 2 * 4096 * 1000 and tc["flops"] < 0.01 * fc8["flops"]
    assert 0 < tc["tensor_share_of_peak"] < 1
    assert fc8["measured_ms"] is None and "not compared" in p.stdout  # measured at batch 128


def test_emulated_benchmark_compares_two_measured_rows(tmp_path):
    """Rank correlation needs 3 rows; with 2 the comparison still prints, without it."""
    if emu_model_unavailable():
        pytest.skip("no profiling build (pyalexnet._emu_profile needs clang++)")
    measured = tmp_path / "measured.json"
    measured.write_text(json.dumps({"batch": 2, "results": [
        {"name": "relu1 forward v1", "ours_ms": 0.01}, {"name": "relu1 backward v1", "ours_ms": 0.01}]}))
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_kernels.py"), "--emulated",
                        "--batch", "2", "--blocks", "2", "--threads", "2", "--only", "relu1",
                        "--measured", str(measured), "--out", str(tmp_path / "em.json")],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "over 2 rows: none (it needs 3 rows)" in p.stdout
    assert json.loads((tmp_path / "em.json").read_text())["rows_compared"] == 2
    # --before: a kernel change's counters, old -> new; the run just made is the "old"
    rows = json.loads((tmp_path / "em.json").read_text())["results"]
    rows[0]["model_ms"] += 1.0
    (tmp_path / "before.json").write_text(json.dumps({"results": rows}))
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_kernels.py"), "--emulated",
                        "--batch", "2", "--blocks", "2", "--threads", "2", "--only", "relu1 forward v1",
                        "--before", str(tmp_path / "before.json"), "--out", str(tmp_path / "em2.json")],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"| relu1 forward v1 | {rows[0]['model_ms']:.3f} → {rows[0]['model_ms'] - 1:.3f} |" in p.stdout
    (tmp_path / "gpu.json").write_text(json.dumps({"results": [{"name": "x", "ours_ms": 1.0}]}))
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_kernels.py"), "--emulated",
                        "--before", str(tmp_path / "gpu.json")], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "not an --emulated JSON" in p.stderr.splitlines()[-1]
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_kernels.py"),
                        "--before", str(tmp_path / "before.json")], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--before goes with --emulated" in p.stderr.splitlines()[-1]


def test_changes_table_shows_what_moved():
    from bench_kernels import changes_table

    def row(name, ms, dram, req, sec, smem=0):
        return {"name": name, "model_ms": ms, "dram_bytes": dram, "global_load_requests": req,
                "global_load_sectors": sec, "global_store_requests": 10, "global_store_sectors": 40,
                "shared_load_wavefronts": smem, "shared_store_wavefronts": 0}
    before = [row("a", 1.0, 2e6, 100, 400), row("b", 1.0, 2e6, 100, 400), row("gone", 1, 1, 1, 1)]
    after = [row("a", 1.0, 2e6, 100, 400), row("b", 0.5, 2e6 * (1 + 1e-5), 0, 0, smem=7),
             row("new", 1, 1, 1, 1)]
    assert changes_table(before, after).splitlines() == [
        "| case | model ms | DRAM MB | ld requests | ld sectors/req | st sectors/req | smem wavefronts |",
        "|---|---|---|---|---|---|---|",
        "| b | 1.000 → 0.500 | 2.0 | 100 → 0 | 4.00 → – | 4.00 | 0 → 7 |"]
    assert changes_table(before, before) == ""


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_sampled_runs_read_whole_inputs_from_the_references(precision):
    """Where the forward would run a sample of its blocks only (most of its output never
    written), a backward case's y is the reference's, stored as the kernel stores it. ReLU's
    backward v1 then reads dy where y > 0, half the elements at random: nearly every sector."""
    if emu_model_unavailable():
        pytest.skip("no profiling build (pyalexnet._emu_profile needs clang++)")
    from bench_kernels import Builder
    from pyalexnet.backends import EmuBackend
    from pyalexnet.ops import relu
    from pyalexnet.ops.precision import to_bf16, widened
    be = EmuBackend(threads=2, profile=True, profile_blocks=3)
    b = Builder(be, None, 8, 1, np.random.default_rng(0))
    x, X, *_ = b.storage(b.arr(8, 96, 55, 55), precision)
    (y,) = b.produced(lambda: [relu.relu_forward(be, x)], lambda: [relu.relu_forward_reference(X)],
                      precision)
    assert not be.profiles  # no sampled launch made it
    want = np.maximum(widened(x), 0).astype(np.float32)
    np.testing.assert_array_equal(y, to_bf16(want) if precision == "bf16" else want)
    case = next(c for c in b.relu(precision) if c.name.startswith("relu1 backward v1"))
    be.profiles.clear()
    case.ours()
    (profile,) = be.profiles
    assert profile["blocks_run"] < profile["blocks_total"]
    y_read, dy_read = profile["arrays"][:2]
    assert dy_read["unique_load_sectors"] >= 0.95 * y_read["unique_load_sectors"] * (
        2 if precision == "bf16" else 1) > 0
    # the product profiling build groups dy's masked loads per loop trip: a warp's y load
    # spans 128 bytes (bf16: 64), its dy load at most 128, so at most 4 sectors a request
    # (bf16: 3 on average); pairing lanes' k-th loads had mixed trips (5.7 in fp32)
    per_request = profile["global_load_sectors"] / profile["global_load_requests"]
    assert per_request <= (3.0 if precision == "bf16" else 4.0)


def emu_model_unavailable():
    try:
        import pyalexnet._emu_profile  # noqa: F401
        return False
    except ImportError:
        return True
