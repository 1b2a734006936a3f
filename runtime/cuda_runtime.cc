/*!
 * \file cuda_runtime.cc
 * \brief CudaRuntime: finding the process's libcudart (see cuda_runtime.h).
 */
#include "runtime/cuda_runtime.h"

#include <dlfcn.h>
#include <link.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/reflection/registry.h>
#include <tvm/ffi/string.h>

#include <cstring>
#include <iostream>
#include <string>
#include <vector>

namespace ios_tvm {
namespace ffi = tvm::ffi;

namespace {

/*! \brief Whether a loaded object's path names a CUDA runtime (basename libcudart.so*). */
bool IsCudaRuntimePath(const char* path) {
  if (path == nullptr || *path == '\0') return false;
  const char* base = std::strrchr(path, '/');
  base = base ? base + 1 : path;
  return std::strncmp(base, "libcudart.so", 12) == 0;
}

int CollectCudaRuntimes(struct dl_phdr_info* info, size_t, void* data) {
  if (IsCudaRuntimePath(info->dlpi_name)) {
    static_cast<std::vector<std::string>*>(data)->push_back(info->dlpi_name);
  }
  return 0;
}

/*! \brief The file `handle` was loaded from ("" when the loader does not say). */
std::string PathOf(void* handle) {
  struct link_map* map = nullptr;
  if (dlinfo(handle, RTLD_DI_LINKMAP, &map) == 0 && map != nullptr && map->l_name != nullptr) {
    return map->l_name;
  }
  return std::string();
}

}  // namespace

const std::vector<const char*>& CudaRuntime::Candidates() {
  static const std::vector<const char*> names = {"libcudart.so.13", "libcudart.so.12",
                                                 "libcudart.so"};
  return names;
}

const CudaRuntime& CudaRuntime::Get() {
  static const CudaRuntime rt = [] {
    CudaRuntime r;
    // 1. Already loaded, under whatever name: every loaded object, then every soname.
    std::vector<std::string> loaded;
    dl_iterate_phdr(CollectCudaRuntimes, &loaded);
    for (const std::string& path : loaded) {
      r.handle_ = dlopen(path.c_str(), RTLD_NOW | RTLD_NOLOAD);
      if (r.handle_ != nullptr) break;
    }
    for (size_t i = 0; r.handle_ == nullptr && i < Candidates().size(); ++i) {
      r.handle_ = dlopen(Candidates()[i], RTLD_NOW | RTLD_NOLOAD);
    }
    r.was_loaded_ = r.handle_ != nullptr;
    // 2. None loaded: open one. RTLD_LOCAL keeps its symbols out of the global scope; a later
    // load of TVM's CUDA runtime still binds to it through its soname.
    std::string tried;
    for (size_t i = 0; r.handle_ == nullptr && i < Candidates().size(); ++i) {
      r.handle_ = dlopen(Candidates()[i], RTLD_NOW | RTLD_LOCAL);
      if (r.handle_ == nullptr) {
        const char* why = dlerror();
        tried += std::string(tried.empty() ? "" : "; ") + (why ? why : Candidates()[i]);
      }
    }
    if (r.handle_ == nullptr) {
      TVM_FFI_THROW(RuntimeError) << "ios-tvm: the CUDA runtime (libcudart) could not be "
                                     "loaded; is this a CUDA machine? ("
                                  << tried << ")";
    }
    r.path_ = PathOf(r.handle_);
    return r;
  }();
  return rt;
}

void* CudaRuntime::Symbol(const char* name, const char* need) const {
  void* p = dlsym(handle_, name);
  if (p == nullptr) {
    TVM_FFI_THROW(RuntimeError) << "the CUDA runtime " << (path_.empty() ? "(libcudart)" : path_)
                                << " lacks " << name
                                << (need ? std::string(" (") + need + ")" : std::string());
  }
  return p;
}

void WarnCuda(const std::string& what) noexcept {
  try {
    std::cerr << "ios-tvm: warning: " << what << std::endl;
  } catch (...) {
  }
}

TVM_FFI_STATIC_INIT_BLOCK() {
  namespace refl = tvm::ffi::reflection;
  // For tests: finds the library now (needs libcudart, no GPU) and returns its file and
  // whether it was already loaded.
  refl::GlobalDef().def("ios_tvm.runtime.cuda_runtime_info", []() {
    const CudaRuntime& rt = CudaRuntime::Get();
    ffi::Array<ffi::String> out;
    out.push_back(ffi::String(rt.path()));
    out.push_back(ffi::String(rt.was_loaded() ? "loaded" : "opened"));
    return out;
  });
}

}  // namespace ios_tvm
