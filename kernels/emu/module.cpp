// pyalexnet._emu: launches any kernel of kernels/*.cu on the CPU by name.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <map>

#include "registry.h"
#include "runtime.h"

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

PYBIND11_MODULE(_emu, m) {
  m.doc() = "CUDA host emulation: runs pyalexnet's kernels on the CPU";
  m.attr("MAX_DYNAMIC_SHARED_BYTES") = CUEMU_MAX_DYN_SMEM;
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
         int threads, int order, unsigned long long seed) {
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
        dim3 g = to_dim3(grid, "grid"), b = to_dim3(block, "block");
        py::gil_scoped_release nogil;
        return cuemu::launch(name, body, g, b, opt);
      },
      py::arg("name"), py::arg("grid"), py::arg("block"), py::arg("shared_mem"), py::arg("args"),
      py::arg("threads") = 1, py::arg("order") = 0, py::arg("seed") = 0);
  m.def("set_switch", [](const std::string& kind) {
    if (!cuemu::set_switch(kind))
      throw py::value_error("unknown context switch '" + kind + "' (use 'asm' or 'ucontext')");
  });
  m.def("get_switch", &cuemu::get_switch);
}
