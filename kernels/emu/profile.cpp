// Access counters of the profiling build: see profile.h for the model. This file itself is
// compiled without coverage instrumentation (its own loads and stores are not counted).
#include "profile.h"

#include <dlfcn.h>
#include <link.h>

#include <algorithm>
#include <fstream>
#include <mutex>
#include <unordered_map>
#include <unordered_set>

#include "runtime.h"

namespace cuemu {
namespace prof {

void Counters::add(const Counters& o) {
  for (int k = 0; k < 2; ++k) {
    g_requests[k] += o.g_requests[k];
    g_sectors[k] += o.g_sectors[k];
    g_bytes[k] += o.g_bytes[k];
    s_requests[k] += o.s_requests[k];
    s_wavefronts[k] += o.s_wavefronts[k];
    s_ideal[k] += o.s_ideal[k];
    s_bytes[k] += o.s_bytes[k];
  }
  for (int f = 0; f < MMA_FORMATS; ++f) {
    mma[f] += o.mma[f];
    tensor_flops[f] += o.tensor_flops[f];
  }
  for (int b = 0; b < REUSE_BUCKETS; ++b) load_reuse[b] += o.load_reuse[b];
  load_first += o.load_first;
  barriers += o.barriers;
  atomics_global += o.atomics_global;
  atomics_shared += o.atomics_shared;
  blocks += o.blocks;
}

namespace {

enum Space : uint8_t { GLOBAL, SHARED };

struct PerArray {
  std::unordered_set<uint64_t> unique[2];
  std::unordered_set<uint64_t> block[2];  // the current block's distinct sectors
  uint64_t block_unique[2] = {0, 0};      // their count, summed over blocks
  uint64_t requested[2] = {0, 0};
};

// LRU stack distances of one block's sector loads (Mattson et al. 1970): a Fenwick tree
// over access times marks each sector's latest access, so the distinct sectors since a
// sector's previous access are the marks after it, counted in O(log n).
class ReuseStack {
 public:
  void reset() {
    last_.clear();
    tree_.assign(1 << 12, 0);
    now_ = 0;
  }
  // The reuse distance of this access to `key`, or -1 for its first in the block.
  int64_t touch(uint64_t key) {
    if (now_ + 2 >= tree_.size()) grow();
    int64_t d = -1;
    auto it = last_.find(key);
    if (it == last_.end()) {
      last_.emplace(key, now_);
    } else {
      d = before(now_) - before(it->second + 1);
      mark(it->second, -1);
      it->second = now_;
    }
    mark(now_, +1);
    ++now_;
    return d;
  }

