// pyalexnet._emu: launches any kernel of kernels/*.cu on the CPU by name. The same file
// makes every build of the emulator (the module name comes from the build: CUEMU_MODULE).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <map>
#include <mutex>

#include "registry.h"
#include "runtime.h"
#ifdef CUEMU_PROFILE
#include "profile.h"
#endif

#ifndef CUEMU_MODULE
#define CUEMU_MODULE _emu
#endif
#ifndef CUEMU_BUILD_FLAGS
#define CUEMU_BUILD_FLAGS "(not recorded: built by setuptools, see its log)"
#endif

namespace py = pybind11;

static std::map<std::string, cuemu::KernelEntry>& kernels() {
  static std::map<std::string, cuemu::KernelEntry> table = [] {
    std::vector<cuemu::KernelEntry> all;
    cuemu::register_kernels(all);
    std::map<std::string, cuemu::KernelEntry> t;
    for (auto& e : all) t.emplace(e.name, e);
    return t;
  }();
  return table;
}

static dim3 to_dim3(const std::vector<unsigned>& v, const char* what) {
  if (v.empty() || v.size() > 3) throw py::value_error(std::string(what) + " needs 1 to 3 sizes");
  return dim3(v[0], v.size() > 1 ? v[1] : 1, v.size() > 2 ? v[2] : 1);
}

#ifdef CUEMU_PROFILE
// The array arguments of a launch: the profiler's global address space.
static std::vector<cuemu::prof::Buffer> array_buffers(const py::list& args) {
  std::vector<cuemu::prof::Buffer> out;
  for (size_t i = 0; i < args.size(); ++i) {
    if (!py::isinstance<py::array>(args[i])) continue;
    py::array a = py::reinterpret_borrow<py::array>(args[i]);
    uintptr_t lo = (uintptr_t)a.data();
    out.push_back(cuemu::prof::Buffer{lo, lo + (uintptr_t)a.nbytes(), (int)i});
  }
  if (out.size() > 255) throw py::value_error("the profiler tells at most 255 array arguments apart");
  return out;
}

static py::dict profile_dict(const cuemu::prof::Result& r) {
  py::dict d;
  const cuemu::prof::Counters& c = r.c;
  const char* kind[2] = {"load", "store"};
  for (int k = 0; k < 2; ++k) {
    std::string g = std::string("global_") + kind[k], s = std::string("shared_") + kind[k];
    d[(g + "_requests").c_str()] = c.g_requests[k];
    d[(g + "_sectors").c_str()] = c.g_sectors[k];
    d[(g + "_bytes").c_str()] = c.g_bytes[k];
    d[(s + "_requests").c_str()] = c.s_requests[k];
    d[(s + "_wavefronts").c_str()] = c.s_wavefronts[k];
    d[(s + "_ideal_wavefronts").c_str()] = c.s_ideal[k];
    d[(s + "_bytes").c_str()] = c.s_bytes[k];
  }
  d["flops"] = r.flops < 0 ? py::object(py::none()) : py::object(py::int_(r.flops));
  for (auto [key, v] : {std::pair<const char*, int64_t>{"thread_instructions", r.thread_instructions},
                        {"warp_instructions", r.warp_instructions}})
    d[key] = v < 0 ? py::object(py::none()) : py::object(py::int_(v));
  const char* format[cuemu::prof::MMA_FORMATS] = {"tf32", "bf16"};
  for (int f = 0; f < cuemu::prof::MMA_FORMATS; ++f) {
    d[(std::string("mma_") + format[f]).c_str()] = c.mma[f];
    d[(std::string("tensor_flops_") + format[f]).c_str()] = c.tensor_flops[f];
  }
  py::list reuse;
  for (int b = 0; b < cuemu::prof::REUSE_BUCKETS; ++b) reuse.append(c.load_reuse[b]);
  d["load_reuse_sectors"] = reuse;
  d["load_first_sectors"] = c.load_first;
  d["barriers"] = c.barriers;
  d["atomics_global"] = c.atomics_global;
  d["atomics_shared"] = c.atomics_shared;
  d["blocks_run"] = c.blocks;
  py::list arrays;
  for (const auto& a : r.arrays) {
    py::dict e;
    e["arg"] = a.arg;
    e["bytes"] = a.bytes;
    e["unique_load_sectors"] = a.unique_sectors[0];
    e["unique_store_sectors"] = a.unique_sectors[1];
    e["block_unique_load_sectors"] = a.block_unique_sectors[0];
    e["block_unique_store_sectors"] = a.block_unique_sectors[1];
    e["requested_load_sectors"] = a.requested_sectors[0];
    e["requested_store_sectors"] = a.requested_sectors[1];
    arrays.append(e);
  }
  d["arrays"] = arrays;
  return d;
}
static std::mutex g_profile_mu;  // the profiler follows one launch at a time
// never destroyed: a static Python object must not outlive the interpreter
static py::dict& last_profile() {
  static py::dict* d = new py::dict();
  return *d;
}
#endif

