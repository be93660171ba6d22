// Launching any kernel by name from Python: each `extern "C" __global__` function of
// kernels/*.cu is registered with a binder that turns a Python argument list into a
// call of that function (arrays -> pointers, NumPy scalars -> C scalars).
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <functional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace cuemu {
namespace py = pybind11;

struct KernelEntry {
  std::string name;
  std::string file;
  std::function<std::function<void()>(const py::list&)> bind;
};

template <class T>
struct ArgFrom {
  static T get(py::handle h, const std::string& kernel, size_t i) {
    if (py::isinstance<py::array>(h) || py::isinstance<py::bool_>(h))
      throw py::type_error("kernel " + kernel + ": argument " + std::to_string(i) +
                           " must be a scalar");
    return h.cast<T>();
  }
};

template <class T>
struct ArgFrom<T*> {
  static T* get(py::handle h, const std::string& kernel, size_t i) {
    if (!py::isinstance<py::array>(h))
      throw py::type_error("kernel " + kernel + ": argument " + std::to_string(i) +
                           " must be an array (it is a pointer parameter)");
    py::array a = py::reinterpret_borrow<py::array>(h);
    using U = std::remove_cv_t<T>;
    if constexpr (!std::is_void_v<U>) {
      if ((size_t)a.itemsize() != sizeof(U))
        throw py::type_error("kernel " + kernel + ": argument " + std::to_string(i) + " has " +
                             std::to_string(a.itemsize()) + "-byte elements, the kernel expects " +
                             std::to_string(sizeof(U)));
    }
    if (!(a.flags() & py::array::c_style))
      throw py::value_error("kernel " + kernel + ": argument " + std::to_string(i) +
                            " must be C-contiguous");
    return static_cast<T*>(const_cast<void*>(a.data()));
  }
};

template <class... A, size_t... I>
std::tuple<A...> convert_args(const py::list& args, const std::string& kernel,
                              std::index_sequence<I...>) {
  return std::tuple<A...>{ArgFrom<A>::get(args[I], kernel, I)...};
}

template <class... A>
KernelEntry make_entry(const char* name, const char* file, void (*fn)(A...)) {
  std::string kname = name;
  return KernelEntry{name, file, [fn, kname](const py::list& args) -> std::function<void()> {
                       if (args.size() != sizeof...(A))
                         throw py::type_error("kernel " + kname + " takes " +
                                              std::to_string(sizeof...(A)) + " arguments, got " +
                                              std::to_string(args.size()));
                       auto tup = convert_args<A...>(args, kname, std::index_sequence_for<A...>{});
                       return [fn, tup]() { std::apply(fn, tup); };
                     }};
}

// Defined in the generated translation unit that includes every kernel file.
void register_kernels(std::vector<KernelEntry>& out);

}  // namespace cuemu