 private:
  void mark(uint32_t t, int v) {
    for (size_t i = t + 1; i < tree_.size(); i += i & (0 - i)) tree_[i] += v;
  }
  int64_t before(uint32_t t) const {  // marks at times < t
    int64_t s = 0;
    for (size_t i = t; i > 0; i -= i & (0 - i)) s += tree_[i];
    return s;
  }
  void grow() {
    tree_.assign(2 * tree_.size(), 0);
    for (const auto& kv : last_) mark(kv.second, +1);
  }
  std::unordered_map<uint64_t, uint32_t> last_;  // sector -> time of its latest load
  std::vector<int32_t> tree_;
  uint32_t now_ = 0;
};

int reuse_bucket(int64_t d) {
  int b = 0;
  while (d > 0 && b < REUSE_BUCKETS - 1) {
    d >>= 1;
    ++b;
  }
  return b;
}

struct LaunchState {
  std::mutex mu;
  std::vector<Buffer> buffers;
  Counters total;
  std::vector<PerArray> arrays;
  std::unordered_map<uintptr_t, uint64_t> block_runs;  // basic block -> executions
  std::unordered_map<uintptr_t, uint64_t> warp_runs;   // basic block -> warp executions
};
LaunchState g_launch;

// FP32 operations and instructions of each basic block of the kernel code, and the loop it
// is in, written next to this module by kernels/emu/build.py from its machine code
// ("<module file>.flops": offset, flops, instructions, loop head, outer loop's head per
// line; see build.py's loop_heads).
struct BlockCost {
  uint32_t flops, instructions;
  // the head block of the innermost loop around this block (0: none); for a head, the head
  // of the loop around its loop
  uintptr_t loop, outer;
};
struct FlopTable {
  bool loaded = false;
  uintptr_t base = 0;
  std::unordered_map<uintptr_t, BlockCost> cost;  // offset of a block's coverage call return
};
FlopTable& flop_table() {
  static FlopTable t;
  static std::once_flag once;
  std::call_once(once, [] {
    Dl_info info{};
    if (!dladdr((void*)&flop_table, &info) || !info.dli_fname) return;
    t.base = (uintptr_t)info.dli_fbase;
    std::ifstream in(std::string(info.dli_fname) + ".flops");
    uintptr_t off, loop, outer;
    uint32_t f, n;
    while (in >> std::hex >> off >> std::dec >> f >> n >> std::hex >> loop >> outer)
      t.cost[off] = BlockCost{f, n, loop, outer};
    t.loaded = (bool)in.eof();
  });
  return t;
}

// One warp instruction being assembled from its lanes' accesses.
struct Group {
  uint64_t seq;      // when its first lane arrived: partial groups finish in this order
  uint8_t space, kind, size, n;
  uint8_t buf[32];   // argument buffer of each lane's access (global)
  uint64_t addr[32];
};

// splitmix64's finalizer: every input bit moves every output bit (a hash table of keys
// that differ in a few high bits would otherwise fill one bucket).
inline uint64_t mix64(uint64_t x) {
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

struct Key {
  uintptr_t pc;
  uint64_t trip;
  uint32_t occurrence, warp;
  bool operator==(const Key& o) const {
    return pc == o.pc && trip == o.trip && occurrence == o.occurrence && warp == o.warp;
  }
};
struct KeyHash {
  size_t operator()(const Key& k) const {
    return mix64(k.pc ^ mix64(k.trip ^ mix64((uint64_t)k.occurrence << 32 | k.warp)));
  }
};
// A site's executions by one thread within one trip: the trip they were counted in.
struct Occurrences {
  uint64_t trip = 0;
  uint32_t count = 0;
};

// Where one thread is in its loops, as a warp's SIMT stack sees them: the trip of each loop
// around the block it is in, outermost first. The loops are the machine code's natural
// loops (FlopTable: each block's innermost loop head and each head's outer loop), so a
// lane that skips blocks of a trip, or whose inner loops ran more trips than another's,
// still agrees with the others on the trips of the loops around a site.
struct LaneLoops {
  std::vector<std::pair<uintptr_t, uint32_t>> trips;  // loop head -> trip (0: the first)
  uint64_t key = 0;                                   // a hash of `trips`

  void enter(uintptr_t block, const FlopTable& t) {
    auto it = t.cost.find(block);
    const uintptr_t loop = it == t.cost.end() ? 0 : it->second.loop;
    if (!trips.empty() && trips.back().first == loop) {  // within the loop it was in
      if (block == loop) {  // its next trip
        ++trips.back().second;
        rehash();
      }
      return;
    }
    if (trips.empty() && loop == 0) return;
    // leave the loops that are not around this block, enter the one it is in
    uintptr_t around[16];
    int depth = 0;
    for (uintptr_t h = loop; h && depth < 16; ++depth) {
      around[depth] = h;
      auto o = t.cost.find(h);
      h = o == t.cost.end() ? 0 : o->second.outer;
    }
    while (!trips.empty() && std::find(around, around + depth, trips.back().first) == around + depth)
      trips.pop_back();
    if (loop && (trips.empty() || trips.back().first != loop)) trips.emplace_back(loop, 0);
    else if (loop && block == loop) ++trips.back().second;
    rehash();
  }

 private:
  void rehash() {
    key = 0;
    for (const auto& l : trips) key = mix64(mix64(key ^ l.first) ^ l.second);
  }
};

struct Worker {
  bool on = false;
  int mute = 0;  // inside an atomic's emulation
  uintptr_t tls_lo = 0, tls_hi = 0, skip_lo = 0, skip_hi = 0;
  int nthreads = 0;
  std::unordered_map<uint64_t, Occurrences> occurrences;  // key: thread << 48 | site
  std::vector<LaneLoops> loops;  // per thread (linear index)
  std::unordered_map<Key, Group, KeyHash> pending;
  uint64_t next_seq = 0;
  std::unordered_map<uintptr_t, uint64_t> block_runs;
  std::unordered_map<uintptr_t, uint64_t> warp_runs;
  // the current block's executions of each basic block, per thread (linear index)
  std::unordered_map<uintptr_t, std::vector<uint32_t>> lane_runs;
  Counters c;
  std::vector<PerArray> arrays;
  ReuseStack reuse;  // the current block's
  const FlopTable* loop_table = nullptr;  // for LaneLoops (null: no table, no trips)
};
thread_local Worker W;

// This thread's instance of the module's TLS block: where `__shared__` arrays live.
int find_tls(struct dl_phdr_info* info, size_t, void* data) {
  auto* w = (Worker*)data;
  uintptr_t self = (uintptr_t)&find_tls;
  bool mine = false;
  size_t tls_size = 0;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)& ph = info->dlpi_phdr[i];
    uintptr_t lo = info->dlpi_addr + ph.p_vaddr;
    if (ph.p_type == PT_LOAD && self >= lo && self < lo + ph.p_memsz) mine = true;
    if (ph.p_type == PT_TLS) tls_size = ph.p_memsz;
  }
  if (!mine) return 0;
  w->tls_lo = (uintptr_t)info->dlpi_tls_data;
  w->tls_hi = w->tls_lo + (w->tls_lo ? tls_size : 0);
  return 1;
}

int lanes_in_warp(int warp) { return std::min(32, W.nthreads - 32 * warp); }

void finish(const Group& g) {
  Counters& c = W.c;
  int k = g.kind;
  if (g.space == GLOBAL) {
    uint64_t sec[64];
    int ns = 0;
    for (int l = 0; l < g.n; ++l) {
      uint64_t first = g.addr[l] >> 5, last = (g.addr[l] + g.size - 1) >> 5;
      for (uint64_t s = first; s <= last && ns < 64; ++s) {
        sec[ns++] = (uint64_t)g.buf[l] << 48 | s;  // sectors count per array
        W.arrays[g.buf[l]].unique[k].insert(s);
        W.arrays[g.buf[l]].block[k].insert(s);
      }
    }
    std::sort(sec, sec + ns);
    int uniq = (int)(std::unique(sec, sec + ns) - sec);
    if (k == LOAD) {
      for (int i = 0; i < uniq; ++i) {
        int64_t d = W.reuse.touch(sec[i]);
        if (d < 0) c.load_first += 1;
        else c.load_reuse[reuse_bucket(d)] += 1;
      }
    }
    c.g_requests[k] += 1;
    c.g_sectors[k] += uniq;
    c.g_bytes[k] += (uint64_t)g.n * g.size;
    W.arrays[g.buf[0]].requested[k] += uniq;
  } else {
    // 32 banks of 4 bytes. Accesses wider than 4 bytes go in phases of 128 bytes (8-byte
    // accesses per half-warp, 16-byte per quarter-warp). A phase needs as many wavefronts
    // as the most distinct words any one bank holds; lanes reading one word share it.
    int words = std::max(1, g.size / 4), per_phase = 32 / std::min(words, 4);
    uint64_t wavefronts = 0, ideal = 0;
    for (int p0 = 0; p0 < 32; p0 += per_phase) {
      uint64_t bank_words[32][32];
      int count[32] = {0};
      bool any = false;
      for (int l = 0; l < g.n; ++l) {
        int lane = g.buf[l];  // for shared accesses buf holds the lane
        if (lane < p0 || lane >= p0 + per_phase) continue;
        any = true;
        for (int j = 0; j < words; ++j) {
          uint64_t w = (g.addr[l] >> 2) + j;
          int b = (int)(w & 31);
          bool seen = false;
          for (int q = 0; q < count[b]; ++q) seen |= bank_words[b][q] == w;
          if (!seen && count[b] < 32) bank_words[b][count[b]++] = w;
        }
      }
      if (!any) continue;
      int most = 0;
      for (int b = 0; b < 32; ++b) most = std::max(most, count[b]);
      wavefronts += most;
      ideal += 1;
    }
    c.s_requests[k] += 1;
    c.s_wavefronts[k] += wavefronts;
    c.s_ideal[k] += ideal;
    c.s_bytes[k] += (uint64_t)g.n * g.size;
  }
}

inline void access(const void* p, int size, int kind, void* site) {
  Worker& w = W;
  if (!w.on || w.mute) return;
  ThreadCtx* t = tls_cur.thread;
  if (!t) return;
  uintptr_t a = (uintptr_t)p;
  uint8_t space, buf = 0;
  if (a >= w.tls_lo && a < w.tls_hi) {
    if (a >= w.skip_lo && a < w.skip_hi) return;  // the runtime's tls_cur (threadIdx...)
    space = SHARED;
  } else {
    const std::vector<Buffer>& bs = g_launch.buffers;
    size_t i = 0;
    while (i < bs.size() && !(a >= bs[i].lo && a < bs[i].hi)) ++i;
    if (i == bs.size()) return;  // a fiber stack or the runtime's data
    space = GLOBAL;
    buf = (uint8_t)i;
    a -= bs[i].lo;  // sectors count from the array's start: cudaMalloc aligns it to 256
  }
  uint64_t okey = ((uint64_t)t->linear << 48) | ((uintptr_t)site & 0xffffffffffffull);
  uint64_t trip = w.loops.empty() ? 0 : w.loops[t->linear].key;
  Occurrences& o = w.occurrences[okey];
  if (o.trip != trip) o = Occurrences{trip, 0};
  int warp = t->linear >> 5, lane = t->linear & 31;
  Key key{(uintptr_t)site, trip, o.count++, (uint32_t)warp};
  Group& g = w.pending[key];
  if (g.n == 0) {
    g.seq = w.next_seq++;
    g.space = space;
    g.kind = (uint8_t)kind;
    g.size = (uint8_t)size;
  }
  g.addr[g.n] = a;
  g.buf[g.n] = space == SHARED ? (uint8_t)lane : buf;
  g.n++;
  if (g.n == lanes_in_warp(warp)) {
    finish(g);
    w.pending.erase(key);
  }
}

// Instructions some lanes of their warp never reached (diverged lanes) end as partial ones
// once no lane can join them any more: at a barrier of the block and at its end. They
// finish in the order they began, so the reuse distances do not depend on the hash table's
// order (which follows the code's load address, so it changed from run to run).
void finish_pending() {
  std::vector<const Group*> partial;
  partial.reserve(W.pending.size());
  for (const auto& kv : W.pending) partial.push_back(&kv.second);
  std::sort(partial.begin(), partial.end(),
            [](const Group* a, const Group* b) { return a->seq < b->seq; });
  for (const Group* g : partial) finish(*g);
  W.pending.clear();
}

}  // namespace

void launch_begin(const std::vector<Buffer>& buffers) {
  g_launch.buffers = buffers;
  g_launch.total = Counters{};
  g_launch.arrays.assign(buffers.size(), PerArray{});
}

Result launch_end() {
  Result r;
  r.c = g_launch.total;
  const FlopTable& ft = flop_table();
  r.flops = r.thread_instructions = r.warp_instructions = ft.loaded ? 0 : -1;
  if (ft.loaded) {
    for (const auto& kv : g_launch.block_runs) {
      auto it = ft.cost.find(kv.first - ft.base);
      if (it == ft.cost.end()) continue;
      r.flops += (int64_t)(kv.second * it->second.flops);
      r.thread_instructions += (int64_t)(kv.second * it->second.instructions);
    }
    for (const auto& kv : g_launch.warp_runs) {
      auto it = ft.cost.find(kv.first - ft.base);
      if (it != ft.cost.end()) r.warp_instructions += (int64_t)(kv.second * it->second.instructions);
    }
  }
  g_launch.block_runs.clear();
  g_launch.warp_runs.clear();
  for (size_t i = 0; i < g_launch.buffers.size(); ++i) {
    const PerArray& a = g_launch.arrays[i];
    r.arrays.push_back(ArrayTraffic{g_launch.buffers[i].arg,
                                    g_launch.buffers[i].hi - g_launch.buffers[i].lo,
                                    {a.unique[0].size(), a.unique[1].size()},
                                    {a.block_unique[0], a.block_unique[1]},
                                    {a.requested[0], a.requested[1]}});
  }
  g_launch.buffers.clear();
  g_launch.arrays.clear();
  return r;
}

void worker_begin() {
  W.c = Counters{};
  W.arrays.assign(g_launch.buffers.size(), PerArray{});
  (void)tls_cur.block_idx;  // the TLS block exists once this thread touched it
  dl_iterate_phdr(find_tls, &W);
  W.skip_lo = (uintptr_t)&tls_cur;
  W.skip_hi = W.skip_lo + sizeof(tls_cur);
  const FlopTable& ft = flop_table();
  W.loop_table = ft.loaded ? &ft : nullptr;
}

void block_begin(int nthreads) {
  W.nthreads = nthreads;
  W.occurrences.clear();
  W.loops.assign(nthreads, LaneLoops{});
  W.pending.clear();
  W.lane_runs.clear();  // a block that faulted never reached block_end
  W.mute = 0;           // nor left the scope it faulted in
  for (PerArray& a : W.arrays)
    for (auto& b : a.block) b.clear();
  W.reuse.reset();
  W.on = true;
}

void block_end() {
  W.on = false;
  finish_pending();
  // A warp runs a basic block as often as its busiest lane does (SIMT: diverged paths
  // run one after the other, idle lanes masked off).
  for (const auto& kv : W.lane_runs) {
    const std::vector<uint32_t>& n = kv.second;
    uint64_t sum = 0, warps = 0;
    for (size_t w0 = 0; w0 < n.size(); w0 += 32) {
      uint32_t most = 0;
      for (size_t i = w0; i < std::min(n.size(), w0 + 32); ++i) {
        sum += n[i];
        most = std::max(most, n[i]);
      }
      warps += most;
    }
    W.block_runs[kv.first] += sum;
    W.warp_runs[kv.first] += warps;
  }
  W.lane_runs.clear();
  for (PerArray& a : W.arrays)
    for (int k = 0; k < 2; ++k) {
      a.block_unique[k] += a.block[k].size();
      a.block[k].clear();
    }
  W.c.blocks += 1;
}

void barrier() {
  W.c.barriers += 1;
  finish_pending();
}

void worker_end() {
  W.on = false;
  std::lock_guard<std::mutex> g(g_launch.mu);
  g_launch.total.add(W.c);
  for (const auto& kv : W.block_runs) g_launch.block_runs[kv.first] += kv.second;
  for (const auto& kv : W.warp_runs) g_launch.warp_runs[kv.first] += kv.second;
  W.block_runs.clear();
  W.warp_runs.clear();
  for (size_t i = 0; i < W.arrays.size() && i < g_launch.arrays.size(); ++i) {
    for (int k = 0; k < 2; ++k) {
      g_launch.arrays[i].unique[k].insert(W.arrays[i].unique[k].begin(), W.arrays[i].unique[k].end());
      g_launch.arrays[i].requested[k] += W.arrays[i].requested[k];
      g_launch.arrays[i].block_unique[k] += W.arrays[i].block_unique[k];
    }
  }
  W.arrays.clear();
}

AtomicScope::AtomicScope(const void* p) {
  Worker& w = W;
  if (w.on && !w.mute) {
    uintptr_t a = (uintptr_t)p;
    if (a >= w.tls_lo && a < w.tls_hi) w.c.atomics_shared += 1;
    else w.c.atomics_global += 1;
  }
  w.mute += 1;
}
AtomicScope::~AtomicScope() { W.mute -= 1; }

void mma_tile(int format, uint64_t flops) {
  if (!W.on) return;
  W.c.mma[format] += 1;
  W.c.tensor_flops[format] += flops;
}

}  // namespace prof
}  // namespace cuemu