PYBIND11_MODULE(CUEMU_MODULE, m) {
  m.doc() = "CUDA host emulation: runs pyalexnet's kernels on the CPU";
  m.attr("MAX_DYNAMIC_SHARED_BYTES") = CUEMU_MAX_DYN_SMEM;
#ifdef CUEMU_PROFILE
  m.attr("PROFILER") = true;
  m.def("last_profile", [] { return last_profile(); },
        "Counters of this module's last launch (raw counts of the blocks it ran).");
#else
  m.attr("PROFILER") = false;
#endif
  {
    py::dict info;
#if defined(__clang__)
    info["compiler"] = std::string("clang ") + __clang_version__;
#else
    info["compiler"] = std::string("g++ ") + __VERSION__;
#endif
    info["flags"] = CUEMU_BUILD_FLAGS;
    info["fiber_stack_bytes"] = cuemu::fiber_stack_bytes();
    m.attr("BUILD_INFO") = info;
  }
  m.def("kernel_names", [] {
    std::vector<std::string> names;
    for (auto& kv : kernels()) names.push_back(kv.first);
    return names;
  });
  m.def("kernel_file", [](const std::string& name) { return kernels().at(name).file; });
  // Returns the most fiber stacks one block held at once (1: no barrier was reached).
  m.def(
      "launch",
      [](const std::string& name, const std::vector<unsigned>& grid,
         const std::vector<unsigned>& block, size_t shared_mem, const py::list& args,
         int threads, int order, unsigned long long seed, unsigned long long max_blocks) {
        auto it = kernels().find(name);
        if (it == kernels().end())
          throw py::key_error("no kernel named '" + name + "' in the emulator build; "
                              "rebuild with `pip install -e .` after adding a kernel");
        if (shared_mem > CUEMU_MAX_DYN_SMEM)
          throw py::value_error("kernel " + name + ": " + std::to_string(shared_mem) +
                                " bytes of dynamic shared memory exceed the device limit of " +
                                std::to_string(CUEMU_MAX_DYN_SMEM));
        std::function<void()> body = it->second.bind(args);
        cuemu::LaunchOptions opt;
        opt.threads = threads;
        opt.order = order;
        opt.seed = seed;
        opt.max_blocks = max_blocks;
        dim3 g = to_dim3(grid, "grid"), b = to_dim3(block, "block");
#ifdef CUEMU_PROFILE
        std::vector<cuemu::prof::Buffer> buffers = array_buffers(args);
        int fibers;
        cuemu::prof::Result r;
        {
          py::gil_scoped_release nogil;
          std::lock_guard<std::mutex> lock(g_profile_mu);
          cuemu::prof::launch_begin(buffers);
          try {
            fibers = cuemu::launch(name, body, g, b, opt);
          } catch (...) {
            cuemu::prof::launch_end();
            throw;
          }
          r = cuemu::prof::launch_end();
        }
        last_profile() = profile_dict(r);
        last_profile()["blocks_total"] = (unsigned long long)g.x * g.y * g.z;
        return fibers;
#else
        py::gil_scoped_release nogil;
        return cuemu::launch(name, body, g, b, opt);
#endif
      },
      py::arg("name"), py::arg("grid"), py::arg("block"), py::arg("shared_mem"), py::arg("args"),
      py::arg("threads") = 1, py::arg("order") = 0, py::arg("seed") = 0, py::arg("max_blocks") = 0);
  m.def("set_switch", [](const std::string& kind) {
    if (!cuemu::set_switch(kind))
      throw py::value_error("unknown context switch '" + kind + "' (use 'asm' or 'ucontext')");
  });
  m.def("get_switch", &cuemu::get_switch);
}
