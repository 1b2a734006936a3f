/*!
 * \file cuda_binary_module.cc
 * \brief A device module that holds compiled CUDA kernels (cubin) for export only.
 *
 * TVM 0.27 builds CUDA kernels as CUDA source and compiles them with NVRTC when the exported
 * library is loaded, which needs NVRTC, cuda-bindings and the TVM compiler on the GPU machine.
 * ios-tvm compiles them at build time instead (ios_tvm/compiler/cuda_binary.py) and replaces
 * each CUDA source module by the same module with the binary. On a machine whose TVM has its
 * CUDA runtime, TVM's own loader creates that module; on a machine without one (a CPU build
 * host, where TVM keeps a source-only fallback module) this module stands in: it is of kind
 * "cuda" and serialises to the bytes given, so `export_library` embeds them and TVM's CUDA
 * loader reads them on the GPU machine as it reads its own modules. It runs nothing.
 */
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/reflection/registry.h>
#include <tvm/ffi/string.h>

#include <string>
#include <utility>

namespace ios_tvm {
namespace ffi = tvm::ffi;

namespace {

class SerializedDeviceModuleObj : public ffi::ModuleObj {
 public:
  SerializedDeviceModuleObj(std::string kind, ffi::Bytes payload, std::string fmt,
                            std::string source)
      : kind_(std::move(kind)),
        payload_(std::move(payload)),
        fmt_(std::move(fmt)),
        source_(std::move(source)) {}

  const char* kind() const final { return kind_.c_str(); }

  // Serialisable but not runnable: export_library embeds it, calling it is an error.
  int GetPropertyMask() const final { return ffi::Module::kBinarySerializable; }

  ffi::Optional<ffi::Function> GetFunction(const ffi::String& name) final {
    return std::nullopt;
  }

  ffi::Bytes SaveToBytes() const final { return payload_; }

  // For inspection only (not serialised): the binary's format ("cubin") under "format", and
  // the source it was compiled from under its kind ("cuda"), as TVM's CUDA module keeps it.
  ffi::String InspectSource(const ffi::String& format) const final {
    if (format == "format") return ffi::String(fmt_);
    if (format == kind_) return ffi::String(source_);
    return ffi::String();
  }

 private:
  std::string kind_;
  ffi::Bytes payload_;
  std::string fmt_;
  std::string source_;
};

}  // namespace

TVM_FFI_STATIC_INIT_BLOCK() {
  namespace refl = tvm::ffi::reflection;
  refl::GlobalDef().def(
      "ios_tvm.cuda.serialized_module",
      [](const ffi::String& kind, const ffi::Bytes& payload, const ffi::String& fmt,
         const ffi::String& source) {
        if (kind.size() == 0) TVM_FFI_THROW(ValueError) << "a module kind is required";
        return ffi::Module(ffi::make_object<SerializedDeviceModuleObj>(
            std::string(kind), payload, std::string(fmt), std::string(source)));
      });
}

}  // namespace ios_tvm