// ---- the coverage callbacks (clang -fsanitize-coverage=trace-loads,trace-stores) -------
#define CUEMU_COV(bytes, type)                                                             \
  extern "C" void __sanitizer_cov_load##bytes(type* p) {                                   \
    cuemu::prof::access(p, bytes, cuemu::prof::LOAD, __builtin_return_address(0));         \
  }                                                                                         \
  extern "C" void __sanitizer_cov_store##bytes(type* p) {                                  \
    cuemu::prof::access(p, bytes, cuemu::prof::STORE, __builtin_return_address(0));        \
  }
CUEMU_COV(1, uint8_t)
CUEMU_COV(2, uint16_t)
CUEMU_COV(4, uint32_t)
CUEMU_COV(8, uint64_t)
CUEMU_COV(16, __int128)
#undef CUEMU_COV
// Basic-block coverage (needed for clang to emit the load/store callbacks at all) counts
// each block's executions per thread: FLOPs and instructions are those counts times the
// blocks' FP32 operations and instructions, per thread and per warp (block_end).
extern "C" void __sanitizer_cov_trace_pc() {
  cuemu::prof::Worker& w = cuemu::prof::W;
  if (!w.on || w.mute || !cuemu::tls_cur.thread) return;
  uintptr_t pc = (uintptr_t)__builtin_return_address(0);
  int t = cuemu::tls_cur.thread->linear;
  std::vector<uint32_t>& n = w.lane_runs[pc];
  if (n.empty()) n.assign(w.nthreads, 0);
  n[t]++;
  if (w.loop_table) w.loops[t].enter(pc - w.loop_table->base, *w.loop_table);
}
