// The CUDA host-emulation runtime: fibers, the block scheduler, barriers, warp
// operations and the multi-threaded grid launch. See runtime.h for the model.
#include "runtime.h"

#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <map>
#include <mutex>
#include <numeric>
#include <random>
#include <stdexcept>
#include <thread>

#ifdef CUEMU_PROFILE
#include "profile.h"
#endif

// ---- AddressSanitizer: tell it about every stack switch ----------------------------
#if defined(__SANITIZE_ADDRESS__)
#define CUEMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CUEMU_ASAN 1
#endif
#endif
#ifdef CUEMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

namespace cuemu {

thread_local Current tls_cur;

// ---- context switch -----------------------------------------------------------------
#if defined(__x86_64__)
#define CUEMU_HAVE_ASM 1
// void cuemu_ctx_switch(void** save_sp, void* load_sp): saves the callee-saved registers,
// MXCSR and the x87 control word on the current stack, stores the stack pointer into
// *save_sp, loads load_sp and restores the same from there. A new fiber's stack is laid
// out so that the first switch "returns" into cuemu_ctx_entry with r12 = argument and
// r13 = function.
asm(R"(
  .text
  .globl cuemu_ctx_switch
  .hidden cuemu_ctx_switch
  .type cuemu_ctx_switch,@function
cuemu_ctx_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size cuemu_ctx_switch,.-cuemu_ctx_switch

  .globl cuemu_ctx_entry
  .hidden cuemu_ctx_entry
  .type cuemu_ctx_entry,@function
cuemu_ctx_entry:
  .cfi_startproc
  .cfi_undefined rip
  movq %r12, %rdi
  callq *%r13
  ud2
  .cfi_endproc
  .size cuemu_ctx_entry,.-cuemu_ctx_entry
)");
extern "C" void cuemu_ctx_switch(void** save_sp, void* load_sp);
extern "C" void cuemu_ctx_entry();
static bool g_use_asm = true;
#else
#define CUEMU_HAVE_ASM 0
static bool g_use_asm = false;
#endif

bool set_switch(const std::string& kind) {
  if (kind == "asm" && CUEMU_HAVE_ASM) { g_use_asm = true; return true; }
  if (kind == "ucontext") { g_use_asm = false; return true; }
  return false;
}
std::string get_switch() { return g_use_asm ? "asm" : "ucontext"; }

// ---- stacks -------------------------------------------------------------------------
static const size_t kStackBytes = 256 * 1024;  // kernels keep register tiles on it
// Below each stack: a frame larger than one page can step over a one-page guard into the
// next mapping (another fiber's stack) without a fault.
static const size_t kGuardBytes = 64 * 1024;
size_t fiber_stack_bytes() { return kStackBytes; }

struct Stack {
  char* base;  // lowest address: kGuardBytes of guard, then the stack
  size_t size;
  ucontext_t uctx;
};

static Stack* new_stack() {
  void* p = mmap(nullptr, kGuardBytes + kStackBytes, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::runtime_error("cuda emulator: cannot allocate a fiber stack");
  mprotect(p, kGuardBytes, PROT_NONE);
  Stack* s = new Stack;
  s->base = (char*)p;
  s->size = kGuardBytes + kStackBytes;
  return s;
}

// Stacks outlive launches: each worker borrows a set from this pool and gives it back.
static std::mutex g_pool_mu;
static std::vector<std::vector<Stack*>> g_pool;

// ---- per-OS-thread scheduler state --------------------------------------------------
struct Sched {
  void* sp = nullptr;  // the scheduler's own stack pointer while a fiber runs
  ucontext_t uctx;
  const std::function<void()>* body = nullptr;
  // A C++ exception that left a kernel: caught on the fiber's stack (an exception must
  // never unwind across a stack switch), reported by the scheduler.
  std::string fiber_error;
  // Where a fault inside a fiber jumps back to (armed while a fiber runs).
  sigjmp_buf fault_env;
  volatile sig_atomic_t fault_armed = 0;
  int fault_sig = 0;
  void* fault_addr = nullptr;
  const void* asan_bottom = nullptr;  // the scheduler's stack, for ASan's switch notes
  size_t asan_size = 0;
};
static thread_local Sched tls_sched;

static void suspend(ThreadCtx* t);

static void fiber_main(ThreadCtx* t) {
#ifdef CUEMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &tls_sched.asan_bottom, &tls_sched.asan_size);
#endif
  try {
    (*tls_sched.body)();
  } catch (const std::exception& e) {
    tls_sched.fiber_error = std::string("C++ exception in the kernel: ") + e.what();
  } catch (...) {
    tls_sched.fiber_error = "C++ exception of unknown type in the kernel";
  }
  t->state = DONE;
  suspend(t);  // never resumed: the scheduler reuses the stack
  __builtin_unreachable();
}

static void ucontext_entry(unsigned lo, unsigned hi) {
  fiber_main((ThreadCtx*)(((uintptr_t)hi << 32) | (uintptr_t)lo));
}

static void start_fiber(ThreadCtx* t, Stack* s) {
  t->stack = s;
#ifdef CUEMU_ASAN
  // an abandoned fiber (a fault, a failed block) left its frames' red zones behind
  __asan_unpoison_memory_region(s->base + kGuardBytes, s->size - kGuardBytes);
#endif
  if (g_use_asm) {
#if CUEMU_HAVE_ASM
    uintptr_t top = ((uintptr_t)(s->base + s->size)) & ~(uintptr_t)15;
    uint64_t* sp = (uint64_t*)(top - 64);
    uint32_t csr[2];
    asm volatile("stmxcsr %0" : "=m"(csr[0]));
    asm volatile("fnstcw %0" : "=m"(csr[1]));
    std::memcpy(&sp[0], csr, 8);                    // mxcsr | x87 control word
    sp[1] = 0;                                      // r15
    sp[2] = 0;                                      // r14
    sp[3] = (uint64_t)(uintptr_t)&fiber_main;       // r13: function
    sp[4] = (uint64_t)(uintptr_t)t;                 // r12: argument
    sp[5] = 0;                                      // rbx
    sp[6] = 0;                                      // rbp
    sp[7] = (uint64_t)(uintptr_t)&cuemu_ctx_entry;  // return address
    t->sp = sp;
#endif
  } else {
    ucontext_t* uc = &s->uctx;
    getcontext(uc);
    uc->uc_stack.ss_sp = s->base;
    uc->uc_stack.ss_size = s->size;
    uc->uc_link = nullptr;
    uintptr_t a = (uintptr_t)t;
    makecontext(uc, (void (*)())ucontext_entry, 2, (unsigned)(a & 0xffffffffu), (unsigned)(a >> 32));
    t->uctx = uc;
  }
}

static void resume(ThreadCtx* t) {
  tls_cur.thread = t;
#ifdef CUEMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, t->stack->base, t->stack->size);
#endif
  if (g_use_asm) {
#if CUEMU_HAVE_ASM
    cuemu_ctx_switch(&tls_sched.sp, t->sp);
#endif
  } else {
    swapcontext(&tls_sched.uctx, (ucontext_t*)t->uctx);
  }
#ifdef CUEMU_ASAN
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
}

static void suspend(ThreadCtx* t) {
#ifdef CUEMU_ASAN
  // a finished fiber's fake stack can go (nullptr); a parked one keeps it
  __sanitizer_start_switch_fiber(t->state == DONE ? nullptr : &t->asan_fake, tls_sched.asan_bottom,
                                 tls_sched.asan_size);
#endif
  if (g_use_asm) {
#if CUEMU_HAVE_ASM
    cuemu_ctx_switch(&t->sp, tls_sched.sp);
#endif
  } else {
    swapcontext((ucontext_t*)t->uctx, &tls_sched.uctx);
  }
#ifdef CUEMU_ASAN
  __sanitizer_finish_switch_fiber(t->asan_fake, &tls_sched.asan_bottom, &tls_sched.asan_size);
#endif
}

// ---- faults inside a kernel become errors ------------------------------------------
// A segmentation fault, bus error, illegal instruction or arithmetic trap on a fiber
// jumps back to the scheduler, which reports it as a kernel error (the fiber is
// abandoned; kernels hold no resources). Anywhere else the previous handler (Python's
// faulthandler, or the default action) gets the signal. The handler runs on a per-thread
// alternate stack: a fiber that overflowed its stack has no room left for it.
static const int kFaultSignals[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE};
static struct sigaction g_prev_action[32];
static std::mutex g_signal_mu;

static void fault_handler(int sig, siginfo_t* info, void* uc) {
  if (tls_sched.fault_armed) {
    tls_sched.fault_armed = 0;
    tls_sched.fault_sig = sig;
    tls_sched.fault_addr = info->si_addr;
#ifdef CUEMU_ASAN
    // leaving the fiber for good: ASan must know the stack changes back
    __sanitizer_start_switch_fiber(nullptr, tls_sched.asan_bottom, tls_sched.asan_size);
#endif
    siglongjmp(tls_sched.fault_env, 1);
  }
  const struct sigaction& prev = g_prev_action[sig];
  if ((prev.sa_flags & SA_SIGINFO) && prev.sa_sigaction) {
    prev.sa_sigaction(sig, info, uc);
  } else if (prev.sa_handler != SIG_IGN && prev.sa_handler != SIG_DFL && prev.sa_handler) {
    prev.sa_handler(sig);
  } else {
    signal(sig, SIG_DFL);  // returning re-executes the faulting instruction: default action
  }
}

// Installs the handler (again, if someone replaced it since: faulthandler may be enabled
// after this module was loaded) and this OS thread's alternate signal stack.
static void arm_fault_handling() {
  static thread_local std::vector<char> alt;
  if (alt.empty()) {
    alt.resize(64 * 1024);
    stack_t ss{};
    ss.ss_sp = alt.data();
    ss.ss_size = alt.size();
    stack_t old{};
    sigaltstack(nullptr, &old);
    if (old.ss_flags & SS_DISABLE) sigaltstack(&ss, nullptr);  // keep one a host installed
  }
  std::lock_guard<std::mutex> g(g_signal_mu);
  for (int sig : kFaultSignals) {
    struct sigaction cur{};
    sigaction(sig, nullptr, &cur);
    if ((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == fault_handler) continue;
    struct sigaction sa{};
    sa.sa_sigaction = fault_handler;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;  // NODEFER: siglongjmp leaves it unblocked
    sigemptyset(&sa.sa_mask);
    sigaction(sig, &sa, &g_prev_action[sig]);
  }
}

static std::string describe_fault(const ThreadCtx& t) {
  const char* what = tls_sched.fault_sig == SIGSEGV ? "segmentation fault"
                     : tls_sched.fault_sig == SIGBUS ? "bus error"
                     : tls_sched.fault_sig == SIGILL ? "illegal instruction (a trap)"
                                                     : "arithmetic exception";
  char addr[32];
  std::snprintf(addr, sizeof addr, "%p", tls_sched.fault_addr);
  std::string o = "thread (" + std::to_string(t.tid.x) + "," + std::to_string(t.tid.y) + "," +
                  std::to_string(t.tid.z) + "): " + what + " at address " + addr;
  char* a = (char*)tls_sched.fault_addr;
  if (t.stack && a >= t.stack->base - (1 << 20) && a < t.stack->base + kGuardBytes)
    o += ": the fiber's stack (" + std::to_string(kStackBytes / 1024) + " KiB) overflowed";
  return o;
}

// ---- what kernels call --------------------------------------------------------------
void syncthreads(const char* file, int line) {
  ThreadCtx* t = tls_cur.thread;
  t->state = BAR_WAIT;
  t->file = file;
  t->line = line;
  suspend(t);
}

unsigned long long warp_exchange(int op, unsigned mask, unsigned long long bits, int arg,
                                 int width, const char* file, int line) {
  ThreadCtx* t = tls_cur.thread;
  t->state = WARP_WAIT;
  t->file = file;
  t->line = line;
  t->wop = op;
  t->wmask = mask;
  t->wval = bits;
  t->warg = arg;
  t->wwidth = width;
  suspend(t);
  return t->wresult;
}

// ---- block scheduler ----------------------------------------------------------------
static std::string where(const ThreadCtx& t) {
  return std::string(t.file) + ":" + std::to_string(t.line);
}

struct BlockRunner {
  std::vector<ThreadCtx> ctx;
  std::vector<Stack*>* stacks;  // this worker's pool
  std::vector<Stack*> free_stacks;
  size_t stacks_used = 0;
  const LaunchOptions* opt;
  const std::string* name;

  Stack* take_stack() {
    if (!free_stacks.empty()) { Stack* s = free_stacks.back(); free_stacks.pop_back(); return s; }
    if (stacks_used == stacks->size()) stacks->push_back(new_stack());
    return (*stacks)[stacks_used++];
  }

  [[noreturn]] void fail(const std::string& msg) {

    uint3 b = tls_cur.block_idx;
    throw std::runtime_error("kernel " + *name + ", block (" + std::to_string(b.x) + "," +
                             std::to_string(b.y) + "," + std::to_string(b.z) + "): " + msg);
  }

  // Completes every warp operation whose lanes have all arrived. Each lane's result is
  // computed before any lane is released (two passes), so later lanes see earlier ones
  // still present. Returns whether any lane was released.
  bool resolve_warps(int n) {
    bool any = false;
    for (int w0 = 0; w0 < n; w0 += 32) {
      int lanes = std::min(32, n - w0);
      for (int l = 0; l < lanes; ++l) {
        ThreadCtx& lead = ctx[w0 + l];
        if (lead.state != WARP_WAIT) continue;
        unsigned need = lead.wmask & (lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1));
        bool ready = true;
        for (int j = 0; j < lanes; ++j) {
          if (!(need >> j & 1)) continue;
          const ThreadCtx& o = ctx[w0 + j];
          if (o.state == DONE)
            fail("warp operation at " + where(lead) + " names lane " + std::to_string(j) +
                 " in its mask, but that thread has exited");
          if (o.state != WARP_WAIT) { ready = false; break; }
        }
        if (!ready) continue;
        for (int j = 0; j < lanes; ++j) {
          if (!(need >> j & 1)) continue;
          const ThreadCtx& o = ctx[w0 + j];
          if (o.wmask != lead.wmask || o.wop != lead.wop)
            fail("warp operations disagree: lane " + std::to_string(l) + " at " + where(lead) +
                 " and lane " + std::to_string(j) + " at " + where(o) +
                 " (different operation or mask)");
        }
        unsigned ballot = 0;
        for (int j = 0; j < lanes; ++j)
          if ((need >> j & 1) && ctx[w0 + j].wval) ballot |= 1u << j;
        // pass 1: results
        for (int j = 0; j < lanes; ++j) {
          if (!(need >> j & 1)) continue;
          ThreadCtx& me = ctx[w0 + j];
          int width = me.wwidth;
          if (width <= 0 || width > 32 || (width & (width - 1)))
            fail("shuffle width " + std::to_string(width) + " at " + where(me) +
                 " is not a power of two in [1, 32]");
          int seg = j & ~(width - 1);
          int src = -1;
          switch (me.wop) {
            case SHFL_IDX: src = seg + (((me.warg % width) + width) % width); break;
            case SHFL_UP: src = j - me.warg; if (src < seg) src = j; break;
            case SHFL_DOWN: src = j + me.warg; if (src >= seg + width) src = j; break;
            case SHFL_XOR: src = j ^ me.warg; if (src >= seg + width || src < seg) src = j; break;
            case VOTE_BALLOT: me.wresult = ballot; break;
            case VOTE_ANY: me.wresult = ballot != 0; break;
            case VOTE_ALL: me.wresult = ballot == need; break;
            case SYNCWARP: me.wresult = 0; break;
          }
          if (src >= 0) {
            // reading a lane outside the mask is undefined in CUDA: give back own value
            me.wresult = (src < lanes && (need >> src & 1)) ? ctx[w0 + src].wval : me.wval;
          }
        }
        // pass 2: release
        for (int j = 0; j < lanes; ++j)
          if (need >> j & 1) ctx[w0 + j].state = READY;
        any = true;
      }
    }
    return any;
  }

  void run(const std::function<void()>& body, dim3 block, unsigned long long block_linear) {
    int n = (int)(block.x * block.y * block.z);
    ctx.resize(n);
    for (int i = 0; i < n; ++i) {
      ThreadCtx& t = ctx[i];
      t = ThreadCtx{};
      t.tid = uint3{(unsigned)(i % block.x), (unsigned)((i / block.x) % block.y),
                    (unsigned)(i / (block.x * block.y))};
      t.linear = i;
      t.state = NOT_STARTED;
    }
    free_stacks.clear();
    stacks_used = 0;
    tls_sched.body = &body;
    std::vector<int> order(n);
    std::iota(order.begin(), order.end(), 0);
    if (opt->order == REVERSE) std::reverse(order.begin(), order.end());
    std::mt19937_64 rng(opt->seed * 0x9E3779B97F4A7C15ull + block_linear + 1);
    for (;;) {
      if (opt->order == RANDOM) std::shuffle(order.begin(), order.end(), rng);
      for (int i : order) {
        ThreadCtx& t = ctx[i];
        if (t.state == NOT_STARTED) {
          start_fiber(&t, take_stack());
        } else if (t.state != READY) {
          continue;
        }
        t.state = READY;
        if (sigsetjmp(tls_sched.fault_env, 0)) {
#ifdef CUEMU_ASAN
          __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
#endif
          fail(describe_fault(t));
        }
        tls_sched.fault_armed = 1;
        resume(&t);
        tls_sched.fault_armed = 0;
        if (!tls_sched.fiber_error.empty()) {
          std::string msg = "thread " + std::to_string(i) + ": " + tls_sched.fiber_error;
          tls_sched.fiber_error.clear();
          fail(msg);
        }
        if (t.state == DONE) free_stacks.push_back(t.stack);  // the plain-loop fast path
      }
      if (resolve_warps(n)) continue;
      int bar = -1, live = 0;
      for (int i = 0; i < n; ++i) {
        ThreadCtx& t = ctx[i];
        if (t.state == DONE) continue;
        ++live;
        if (t.state == WARP_WAIT)
          fail("warp operation at " + where(t) + " (thread " + std::to_string(i) +
               ") can never complete: a lane in its mask waits at a different barrier");
        if (bar < 0) {
          bar = i;
        } else if (t.file != ctx[bar].file || t.line != ctx[bar].line) {
          if (std::strcmp(t.file, ctx[bar].file) != 0 || t.line != ctx[bar].line)
            fail("divergent __syncthreads: thread " + std::to_string(bar) + " waits at " +
                 where(ctx[bar]) + " but thread " + std::to_string(i) + " waits at " + where(t));
        }
      }
      if (live == 0) break;
#ifdef CUEMU_PROFILE
      prof::barrier();
#endif
      for (int i = 0; i < n; ++i)
        if (ctx[i].state == BAR_WAIT) ctx[i].state = READY;
    }
  }
};

int launch(const std::string& name, const std::function<void()>& body, dim3 grid, dim3 block,
           const LaunchOptions& opt) {
  unsigned long long nthreads = (unsigned long long)block.x * block.y * block.z;
  if (nthreads == 0 || nthreads > 1024)
    throw std::invalid_argument("kernel " + name + ": block of " + std::to_string(nthreads) +
                                " threads; CUDA allows 1 to 1024");
  if (block.z > 64) throw std::invalid_argument("kernel " + name + ": blockDim.z > 64");
  if (grid.y > 65535 || grid.z > 65535)
    throw std::invalid_argument("kernel " + name + ": gridDim.y/z above 65535");
  unsigned long long nblocks = (unsigned long long)grid.x * grid.y * grid.z;
  if (nblocks == 0) return 0;
  // blocks to run: all, or max_blocks of them spread evenly over the grid
  unsigned long long nrun = opt.max_blocks && opt.max_blocks < nblocks ? opt.max_blocks : nblocks;
  int workers = (int)std::max<unsigned long long>(1, std::min<unsigned long long>(
                                                         (unsigned long long)std::max(1, opt.threads), nrun));
  std::atomic<unsigned long long> next{0};
  std::atomic<bool> failed{false};
  std::mutex err_mu;
  std::string err;
  std::atomic<int> max_stacks{0};

  auto work = [&]() {
    std::vector<Stack*> stacks;
    {
      std::lock_guard<std::mutex> g(g_pool_mu);
      if (!g_pool.empty()) { stacks = std::move(g_pool.back()); g_pool.pop_back(); }
    }
    BlockRunner r;
    r.stacks = &stacks;
    r.opt = &opt;
    r.name = &name;
    tls_cur.block_dim = block;
    tls_cur.grid_dim = grid;
    arm_fault_handling();
#ifdef CUEMU_PROFILE
    prof::worker_begin();
#endif
    try {
      for (;;) {
        if (failed.load(std::memory_order_relaxed)) break;
        unsigned long long i = next.fetch_add(1);
        if (i >= nrun) break;
        unsigned long long b = nrun == nblocks ? i : i * nblocks / nrun;
        tls_cur.block_idx = uint3{(unsigned)(b % grid.x), (unsigned)((b / grid.x) % grid.y),
                                  (unsigned)(b / ((unsigned long long)grid.x * grid.y))};
#ifdef CUEMU_PROFILE
        prof::block_begin((int)(block.x * block.y * block.z));
#endif
        r.run(body, block, b);
#ifdef CUEMU_PROFILE
        prof::block_end();
#endif
        int used = (int)r.stacks_used, seen = max_stacks.load();
        while (used > seen && !max_stacks.compare_exchange_weak(seen, used)) {
        }
      }
    } catch (const std::exception& e) {
      std::lock_guard<std::mutex> g(err_mu);
      if (!failed.exchange(true)) err = e.what();
    }
#ifdef CUEMU_PROFILE
    prof::worker_end();
#endif
    tls_cur.thread = nullptr;
    std::lock_guard<std::mutex> g(g_pool_mu);
    g_pool.push_back(std::move(stacks));
  };

  if (workers == 1) {
    work();
  } else {
    std::vector<std::thread> pool;
    for (int i = 0; i < workers; ++i) pool.emplace_back(work);
    for (auto& th : pool) th.join();
  }
  if (failed) throw std::runtime_error(err);
  return max_stacks.load();
}

}  // namespace cuemu
