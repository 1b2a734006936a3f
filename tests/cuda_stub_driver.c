/*
 * A stand-in for the NVIDIA driver library (libcuda.so.1) on a machine without a GPU, for
 * tests/test_cuda_rehearsal.py: built there with `cc -shared -fPIC`, it lets TVM's CUDA runtime
 * (libtvm_runtime_cuda.so, which links libcuda.so.1) and pip's libcudart.so.13 load, and makes
 * every driver call report CUDA_ERROR_NO_DEVICE, as a driver on a machine without a GPU does.
 *
 * libcudart finds the driver's entry points through cuGetProcAddress; libtvm_runtime_cuda
 * links a few directly (exported below). Entry points that are only linked, never called
 * before a device exists, take no parameters here: the symbols must exist to load.
 */
#include <string.h>

typedef int CUresult;
enum { CUDA_SUCCESS = 0, CUDA_ERROR_NO_DEVICE = 100 };

static CUresult no_device(void) { return CUDA_ERROR_NO_DEVICE; }

CUresult cuInit(unsigned int flags) {
  (void)flags;
  return CUDA_ERROR_NO_DEVICE;
}

CUresult cuDriverGetVersion(int* version) {
  if (version) *version = 13000; /* CUDA 13.0, what libcudart.so.13 needs */
  return CUDA_SUCCESS;
}

CUresult cuDeviceGetCount(int* count) {
  if (count) *count = 0;
  return CUDA_ERROR_NO_DEVICE;
}

CUresult cuGetErrorName(CUresult error, const char** name) {
  if (name) *name = error == CUDA_ERROR_NO_DEVICE ? "CUDA_ERROR_NO_DEVICE" : "CUDA_ERROR_UNKNOWN";
  return CUDA_SUCCESS;
}

CUresult cuGetErrorString(CUresult error, const char** text) {
  if (text) {
    *text = error == CUDA_ERROR_NO_DEVICE ? "no CUDA-capable device is detected" : "unknown error";
  }
  return CUDA_SUCCESS;
}

CUresult cuGetProcAddress_v2(const char* symbol, void** pfn, int version,
                             unsigned long long flags, int* status) {
  (void)version;
  (void)flags;
  if (status) *status = 0; /* CU_GET_PROC_ADDRESS_SUCCESS */
  if (!pfn) return CUDA_SUCCESS;
  if (!strcmp(symbol, "cuInit")) {
    *pfn = (void*)cuInit;
  } else if (!strcmp(symbol, "cuDriverGetVersion")) {
    *pfn = (void*)cuDriverGetVersion;
  } else if (!strcmp(symbol, "cuDeviceGetCount")) {
    *pfn = (void*)cuDeviceGetCount;
  } else if (!strcmp(symbol, "cuGetErrorName")) {
    *pfn = (void*)cuGetErrorName;
  } else if (!strcmp(symbol, "cuGetErrorString")) {
    *pfn = (void*)cuGetErrorString;
  } else if (!strcmp(symbol, "cuGetProcAddress")) {
    *pfn = (void*)cuGetProcAddress_v2;
  } else {
    *pfn = (void*)no_device;
  }
  return CUDA_SUCCESS;
}

CUresult cuGetProcAddress(const char* symbol, void** pfn, int version,
                          unsigned long long flags) {
  return cuGetProcAddress_v2(symbol, pfn, version, flags, 0);
}

/* Linked by libtvm_runtime_cuda.so; called only with a device. */
CUresult cuDeviceGetName(void) { return CUDA_ERROR_NO_DEVICE; }
CUresult cuFuncSetAttribute(void) { return CUDA_ERROR_NO_DEVICE; }
CUresult cuLaunchKernelEx(void) { return CUDA_ERROR_NO_DEVICE; }
CUresult cuModuleGetFunction(void) { return CUDA_ERROR_NO_DEVICE; }
CUresult cuModuleLoadData(void) { return CUDA_ERROR_NO_DEVICE; }
CUresult cuModuleUnload(void) { return CUDA_ERROR_NO_DEVICE; }
CUresult cuTensorMapEncodeTiled(void) { return CUDA_ERROR_NO_DEVICE; }
