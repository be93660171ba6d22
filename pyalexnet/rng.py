"""Seeds: every random choice of a run is a pure function of the run's seed and of where it
is used, so a resumed run, or the same batch split another way, draws the same numbers.

SplitMix64 (Steele, Lea & Flood 2014) mixes the integers; Philox (in the kernels) turns a
seed and an element index into the dropout mask.
"""
M64 = (1 << 64) - 1
GOLDEN_GAMMA = 0x9E3779B97F4A7C15


def mix64(z: int) -> int:
    """SplitMix64's finaliser: a bijection of 64-bit integers that scrambles every bit."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def splitmix64(z: int) -> int:
    return mix64((int(z) + GOLDEN_GAMMA) & M64)


def step_seed(seed: int, step: int) -> int:
    """The dropout seed of a training step: a 32-bit hash of (seed, step)."""
    return mix64((int(seed) * GOLDEN_GAMMA + int(step) + 1) & M64) & 0xFFFFFFFF


def dropout_seed(seed: int, layer_index: int, tower: int) -> int:
    """The Philox key of one dropout layer's mask in one tower, from the step's seed."""
    return splitmix64(splitmix64(int(seed) & M64) ^ ((int(layer_index) << 8) | int(tower)))
