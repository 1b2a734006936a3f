/*!
 * \file cuda_runtime.h
 * \brief The process's CUDA runtime library (libcudart), found once for the whole runtime.
 *
 * The executor (executor.cc) and the CUDA graph runner (cuda_graph.cc) call a few CUDA
 * runtime entry points on streams and events that TVM's CUDA runtime created. Those calls
 * must go to the same libcudart as TVM's: a second copy of the CUDA runtime in the process
 * has its own context state, and handles of one passed to the other fail or corrupt it. So
 * the library is looked up in this order, once:
 *
 *  1. a libcudart already loaded in the process, under any soname (the loaded objects are
 *     scanned with dl_iterate_phdr, then every candidate soname is tried with RTLD_NOLOAD);
 *  2. only if none is loaded: the first candidate soname dlopen finds (libcudart.so.13,
 *     libcudart.so.12, libcudart.so).
 *
 * Trying "already loaded, else open" one soname at a time (the earlier code) would open
 * libcudart.so.13 while a libcudart.so.12 was in use. Nothing here needs CUDA headers or
 * libraries at build time, so the native library loads on machines without CUDA.
 */
#ifndef IOS_TVM_RUNTIME_CUDA_RUNTIME_H_
#define IOS_TVM_RUNTIME_CUDA_RUNTIME_H_

#include <string>
#include <vector>

namespace ios_tvm {

/*! \brief The process's libcudart (see the file comment). */
class CudaRuntime {
 public:
  /*! \brief The library, found on first use; throws RuntimeError when there is none (the
   * lookup is retried on the next call). Thread-safe. */
  static const CudaRuntime& Get();

  /*! \brief The address of `name` in the library; throws RuntimeError naming the library's
   * file and `name` when it lacks it (`need`, if given, says what needs it). */
  void* Symbol(const char* name, const char* need = nullptr) const;

  /*! \brief The file the library was loaded from. */
  const std::string& path() const { return path_; }
  /*! \brief Whether it was already loaded when first looked up (else this runtime opened it). */
  bool was_loaded() const { return was_loaded_; }

  /*! \brief The sonames tried, in order. */
  static const std::vector<const char*>& Candidates();

 private:
  CudaRuntime() = default;
  void* handle_ = nullptr;
  std::string path_;
  bool was_loaded_ = false;
};

/*! \brief Reports a CUDA error that cannot be thrown (in a destructor, while releasing
 * streams, events or graphs): one line on stderr, "ios-tvm: warning: <what>". Never throws. */
void WarnCuda(const std::string& what) noexcept;

}  // namespace ios_tvm

#endif  // IOS_TVM_RUNTIME_CUDA_RUNTIME_H_
