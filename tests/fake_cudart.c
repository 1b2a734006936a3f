/* A fake CUDA runtime (libcudart) and driver (libcuda) for tests on machines without a GPU.
 *
 * Built by tests/test_cuda_graph.py with cc, twice from this file:
 *   -DFAKE_DRIVER        -> libcuda.so.1 stub: every driver entry point TVM's CUDA runtime
 *                           links returns CUDA_ERROR_NO_DEVICE (100);
 *   (default)            -> libcudart stub with one "device" whose memory is host memory:
 *                           cudaMalloc is malloc, copies are memcpy, streams and events are
 *                           counted fake handles. With a version script naming libcudart.so.13
 *                           it satisfies TVM's libtvm_runtime_cuda.so, so TVM's CUDA DeviceAPI
 *                           and ios-tvm's CUDA executor can be built and torn down on a CPU.
 *
 * FAKE_CUDART_DESTROY_ERROR=<code> makes cudaStreamDestroy and cudaEventDestroy fail with that
 * code (700 = cudaErrorIllegalAddress: what every call returns after a sticky error), so that
 * tests can check that nothing throws out of a destructor; FAKE_CUDART_EVENT_LIMIT=<n> makes
 * event creation fail once n events exist. fake_cudart_counts() reports the
 * streams and events created and destroyed. Nothing here runs a kernel. */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#ifdef FAKE_DRIVER
#define NO_DEVICE(name) \
  int name() { return 100; }
NO_DEVICE(cuInit)
NO_DEVICE(cuDeviceGetName)
NO_DEVICE(cuFuncSetAttribute)
NO_DEVICE(cuGetErrorName)
NO_DEVICE(cuGetErrorString)
NO_DEVICE(cuLaunchKernelEx)
NO_DEVICE(cuModuleGetFunction)
NO_DEVICE(cuModuleLoadData)
NO_DEVICE(cuModuleUnload)
NO_DEVICE(cuTensorMapEncodeTiled)
#else

static long counts[4]; /* streams created, streams destroyed, events created, events destroyed */
static char handles[4096];
static long next_handle = 1;

void fake_cudart_counts(long* out) { memcpy(out, counts, sizeof(counts)); }

static int destroy_error(void) {
  const char* v = getenv("FAKE_CUDART_DESTROY_ERROR");
  return v ? atoi(v) : 0;
}

static void* new_handle(void) { return &handles[(next_handle++) % sizeof(handles)]; }

int cudaGetDeviceCount(int* n) { *n = 1; return 0; }
int cudaSetDevice(int d) { return d == 0 ? 0 : 101; }
int cudaGetDevice(int* d) { *d = 0; return 0; }
int cudaDeviceGetAttribute(int* v, int attr, int dev) { *v = 1; return 0; }
int cudaMalloc(void** p, size_t n) { *p = aligned_alloc(256, (n + 255) / 256 * 256); return *p ? 0 : 2; }
int cudaFree(void* p) { free(p); return 0; }
int cudaMallocHost(void** p, size_t n) { return cudaMalloc(p, n); }
int cudaFreeHost(void* p) { free(p); return 0; }
int cudaMemcpy(void* d, const void* s, size_t n, int kind) { memcpy(d, s, n); return 0; }
int cudaMemcpyAsync(void* d, const void* s, size_t n, int kind, void* st) { memcpy(d, s, n); return 0; }
int cudaMemcpyPeerAsync(void* d, int dd, const void* s, int sd, size_t n, void* st) {
  memcpy(d, s, n);
  return 0;
}
int cudaMemGetInfo(size_t* free_b, size_t* total) { *free_b = *total = (size_t)1 << 34; return 0; }
int cudaStreamCreate(void** s) { *s = new_handle(); ++counts[0]; return 0; }
int cudaStreamCreateWithFlags(void** s, unsigned f) { return cudaStreamCreate(s); }
int cudaStreamDestroy(void* s) { ++counts[1]; return destroy_error(); }
int cudaEventCreate(void** e) {
  const char* limit = getenv("FAKE_CUDART_EVENT_LIMIT");
  if (limit && counts[2] >= atol(limit)) return 2; /* cudaErrorMemoryAllocation */
  *e = new_handle();
  ++counts[2];
  return 0;
}
int cudaEventCreateWithFlags(void** e, unsigned f) { return cudaEventCreate(e); }
int cudaEventDestroy(void* e) { ++counts[3]; return destroy_error(); }
const char* cudaGetErrorString(int e) { return e ? "fake CUDA error" : "no error"; }
const char* cudaGetErrorName(int e) { return e ? "cudaErrorFake" : "cudaSuccess"; }

#define OK(name) \
  int name() { return 0; }
OK(cudaEventRecord)
OK(cudaEventSynchronize)
OK(cudaEventElapsedTime)
OK(cudaStreamWaitEvent)
OK(cudaStreamSynchronize)
OK(cudaDeviceSynchronize)
OK(cudaGetLastError)
OK(cudaPeekAtLastError)
OK(cudaStreamIsCapturing)
#define NOT_HERE(name) \
  int name() { return 100; }
NOT_HERE(cudaGetDeviceProperties)
NOT_HERE(cudaStreamBeginCapture)
NOT_HERE(cudaStreamEndCapture)
NOT_HERE(cudaGraphInstantiate)
NOT_HERE(cudaGraphInstantiateWithFlags)
NOT_HERE(cudaGraphGetNodes)
NOT_HERE(cudaGraphLaunch)
NOT_HERE(cudaGraphExecDestroy)
NOT_HERE(cudaGraphDestroy)
#endif
