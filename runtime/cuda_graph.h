/*!
 * \file cuda_graph.h
 * \brief Capturing a whole multi-stream plan into one CUDA graph and replaying it.
 *
 * The executor's CUDA path issues a plan on stream 0 and on side streams that fork from and
 * join stream 0 through events. Stream capture records exactly that: capture begins on
 * stream 0, a side stream that waits on an event recorded on a capturing stream joins the
 * capture, and its work becomes graph nodes whose edges are the fork/join events. One
 * cudaGraphLaunch then replays every kernel of every stream with its dependencies.
 *
 * Like the executor's other CUDA calls, the entry points are resolved at run time with
 * dlopen/dlsym (no CUDA headers or libraries at build time; the library loads on CPU-only
 * machines). The function pointer types below spell the CUDA 12/13 signatures of
 * cuda_runtime_api.h with plain C types (handles as void*, enums and cudaError_t as int);
 * tests/cuda_abi_check.cc checks them against the real headers at compile time.
 *
 * This header includes no TVM header, so that check compiles with the CUDA headers alone.
 */
#ifndef IOS_TVM_RUNTIME_CUDA_GRAPH_H_
#define IOS_TVM_RUNTIME_CUDA_GRAPH_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace ios_tvm {

/*! \brief The CUDA runtime entry points for stream capture and graphs (see the file comment). */
struct CudaGraphApi {
  /*! \brief cudaStreamCaptureMode values (driver_types.h). */
  static constexpr int kCaptureModeGlobal = 0;
  static constexpr int kCaptureModeThreadLocal = 1;
  static constexpr int kCaptureModeRelaxed = 2;
  /*! \brief cudaStreamCaptureStatus values (driver_types.h). */
  static constexpr int kCaptureStatusNone = 0;
  static constexpr int kCaptureStatusActive = 1;
  static constexpr int kCaptureStatusInvalidated = 2;
  /*! \brief cudaError_t values the runner names in its messages (driver_types.h). */
  static constexpr int kErrorStreamCaptureUnsupported = 900;
  static constexpr int kErrorStreamCaptureInvalidated = 901;
  static constexpr int kErrorStreamCaptureUnjoined = 904;

  /*! \brief cudaStreamBeginCapture(cudaStream_t, cudaStreamCaptureMode). */
  using StreamBeginCapture = int (*)(void* stream, int mode);
  /*! \brief cudaStreamEndCapture(cudaStream_t, cudaGraph_t*). */
  using StreamEndCapture = int (*)(void* stream, void** graph);
  /*! \brief cudaStreamIsCapturing(cudaStream_t, cudaStreamCaptureStatus*). */
  using StreamIsCapturing = int (*)(void* stream, int* status);
  /*! \brief cudaGraphInstantiateWithFlags(cudaGraphExec_t*, cudaGraph_t, unsigned long long);
   * the same signature since CUDA 11.4, unlike cudaGraphInstantiate (5 arguments before 12). */
  using GraphInstantiateWithFlags = int (*)(void** exec, void* graph, unsigned long long flags);
  /*! \brief cudaGraphGetNodes(cudaGraph_t, cudaGraphNode_t*, size_t*). */
  using GraphGetNodes = int (*)(void* graph, void** nodes, size_t* num_nodes);
  /*! \brief cudaGraphLaunch(cudaGraphExec_t, cudaStream_t). */
  using GraphLaunch = int (*)(void* exec, void* stream);
  /*! \brief cudaGraphExecDestroy(cudaGraphExec_t). */
  using GraphExecDestroy = int (*)(void* exec);
  /*! \brief cudaGraphDestroy(cudaGraph_t). */
  using GraphDestroy = int (*)(void* graph);
  /*! \brief cudaGetLastError(void): returns and clears the calling thread's last error. */
  using GetLastError = int (*)();
  /*! \brief cudaGetErrorName(cudaError_t) and cudaGetErrorString(cudaError_t). */
  using GetErrorText = const char* (*)(int);

