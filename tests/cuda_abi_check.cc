/*!
 * \file cuda_abi_check.cc
 * \brief Compile-time check of runtime/cuda_graph.h against the real CUDA runtime headers.
 *
 * The executor resolves its CUDA graph entry points with dlsym and calls them through function
 * pointer types spelled with plain C types. This file maps each real declaration of
 * cuda_runtime_api.h to those types (opaque handles to void*, enums and cudaError_t to int)
 * and static_asserts they match, and checks the enum values the runner uses. It is compiled
 * (-fsyntax-only) by tests/test_cuda_graph.py whenever CUDA headers are found; it is not part
 * of the library.
 */
#include <cuda_runtime_api.h>

#include <type_traits>

#include "runtime/cuda_graph.h"

namespace {

/*! \brief The plain C type a CUDA parameter or result type is passed as. */
template <typename T>
struct Abi {
  using type = std::conditional_t<std::is_enum_v<T>, int, T>;
};
template <typename T>
struct Abi<T*> {
  // cudaStream_t, cudaGraph_t, ... are pointers to opaque structs: void*.
  using type = std::conditional_t<std::is_class_v<T>, void*, typename Abi<T>::type*>;
};
template <typename T>
struct Abi<const T> {
  using type = const typename Abi<T>::type;
};

template <typename F>
struct AbiFn;
template <typename R, typename... A>
struct AbiFn<R (*)(A...)> {
  using type = typename Abi<R>::type (*)(typename Abi<A>::type...);
};

template <typename Real, typename Ours>
constexpr bool kSame = std::is_same_v<typename AbiFn<Real>::type, Ours>;

using Api = ios_tvm::CudaGraphApi;
static_assert(kSame<decltype(&cudaStreamBeginCapture), Api::StreamBeginCapture>);
static_assert(kSame<decltype(&cudaStreamEndCapture), Api::StreamEndCapture>);
static_assert(kSame<decltype(&cudaStreamIsCapturing), Api::StreamIsCapturing>);
static_assert(kSame<decltype(&cudaGraphInstantiateWithFlags), Api::GraphInstantiateWithFlags>);
static_assert(kSame<decltype(&cudaGraphGetNodes), Api::GraphGetNodes>);
static_assert(kSame<decltype(&cudaGraphLaunch), Api::GraphLaunch>);
static_assert(kSame<decltype(&cudaGraphExecDestroy), Api::GraphExecDestroy>);
static_assert(kSame<decltype(&cudaGraphDestroy), Api::GraphDestroy>);
static_assert(kSame<decltype(&cudaGetLastError), Api::GetLastError>);
static_assert(kSame<decltype(&cudaGetErrorName), Api::GetErrorText>);
static_assert(kSame<decltype(&cudaGetErrorString), Api::GetErrorText>);

// Enums travel as int: same size, same values.
static_assert(sizeof(cudaStreamCaptureMode) == sizeof(int));
static_assert(sizeof(cudaStreamCaptureStatus) == sizeof(int));
static_assert(sizeof(cudaError_t) == sizeof(int));
static_assert(Api::kCaptureModeGlobal == cudaStreamCaptureModeGlobal);
static_assert(Api::kCaptureModeThreadLocal == cudaStreamCaptureModeThreadLocal);
static_assert(Api::kCaptureModeRelaxed == cudaStreamCaptureModeRelaxed);
static_assert(Api::kCaptureStatusNone == cudaStreamCaptureStatusNone);
static_assert(Api::kCaptureStatusActive == cudaStreamCaptureStatusActive);
static_assert(Api::kCaptureStatusInvalidated == cudaStreamCaptureStatusInvalidated);
static_assert(Api::kErrorStreamCaptureUnsupported == cudaErrorStreamCaptureUnsupported);
static_assert(Api::kErrorStreamCaptureInvalidated == cudaErrorStreamCaptureInvalidated);
static_assert(Api::kErrorStreamCaptureUnjoined == cudaErrorStreamCaptureUnjoined);

}  // namespace
