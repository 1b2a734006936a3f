/*!
 * \file cuda_graph.cc
 * \brief CudaGraphApi (run-time resolved CUDA graph entry points) and CudaGraphRunner.
 */
#include "runtime/cuda_graph.h"

#include <dlfcn.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/reflection/registry.h>
#include <tvm/ffi/string.h>

#include <exception>
#include <sstream>
#include <string>
#include <vector>

#include "runtime/cuda_runtime.h"

namespace ios_tvm {
namespace ffi = tvm::ffi;

const std::vector<const char*>& CudaGraphApi::SymbolNames() {
  static const std::vector<const char*> names = {
      "cudaStreamBeginCapture", "cudaStreamEndCapture", "cudaStreamIsCapturing",
      "cudaGraphInstantiateWithFlags", "cudaGraphGetNodes", "cudaGraphLaunch",
      "cudaGraphExecDestroy", "cudaGraphDestroy", "cudaGetLastError", "cudaGetErrorName",
      "cudaGetErrorString"};
  return names;
}

namespace {

CudaGraphApi LoadCudaGraphApi() {
  // The same libcudart as TVM's and the executor's (runtime/cuda_runtime.h).
  const CudaRuntime& rt = CudaRuntime::Get();
  std::vector<void*> syms;
  for (const char* name : CudaGraphApi::SymbolNames()) {
    syms.push_back(rt.Symbol(name, "CUDA graphs need CUDA 12 or newer"));
  }
  CudaGraphApi api;
  size_t i = 0;
  api.stream_begin_capture = reinterpret_cast<CudaGraphApi::StreamBeginCapture>(syms[i++]);
  api.stream_end_capture = reinterpret_cast<CudaGraphApi::StreamEndCapture>(syms[i++]);
  api.stream_is_capturing = reinterpret_cast<CudaGraphApi::StreamIsCapturing>(syms[i++]);
  api.graph_instantiate = reinterpret_cast<CudaGraphApi::GraphInstantiateWithFlags>(syms[i++]);
  api.graph_get_nodes = reinterpret_cast<CudaGraphApi::GraphGetNodes>(syms[i++]);
  api.graph_launch = reinterpret_cast<CudaGraphApi::GraphLaunch>(syms[i++]);
  api.graph_exec_destroy = reinterpret_cast<CudaGraphApi::GraphExecDestroy>(syms[i++]);
  api.graph_destroy = reinterpret_cast<CudaGraphApi::GraphDestroy>(syms[i++]);
  api.get_last_error = reinterpret_cast<CudaGraphApi::GetLastError>(syms[i++]);
  api.get_error_name = reinterpret_cast<CudaGraphApi::GetErrorText>(syms[i++]);
  api.get_error_string = reinterpret_cast<CudaGraphApi::GetErrorText>(syms[i++]);
  return api;
}

/*! \brief Why a capture usually fails, appended to capture errors. */
constexpr const char* kCaptureHint =
    "Kernels captured into a CUDA graph must only enqueue work on the current stream: "
    "synchronising, allocating or freeing device memory, synchronous copies and the legacy "
    "default stream cannot be captured. Run this executor without CUDA graphs "
    "(cuda_graph=False) to execute such kernels.";

}  // namespace

const CudaGraphApi& CudaGraphApi::Get() {
  static const CudaGraphApi api = LoadCudaGraphApi();
  return api;
}

std::string CudaGraphApi::Describe(int err) const {
  std::ostringstream os;
  os << (get_error_name ? get_error_name(err) : "cudaError") << " (" << err
     << "): " << (get_error_string ? get_error_string(err) : "unknown error");
  return os.str();
}

void CudaGraphApi::Check(int err, const char* what) const {
  if (err != 0) TVM_FFI_THROW(RuntimeError) << "CUDA error in " << what << ": " << Describe(err);
}

void CudaGraphRunner::Capture(const std::function<void()>& issue,
                              const std::function<std::string()>& where,
                              const std::function<void()>& abort) {
  const CudaGraphApi& api = CudaGraphApi::Get();
  Reset();
  api.get_last_error();  // a stale error of earlier work must not be blamed on the capture
  api.Check(api.stream_begin_capture(stream_, CudaGraphApi::kCaptureModeThreadLocal),
            "cudaStreamBeginCapture");
  capturing_ = true;
  bool failed = true;
  std::string failure;
  try {
    issue();
    failed = false;
  } catch (const ffi::Error& e) {
    failure = (e.kind() == "RuntimeError" ? "" : e.kind() + ": ") + e.message();
  } catch (const std::exception& e) {
    failure = e.what();
  } catch (...) {
    failure = "an unknown exception";
  }
  std::string at;
  if (failed) {
    try {
      at = where ? where() : std::string();
      if (abort) abort();
    } catch (...) {
    }
  }
  void* graph = nullptr;
  int end_err = api.stream_end_capture(stream_, &graph);
  capturing_ = false;
  api.get_last_error();  // capture errors are not sticky; leave the thread's state clean
  if (!failed && end_err != 0) {
    failed = true;
    failure = "cudaStreamEndCapture: " + api.Describe(end_err);
    if (end_err == CudaGraphApi::kErrorStreamCaptureUnjoined) {
      failure += " (a side stream was not joined back into stream 0)";
    }
  }
  if (!failed && graph == nullptr) {
    failed = true;
    failure = "cudaStreamEndCapture returned no graph";
  }
  if (!failed) {
    size_t n = 0;
    int err = api.graph_get_nodes(graph, nullptr, &n);
    if (err == 0) num_nodes_ = static_cast<int64_t>(n);
    err = api.graph_instantiate(&exec_, graph, 0);
    if (err != 0) {
      exec_ = nullptr;
      failed = true;
      failure = "cudaGraphInstantiateWithFlags: " + api.Describe(err);
    }
  }
  if (graph != nullptr) api.graph_destroy(graph);  // the instantiated graph does not need it
  if (failed) {
    api.get_last_error();
    num_nodes_ = 0;
    TVM_FFI_THROW(RuntimeError) << "CUDA graph capture failed" << (at.empty() ? "" : " in ")
                                << at << ": " << failure << ". " << kCaptureHint;
  }
  ++captures_;
}

void CudaGraphRunner::CheckCapture(void* stream) const {
  const CudaGraphApi& api = CudaGraphApi::Get();
  int status = CudaGraphApi::kCaptureStatusNone;
  int err = api.stream_is_capturing(stream, &status);
  int last = api.get_last_error();
  if (err == 0 && last == 0 && status == CudaGraphApi::kCaptureStatusActive) return;
  std::ostringstream os;
  if (last != 0) {
    os << "a CUDA call made by it failed with " << api.Describe(last);
  } else if (err != 0) {
    os << "cudaStreamIsCapturing failed with " << api.Describe(err);
  } else if (status == CudaGraphApi::kCaptureStatusInvalidated) {
    os << "it invalidated the capture ("
       << api.Describe(CudaGraphApi::kErrorStreamCaptureInvalidated) << ")";
  } else {
    os << "its stream is no longer capturing (did it end or switch the capture?)";
  }
  TVM_FFI_THROW(RuntimeError) << os.str();
}

void CudaGraphRunner::Launch() {
  if (exec_ == nullptr) TVM_FFI_THROW(RuntimeError) << "no CUDA graph has been captured";
  const CudaGraphApi& api = CudaGraphApi::Get();
  api.Check(api.graph_launch(exec_, stream_), "cudaGraphLaunch");
  ++launches_;
}

void CudaGraphRunner::Reset() {
  if (exec_ != nullptr) {
    void* exec = exec_;
    exec_ = nullptr;
    num_nodes_ = 0;
    const CudaGraphApi& api = CudaGraphApi::Get();
    api.Check(api.graph_exec_destroy(exec), "cudaGraphExecDestroy");
  }
  num_nodes_ = 0;
}

CudaGraphRunner::~CudaGraphRunner() {
  try {
    Reset();
  } catch (const ffi::Error& e) {
    WarnCuda("destroying a CUDA graph: " + e.message());
  } catch (const std::exception& e) {
    WarnCuda(std::string("destroying a CUDA graph: ") + e.what());
  } catch (...) {
    WarnCuda("destroying a CUDA graph: unknown error");
  }
}

TVM_FFI_STATIC_INIT_BLOCK() {
  namespace refl = tvm::ffi::reflection;
  refl::GlobalDef()
      .def("ios_tvm.runtime.cuda_graph_symbols",
           []() {
             ffi::Array<ffi::String> out;
             for (const char* name : CudaGraphApi::SymbolNames()) out.push_back(name);
             return out;
           })
      // Resolves the entry points now (needs only libcudart, no GPU) and returns the path of
      // the libcudart they come from; for tests.
      .def("ios_tvm.runtime.cuda_graph_load_api", []() {
        Dl_info info{};
        const CudaGraphApi& api = CudaGraphApi::Get();
        if (dladdr(reinterpret_cast<void*>(api.graph_launch), &info) == 0 || !info.dli_fname) {
          return ffi::String("?");
        }
        return ffi::String(info.dli_fname);
      });
}

}  // namespace ios_tvm