  StreamBeginCapture stream_begin_capture = nullptr;
  StreamEndCapture stream_end_capture = nullptr;
  StreamIsCapturing stream_is_capturing = nullptr;
  GraphInstantiateWithFlags graph_instantiate = nullptr;
  GraphGetNodes graph_get_nodes = nullptr;
  GraphLaunch graph_launch = nullptr;
  GraphExecDestroy graph_exec_destroy = nullptr;
  GraphDestroy graph_destroy = nullptr;
  GetLastError get_last_error = nullptr;
  GetErrorText get_error_name = nullptr;
  GetErrorText get_error_string = nullptr;

  /*! \brief The entry points, loaded once; throws RuntimeError without a CUDA runtime. */
  static const CudaGraphApi& Get();
  /*! \brief The libcudart symbols Get() resolves, in order (for tests). */
  static const std::vector<const char*>& SymbolNames();
  /*! \brief "cudaErrorX (code): description". */
  std::string Describe(int err) const;
  /*! \brief Throws RuntimeError naming `what` when `err` is not cudaSuccess. */
  void Check(int err, const char* what) const;
};

/*!
 * \brief Owns one captured and instantiated CUDA graph of work issued on an origin stream.
 *
 * Capture uses cudaStreamCaptureModeThreadLocal: while it is active, a call from the
 * capturing thread that cannot be captured (a synchronisation, cudaMalloc/cudaFree, a
 * synchronous copy, use of the legacy default stream) fails and invalidates the capture, so
 * an uncapturable kernel is reported rather than silently left out of the graph; other
 * threads of the process (another executor, a framework) are not restricted, as they would
 * be by the global mode. The relaxed mode would let such calls through and bake whatever
 * they leave behind into the graph.
 */
class CudaGraphRunner {
 public:
  /*! \brief A runner that captures work issued on `stream` (a cudaStream_t; not the legacy
   * default stream, which cannot be captured). Makes no CUDA call. */
  explicit CudaGraphRunner(void* stream) : stream_(stream) {}
  /*! \brief Destroys the graph; never throws (a CUDA error is logged, see WarnCuda). */
  ~CudaGraphRunner();
  CudaGraphRunner(const CudaGraphRunner&) = delete;
  CudaGraphRunner& operator=(const CudaGraphRunner&) = delete;

  /*!
   * \brief Captures the work `issue` enqueues and instantiates the graph.
   *
   * `issue` enqueues work on the origin stream and on streams forked from it through events;
   * every fork must be joined back into the origin stream before it returns. It may call
   * CheckCapture after each unit of work to locate a failure. Nothing runs on the device.
   * On any failure (an exception from `issue`, an invalidated capture, an unjoined stream, a
   * failed instantiation) the capture is ended, nothing stays captured, the thread's CUDA
   * error state is cleared and a RuntimeError says what failed: `where` names the work being
   * issued at the time. `abort` (may be empty) runs first when `issue` throws, to join the
   * forked streams back; its errors are ignored.
   */
  void Capture(const std::function<void()>& issue, const std::function<std::string()>& where,
               const std::function<void()>& abort);
  /*!
   * \brief Throws RuntimeError when the capture `stream` belongs to is no longer active, or
   * the calling thread's last CUDA runtime call failed (say, a call that cannot be captured,
   * made by a kernel that ignored its error). For `issue` to call after each unit of work,
   * so that `where` names the culprit.
   */
  void CheckCapture(void* stream) const;
  /*! \brief Enqueues one replay of the graph on the origin stream (asynchronous). */
  void Launch();
  /*! \brief Drops the graph (a later Capture captures anew). */
  void Reset();

  /*! \brief Whether a graph is captured and instantiated. */
  bool captured() const { return exec_ != nullptr; }
  /*! \brief Whether Capture is running. */
  bool capturing() const { return capturing_; }
  /*! \brief Nodes of the captured graph (kernels, copies, ...). */
  int64_t num_nodes() const { return num_nodes_; }
  /*! \brief Successful captures so far. */
  int64_t captures() const { return captures_; }
  /*! \brief Graph launches so far. */
  int64_t launches() const { return launches_; }

 private:
  void* stream_;
  void* exec_ = nullptr;
  bool capturing_ = false;
  int64_t num_nodes_ = 0;
  int64_t captures_ = 0;
  int64_t launches_ = 0;
};

}  // namespace ios_tvm

#endif  // IOS_TVM_RUNTIME_CUDA_GRAPH_H_
