/*!
 * \file executor.cc
 * \brief The ios-tvm stage executor: runs a plan's stages of concurrent groups of TVM kernels.
 *
 * The plan (JSON, see ios_tvm/plan.py) lists tensors, activation storages, kernel calls and
 * stages. On CPU each group of a stage runs on its own thread (the caller runs group 0, a
 * fixed pool of workers the others) and the caller waits for the stage. On CUDA each group
 * slot owns a stream; a stage forks from stream 0 through an event, each group's kernels are
 * launched with the thread's current stream set to the group's stream, and stream 0 joins the
 * others through events: no host synchronisation inside a run. Streams and events are
 * created once, when the executor is built. In CUDA graph mode (set_cuda_graph) the first run
 * captures exactly that sequence into one CUDA graph, later runs replay it with one launch
 * (runtime/cuda_graph.h).
 *
 * The executor trusts nothing in the plan it is handed (create_executor may be called
 * directly): every field is type- and range-checked, sizes and stream counts are capped
 * (kMaxBytes, kMaxStreams, and the machine's memory), views must fit their bases, and a
 * call's kernel must be a function of the kernel library (not tvm-ffi's data) or a global
 * function the application allowed (PackedAllowlist). So no plan makes it read or write outside its buffers, hang or
 * crash. The plan's dataflow (every read after its write, no storage shared by tensors live
 * at once) is checked by ios_tvm.plan.Plan.validate before the Python side creates an
 * executor; a plan that breaks it computes wrong values, nothing worse.
 *
 * One executor runs one call at a time: set_input, get_output, run, profile_stage and the
 * CUDA graph functions hold its mutex, so calls from several threads are serialised. A run
 * is refused until every input has been set.
 *
 * The executor is a tvm-ffi Module with the functions set_input, get_output, run,
 * profile_stage, profile_stage_cold, profile_run, profile_stages, num_inputs, num_outputs,
 * num_streams, missing_inputs, set_cuda_graph and cuda_graph_stats.
 */
#include <sched.h>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#endif
#include <tvm/ffi/cast.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/container/shape.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/extra/c_env_api.h>
#include <tvm/ffi/extra/json.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/reflection/registry.h>
#include <tvm/runtime/device_api.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "runtime/cuda_graph.h"
#include "runtime/cuda_runtime.h"

namespace ios_tvm {
namespace ffi = tvm::ffi;
using tvm::runtime::DeviceAPI;
using ffi::Tensor;

/*! \brief Plan versions this executor runs (2 adds view byte offsets). */
constexpr int kMinPlanVersion = 1;
constexpr int kPlanVersion = 2;
/*! \brief Alignment TVM kernels assume for tensor arguments (kAllocAlignment). */
constexpr int64_t kViewAlignment = 64;
/*! \brief Limits, the same as ios_tvm/plan.py's MAX_STREAMS, MAX_NBYTES, MAX_NDIM and
 * MAX_JSON_DEPTH: most streams (threads), bytes of one tensor or of all storages, dimensions,
 * and nesting of the plan's JSON (ffi::json::Parse recurses). */
constexpr int64_t kMaxStreams = 64;
constexpr int64_t kMaxBytes = int64_t(1) << 40;
constexpr size_t kMaxNdim = 32;
constexpr int kMaxJsonDepth = 64;

/*! \brief Allocates a tensor's bytes through TVM's DeviceAPI (the wheel ships no Tensor::Empty
 * header we could use). */
struct DeviceAlloc {
  void AllocData(DLTensor* t) {
    size_t nbytes = (t->dtype.bits * t->dtype.lanes + 7) / 8;
    for (int i = 0; i < t->ndim; ++i) nbytes *= static_cast<size_t>(t->shape[i]);
    t->data = DeviceAPI::Get(t->device)->AllocDataSpace(t->device, std::max<size_t>(nbytes, 1),
                                                         256, t->dtype);
  }
  /*! \brief Called from the tensor's deleter, where an exception terminates the process (TVM's
   * CUDA FreeDataSpace throws after a sticky CUDA error): logs instead. */
  void FreeData(DLTensor* t) noexcept {
    try {
      DeviceAPI::Get(t->device)->FreeDataSpace(t->device, t->data);
    } catch (const ffi::Error& e) {
      WarnCuda("freeing a tensor: " + e.message());
    } catch (const std::exception& e) {
      WarnCuda(std::string("freeing a tensor: ") + e.what());
    }
  }
};

/*! \brief A view of another tensor's bytes starting `offset` bytes into them (any shape that
 * fits); keeps the base alive. The offset is folded into the data pointer (TVM kernels require
 * byte_offset 0); pointer arithmetic is valid for CPU and CUDA device pointers. */
struct ViewAlloc {
  Tensor base;
  int64_t offset = 0;
  void AllocData(DLTensor* t) {
    if (offset == 0) {
      t->data = base.data_ptr();
      t->byte_offset = base.byte_offset();
    } else {
      t->data = static_cast<char*>(base.data_ptr()) + base.byte_offset() + offset;
      t->byte_offset = 0;
    }
  }
  void FreeData(DLTensor*) {}
};

size_t NumBytes(const DLTensor* t) {
  size_t nbytes = (t->dtype.bits * t->dtype.lanes + 7) / 8;
  for (int i = 0; i < t->ndim; ++i) nbytes *= static_cast<size_t>(t->shape[i]);
  return nbytes;
}

Tensor Empty(const ffi::Shape& shape, DLDataType dtype, DLDevice dev) {
  return Tensor::FromNDAlloc(DeviceAlloc(), shape, dtype, dev);
}

/*! \brief A view of `base` with another shape and dtype, `offset` bytes in; checks it fits. */
Tensor View(const Tensor& base, const ffi::Shape& shape, DLDataType dtype, const std::string& name,
            int64_t offset = 0) {
  if (offset < 0 || offset % kViewAlignment != 0) {
    TVM_FFI_THROW(ValueError) << "view '" << name << "' has offset " << offset
                              << ", not a non-negative multiple of " << kViewAlignment << " bytes";
  }
  Tensor view = Tensor::FromNDAlloc(ViewAlloc{base, offset}, shape, dtype, base.device());
  if (NumBytes(view.GetDLTensorPtr()) + static_cast<size_t>(offset) >
      NumBytes(base.GetDLTensorPtr())) {
    TVM_FFI_THROW(ValueError) << "tensor '" << name << "' (" << NumBytes(view.GetDLTensorPtr())
                              << " bytes at offset " << offset << ") does not fit its storage ("
                              << NumBytes(base.GetDLTensorPtr()) << " bytes)";
  }
  return view;
}

/*! \brief Copy `from` into `to` (any devices) and wait for the copy. */
void CopyInto(const Tensor& from, const Tensor& to) {
  DLDevice dev = to.device().device_type != kDLCPU ? to.device() : from.device();
  DeviceAPI* api = DeviceAPI::Get(dev);
  api->CopyDataFromTo(const_cast<DLTensor*>(from.GetDLTensorPtr()),
                      const_cast<DLTensor*>(to.GetDLTensorPtr()), nullptr);
  api->StreamSync(dev, nullptr);
}

/*! \brief The few CUDA runtime entry points the executor needs, resolved at run time (from
 * the process's libcudart, the one TVM's CUDA runtime uses: runtime/cuda_runtime.h) so that
 * the library builds and loads without CUDA. */
struct CudaApi {
  using EventCreate = int (*)(void**, unsigned);
  using EventRecord = int (*)(void*, void*);
  using StreamWaitEvent = int (*)(void*, void*, unsigned);
  using EventDestroy = int (*)(void*);
  using EventSynchronize = int (*)(void*);
  using EventElapsedTime = int (*)(float*, void*, void*);
  using StreamSynchronize = int (*)(void*);
  using GetErrorString = const char* (*)(int);
  EventCreate event_create = nullptr;
  EventRecord event_record = nullptr;
  StreamWaitEvent stream_wait_event = nullptr;
  EventDestroy event_destroy = nullptr;
  EventSynchronize event_synchronize = nullptr;
  EventElapsedTime event_elapsed_time = nullptr;
  StreamSynchronize stream_synchronize = nullptr;
  GetErrorString get_error_string = nullptr;

  static const CudaApi& Get() {
    static CudaApi api = Load();
    return api;
  }

  /*! \brief The libcudart symbols Load() resolves, in the order of the members (for tests). */
  static const std::vector<const char*>& SymbolNames() {
    static const std::vector<const char*> names = {
        "cudaEventCreateWithFlags", "cudaEventRecord", "cudaStreamWaitEvent",
        "cudaEventDestroy", "cudaEventSynchronize", "cudaEventElapsedTime",
        "cudaStreamSynchronize", "cudaGetErrorString"};
    return names;
  }

  std::string Describe(int err) const {
    return std::string(get_error_string ? get_error_string(err) : "unknown") + " (" +
           std::to_string(err) + ")";
  }

  void Check(int err, const char* what) const {
    if (err != 0) TVM_FFI_THROW(RuntimeError) << "CUDA error in " << what << ": " << Describe(err);
  }

 private:
  static CudaApi Load() {
    const CudaRuntime& rt = CudaRuntime::Get();
    const std::vector<const char*>& names = SymbolNames();
    CudaApi api;
    size_t i = 0;
    api.event_create = reinterpret_cast<EventCreate>(rt.Symbol(names[i++]));
    api.event_record = reinterpret_cast<EventRecord>(rt.Symbol(names[i++]));
    api.stream_wait_event = reinterpret_cast<StreamWaitEvent>(rt.Symbol(names[i++]));
    api.event_destroy = reinterpret_cast<EventDestroy>(rt.Symbol(names[i++]));
    api.event_synchronize = reinterpret_cast<EventSynchronize>(rt.Symbol(names[i++]));
    api.event_elapsed_time = reinterpret_cast<EventElapsedTime>(rt.Symbol(names[i++]));
    api.stream_synchronize = reinterpret_cast<StreamSynchronize>(rt.Symbol(names[i++]));
    api.get_error_string = reinterpret_cast<GetErrorString>(rt.Symbol(names[i++]));
    return api;
  }
};

/*! \brief A fixed pool of worker threads; worker i runs the job posted to slot i. */
class WorkerPool {
 public:
  explicit WorkerPool(int num_workers) : slots_(num_workers) {
    for (int i = 0; i < num_workers; ++i) {
      threads_.emplace_back([this, i] { Loop(i); });
    }
  }
  ~WorkerPool() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  /*! \brief Run jobs[i] on worker i (for i < jobs.size()) while the caller runs `own`; wait for
   * all; rethrow the first error. */
  void Run(const std::vector<std::function<void()>>& jobs, const std::function<void()>& own) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (size_t i = 0; i < jobs.size(); ++i) slots_[i] = &jobs[i];
      pending_ = static_cast<int>(jobs.size());
      error_ = nullptr;
      ++generation_;
    }
    cv_.notify_all();
    std::exception_ptr own_error;
    try {
      own();
    } catch (...) {
      own_error = std::current_exception();
    }
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, [this] { return pending_ == 0; });
    if (own_error) std::rethrow_exception(own_error);
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void Loop(int index) {
    uint64_t seen = 0;
    while (true) {
      const std::function<void()>* job = nullptr;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stop_ || (generation_ != seen && slots_[index] != nullptr); });
        if (stop_) return;
        seen = generation_;
        job = slots_[index];
        slots_[index] = nullptr;
      }
      std::exception_ptr err;
      try {
        (*job)();
      } catch (...) {
        err = std::current_exception();
      }
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (err && !error_) error_ = err;
        if (--pending_ == 0) done_cv_.notify_one();
      }
    }
  }

  std::vector<const std::function<void()>*> slots_;
  std::vector<std::thread> threads_;
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  uint64_t generation_ = 0;
  int pending_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
};

/*! \brief How many threads of TVM's CPU thread pool the kernels of each group use.
 *
 * TVM gives every OS thread that launches a parallel kernel its own pool (thread_local), sized
 * when first used. Without care a stage of k concurrent groups runs k pools of all cores each
 * (oversubscribed), and the pools' default affinity pins their workers to the same cores. So
 * each executor thread configures its own pool before running a group: group g of a k-group
 * stage gets total/k threads (the remainder to the first groups), a one-group stage all of
 * them, through TVM's "runtime.config_threadpool" in "share all cores" mode over the CPUs this
 * process may use (no pinning). total is TVM_NUM_THREADS if set, else the number of those CPUs
 * (ios_tvm.executor sets TVM_NUM_THREADS to it by default, so that the caller's pool has that
 * many workers). IOS_TVM_THREAD_SHARE=0 turns this off (TVM's own behaviour). */
class KernelThreads {
 public:
  KernelThreads() {
    const char* share = std::getenv("IOS_TVM_THREAD_SHARE");
    if (share != nullptr && std::string(share) == "0") return;
    config_ = ffi::Function::GetGlobal("runtime.config_threadpool");
    if (!config_.has_value()) return;
    std::vector<ffi::String> cpus;
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
      for (int c = 0; c < CPU_SETSIZE; ++c) {
        if (CPU_ISSET(c, &set)) cpus.push_back(ffi::String(std::to_string(c)));
      }
    }
    if (cpus.empty()) {
      unsigned n = std::max(1u, std::thread::hardware_concurrency());
      for (unsigned c = 0; c < n; ++c) cpus.push_back(ffi::String(std::to_string(c)));
    }
    cpus_ = ffi::Array<ffi::String>(cpus.begin(), cpus.end());
    total_ = static_cast<int>(cpus.size());
    const char* env = std::getenv("TVM_NUM_THREADS");
    if (env != nullptr && std::atoi(env) > 0) total_ = std::atoi(env);
    enabled_ = true;
  }

  bool enabled() const { return enabled_; }
  int total() const { return total_; }

  /*! \brief Threads for group `group` of a stage with `groups` concurrent groups. */
  int Share(int group, int groups) const {
    if (groups <= 1) return total_;
    int share = total_ / groups + (group < total_ % groups ? 1 : 0);
    return std::max(share, 1);
  }

  /*! \brief Make the calling thread's kernels use `n` pool threads (a no-op when they do). */
  void Use(int n) const {
    thread_local int current = 0;
    if (!enabled_ || n == current) return;
    constexpr int kShareAllCores = -3;  // threading::ThreadGroup::kSpecifyThreadShareAllCore
    (*config_)(kShareAllCores, n, cpus_);
    current = n;
  }

 private:
  ffi::Optional<ffi::Function> config_;
  ffi::Array<ffi::String> cpus_;
  int total_ = 1;
  bool enabled_ = false;
};


/*! \brief Global functions plans may call as kernels besides their library's own functions:
 * the targets of a model's call_dps_packed (library dispatch), allowed by the application
 * through ios_tvm.runtime.allow_packed_function; none by default. An entry ending in '.' is a
 * prefix, any other an exact name. Without this a plan could call any registered global, e.g.
 * runtime.config_threadpool; and even library dispatch functions (tvm.contrib.sort.sort, ...)
 * read their arguments unchecked, so a plan calling one with the wrong arguments corrupts
 * memory. */
class PackedAllowlist {
 public:
  static PackedAllowlist& Global() {
    static PackedAllowlist list;
    return list;
  }

  void Add(const std::string& entry) {
    if (entry.find_first_not_of(". ") == std::string::npos) {
      TVM_FFI_THROW(ValueError) << "allow_packed_function needs a function name or a prefix "
                                   "ending in '.', got '" << entry << "'";
    }
    std::lock_guard<std::mutex> lock(mu_);
    entries_.push_back(entry);
  }

  bool Allowed(const std::string& name) const {
    std::lock_guard<std::mutex> lock(mu_);
    for (const std::string& e : entries_) {
      bool prefix = e.back() == '.';
      if (prefix ? name.size() > e.size() && name.compare(0, e.size(), e) == 0 : name == e) {
        return true;
      }
    }
    return false;
  }

 private:
  mutable std::mutex mu_;
  std::vector<std::string> entries_;
};

/*! \brief Throws unless `text` nests arrays and objects at most kMaxJsonDepth deep. */
void CheckJsonDepth(const std::string& text) {
  int depth = 0;
  bool in_string = false, escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > kMaxJsonDepth) {
        TVM_FFI_THROW(ValueError) << "plan is nested too deeply (more than " << kMaxJsonDepth
                                  << " levels)";
      }
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
}

/*! \brief Typed access to a JSON value of the plan; errors name `what` (e.g. "tensor 3"). */
int64_t AsInt(const ffi::Any& v, const std::string& what) {
  std::optional<int64_t> i = v.as<int64_t>();
  if (!i.has_value()) TVM_FFI_THROW(ValueError) << what << " must be an integer";
  return *i;
}

ffi::json::Array AsArray(const ffi::Any& v, const std::string& what) {
  std::optional<ffi::json::Array> a = v.as<ffi::json::Array>();
  if (!a.has_value()) TVM_FFI_THROW(ValueError) << what << " must be a list";
  return *a;
}

std::string AsString(const ffi::Any& v, const std::string& what) {
  std::optional<ffi::String> s = v.as<ffi::String>();
  if (!s.has_value()) TVM_FFI_THROW(ValueError) << what << " must be a string";
  return std::string(*s);
}

/*! \brief The fields of one JSON object of the plan. */
class Fields {
 public:
  Fields(const ffi::Any& value, std::string what) : what_(std::move(what)) {
    std::optional<ffi::json::Object> obj = value.as<ffi::json::Object>();
    if (!obj.has_value()) TVM_FFI_THROW(ValueError) << what_ << " must be an object";
    obj_ = *obj;
  }
  bool Has(const char* key) const { return obj_.count(ffi::String(key)) != 0; }
  ffi::Any Get(const char* key) const {
    if (!Has(key)) TVM_FFI_THROW(ValueError) << what_ << " lacks '" << key << "'";
    return obj_.at(ffi::String(key));
  }
  int64_t Int(const char* key) const { return AsInt(Get(key), Name(key)); }
  int64_t Int(const char* key, int64_t dflt) const { return Has(key) ? Int(key) : dflt; }
  std::string Str(const char* key) const { return AsString(Get(key), Name(key)); }
  std::string Str(const char* key, const std::string& dflt) const {
    return Has(key) ? Str(key) : dflt;
  }
  ffi::json::Array Arr(const char* key) const { return AsArray(Get(key), Name(key)); }
  std::vector<int64_t> Ints(const char* key) const {
    std::vector<int64_t> out;
    for (const ffi::Any& v : Arr(key)) out.push_back(AsInt(v, Name(key) + " entries"));
    return out;
  }

 private:
  std::string Name(const char* key) const { return what_ + ": '" + key + "'"; }
  std::string what_;
  ffi::json::Object obj_;
};

/*! \brief The dtypes a plan may use (ios_tvm/graph.py's table): no vectors, no sub-byte. */
DLDataType ParseDType(const std::string& s, const std::string& what) {
  static const std::set<std::string> known = {
      "float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2", "int64",
      "int32",   "int16",   "int8",    "uint8",    "uint16",        "uint32",      "uint64",
      "bool"};
  if (!known.count(s)) TVM_FFI_THROW(ValueError) << what << " has unknown dtype '" << s << "'";
  return ffi::StringToDLDataType(s);
}

/*! \brief Bytes of a tensor; throws when they exceed kMaxBytes (no overflow on the way). */
int64_t CheckedBytes(const std::vector<int64_t>& shape, DLDataType dtype,
                     const std::string& what) {
  if (shape.size() > kMaxNdim) {
    TVM_FFI_THROW(ValueError) << what << " has " << shape.size() << " dimensions; at most "
                              << kMaxNdim;
  }
  int64_t n = (dtype.bits * dtype.lanes + 7) / 8;
  for (int64_t d : shape) {
    if (d < 0) TVM_FFI_THROW(ValueError) << what << " has a negative dimension " << d;
    if (d == 0) return 0;
  }
  for (int64_t d : shape) {
    if (n > kMaxBytes / d) {
      TVM_FFI_THROW(ValueError) << what << " takes more than the limit of " << kMaxBytes
                                << " bytes";
    }
    n *= d;
  }
  return n;
}

/*! \brief Physical memory of this machine in bytes (0 when unknown). */
int64_t PhysicalMemory() {
  long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);  // NOLINT(runtime/int)
  return pages > 0 && page > 0 ? int64_t(pages) * page : 0;
}

#if defined(__x86_64__) || defined(__i386__)
/*! \brief Whether this CPU has clflushopt (CPUID leaf 7, EBX bit 23). */
bool HasClflushopt() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  return __get_cpuid_count(7, 0, &a, &b, &c, &d) && (b >> 23 & 1u);
}

/*! \brief clflushopt over [data, data + nbytes) (call only where HasClflushopt()). */
__attribute__((target("clflushopt"))) void FlushOpt(const char* data, int64_t nbytes) {
  for (int64_t off = 0; off < nbytes; off += 64) _mm_clflushopt(const_cast<char*>(data + off));
}
#endif

struct Call {
  std::string kernel;
  std::string node;
  ffi::Function func;
  std::vector<ffi::AnyView> args;
};

/*! \brief The executor module (see the file comment). */
class ExecutorObj : public ffi::ModuleObj {
 public:
  ExecutorObj(const ffi::String& plan_json, const ffi::Module& lib,
              const ffi::Map<ffi::String, ffi::Tensor>& params, DLDevice device)
      : lib_(lib), device_(device) {
    ParsePlan(plan_json, params);
    int64_t streams = std::max<int64_t>(1, min_streams_);
    for (const auto& stage : stages_) streams = std::max<int64_t>(streams, stage.size());
    num_streams_ = static_cast<int>(streams);
    if (device_.device_type == kDLCUDA) {
      try {
        SetUpCuda();
      } catch (...) {
        ReleaseCuda();  // no destructor runs for a half-built object
        throw;
      }
    } else if (num_streams_ > 1) {
      pool_ = std::make_unique<WorkerPool>(num_streams_ - 1);
    }
  }

  /*! \brief Never throws: a destructor that throws terminates the process, and after a
   * sticky CUDA error (an illegal address, say) every CUDA call fails, FreeStream included. */
  ~ExecutorObj() { ReleaseCuda(); }

  const char* kind() const final { return "ios_tvm.Executor"; }

  ffi::Optional<ffi::Function> GetFunction(const ffi::String& name) final {
    ffi::ObjectPtr<ExecutorObj> self = tvm::ffi::GetObjectPtr<ExecutorObj>(this);
    if (name == "set_input") {
      return ffi::Function::FromTyped(
          [self](int64_t index, ffi::Tensor value) { self->SetInput(index, value); });
    }
    if (name == "get_output") {
      return ffi::Function::FromTyped([self](int64_t index) { return self->GetOutput(index); });
    }
    if (name == "run") {
      return ffi::Function::FromTyped([self]() { self->Run(); });
    }
    if (name == "profile_stage") {
      return ffi::Function::FromTyped(
          [self](ffi::Array<ffi::Array<int64_t>> groups, int64_t warmup, int64_t number,
                 int64_t repeat) { return self->ProfileStage(groups, warmup, number, repeat); });
    }
    if (name == "profile_stage_cold") {
      return ffi::Function::FromTyped(
          [self](ffi::Array<ffi::Array<int64_t>> groups, int64_t warmup, int64_t repeat) {
            return self->ProfileStageCold(groups, warmup, repeat);
          });
    }
    if (name == "profile_run") {
      return ffi::Function::FromTyped([self](int64_t warmup, int64_t repeat) {
        return self->ProfileRun(warmup, repeat);
      });
    }
    if (name == "profile_stages") {
      return ffi::Function::FromTyped(
          [self](ffi::Array<ffi::Array<ffi::Array<int64_t>>> stages, int64_t warmup,
                 int64_t repeat) { return self->ProfileStages(stages, warmup, repeat); });
    }
    if (name == "num_inputs") {
      return ffi::Function::FromTyped([self]() { return int64_t(self->inputs_.size()); });
    }
    if (name == "num_outputs") {
      return ffi::Function::FromTyped([self]() { return int64_t(self->outputs_.size()); });
    }
    if (name == "num_streams") {
      return ffi::Function::FromTyped([self]() { return int64_t(self->num_streams_); });
    }
    if (name == "missing_inputs") {
      return ffi::Function::FromTyped([self]() { return self->MissingInputs(); });
    }
    if (name == "set_cuda_graph") {
      return ffi::Function::FromTyped([self](bool on) { self->SetCudaGraph(on); });
    }
    if (name == "cuda_graph_stats") {
      return ffi::Function::FromTyped([self]() { return self->CudaGraphStats(); });
    }
    return std::nullopt;
  }

 private:
  using Group = std::vector<int>;
  using Stage = std::vector<Group>;

  /*! \brief A tensor of the plan as parsed, before its buffer exists. */
  struct TensorSpec {
    std::string name, place;
    std::vector<int64_t> shape;
    DLDataType dtype;
    int64_t ref = -1, offset = 0, nbytes = 0;
  };

  void ParsePlan(const ffi::String& plan_json, const ffi::Map<ffi::String, ffi::Tensor>& params) {
    CheckJsonDepth(plan_json);
    ffi::String err;
    ffi::json::Value root = ffi::json::Parse(plan_json, &err);
    if (!err.empty()) TVM_FFI_THROW(ValueError) << "plan is not valid JSON: " << err;
    Fields plan(root, "plan");
    if (!plan.Get("format").as<ffi::String>() ||
        plan.Str("format") != "ios_tvm.Plan") {
      TVM_FFI_THROW(ValueError) << "not an ios_tvm.Plan document";
    }
    int64_t version = plan.Int("version");
    if (version < kMinPlanVersion || version > kPlanVersion) {
      TVM_FFI_THROW(ValueError) << "plan version " << version << " is not supported by this "
                                << "executor (it runs versions " << kMinPlanVersion << " to "
                                << kPlanVersion << ")";
    }
    std::string device_type = plan.Str("device_type");
    int want = device_type == "cpu" ? kDLCPU : device_type == "cuda" ? kDLCUDA : -1;
    if (want != device_.device_type) {
      TVM_FFI_THROW(ValueError) << "the plan's device type is '" << device_type
                                << "', the executor's device is of type "
                                << device_.device_type;
    }
    if (device_.device_type == kDLCUDA) CheckDeviceExists();
    min_streams_ = plan.Int("min_streams", 1);
    if (min_streams_ < 1 || min_streams_ > kMaxStreams) {
      TVM_FFI_THROW(ValueError) << "plan: min_streams " << min_streams_ << " is not in 1.."
                                << kMaxStreams;
    }
    std::vector<int64_t> storage_bytes = plan.Ints("storages");
    int64_t total = 0;
    for (size_t i = 0; i < storage_bytes.size(); ++i) {
      if (storage_bytes[i] < 0 || storage_bytes[i] > kMaxBytes - total) {
        TVM_FFI_THROW(ValueError) << "storage " << i << ": size " << storage_bytes[i]
                                  << " is negative or the storages exceed the limit of "
                                  << kMaxBytes << " bytes";
      }
      total += storage_bytes[i];
    }
    std::vector<TensorSpec> specs = ParseTensors(plan.Arr("tensors"), storage_bytes);
    for (const TensorSpec& t : specs) {  // (each at most kMaxBytes: the sum cannot overflow)
      if (t.place == "input" || t.place == "param") total = std::min(total + t.nbytes, kMaxBytes);
    }
    int64_t memory = PhysicalMemory();
    if (device_.device_type == kDLCPU && memory > 0 && total > memory) {
      TVM_FFI_THROW(ValueError) << "the plan needs " << (total < kMaxBytes ? "" : "at least ")
                                << total << " bytes of buffers, more than this machine's "
                                << memory << " bytes of memory";
    }
    ParseCalls(plan.Arr("calls"), specs.size());
    ParseStages(plan.Arr("stages"));
    inputs_ = plan.Ints("inputs");
    outputs_ = plan.Ints("outputs");
    std::set<int64_t> listed;
    for (int64_t i : inputs_) {
      if (i < 0 || i >= static_cast<int64_t>(specs.size()) || !listed.insert(i).second) {
        TVM_FFI_THROW(ValueError) << "plan: input tensor " << i << " does not exist or is "
                                  << "listed twice";
      }
    }
    for (size_t i = 0; i < specs.size(); ++i) {
      if (specs[i].place == "input" && !listed.count(static_cast<int64_t>(i))) {
        TVM_FFI_THROW(ValueError) << "tensor " << i << " ('" << specs[i].name << "') is an "
                                  << "input buffer missing from the plan's inputs";
      }
    }
    for (int64_t o : outputs_) {
      if (o < 0 || o >= static_cast<int64_t>(specs.size())) {
        TVM_FFI_THROW(ValueError) << "plan: output tensor " << o << " does not exist";
      }
    }
    // Everything checked: allocate.
    for (size_t i = 0; i < storage_bytes.size(); ++i) {
      storages_.push_back(Allocate({std::max<int64_t>(storage_bytes[i], 1)},
                                   DLDataType{kDLUInt, 8, 1}, "storage " + std::to_string(i)));
    }
    MakeTensors(specs, params);
    // Input buffers start unset. (RPC benchmarking lists weights as inputs: already set.)
    for (int64_t i : inputs_) input_set_.push_back(specs[i].place != "input");
  }

  void CheckDeviceExists() const {
    DeviceAPI* api = DeviceAPI::Get(device_, /*allow_missing=*/true);
    ffi::Any exist;
    if (api != nullptr) api->GetAttr(device_, tvm::runtime::kExist, &exist);
    if (api == nullptr || !exist.try_cast<int64_t>().value_or(0)) {
      TVM_FFI_THROW(ValueError) << "the plan runs on CUDA, and this machine has no CUDA device "
                                << device_.device_id << (api ? "" : " (no CUDA runtime)");
    }
  }

  std::vector<TensorSpec> ParseTensors(const ffi::json::Array& tensors,
                                       const std::vector<int64_t>& storage_bytes) {
    std::vector<TensorSpec> specs;
    for (size_t i = 0; i < tensors.size(); ++i) {
      Fields f(tensors[i], "tensor " + std::to_string(i));
      TensorSpec t;
      t.name = f.Str("name");
      std::string what = "tensor " + std::to_string(i) + " ('" + t.name + "')";
      t.place = f.Str("place");
      t.shape = f.Ints("shape");
      t.dtype = ParseDType(f.Str("dtype"), what);
      t.nbytes = CheckedBytes(t.shape, t.dtype, what);
      t.ref = f.Int("ref", -1);
      t.offset = f.Int("offset", 0);
      if (t.place == "storage") {
        if (t.ref < 0 || t.ref >= static_cast<int64_t>(storage_bytes.size())) {
          TVM_FFI_THROW(ValueError) << what << " names missing storage " << t.ref;
        }
      } else if (t.place == "view") {
        if (t.ref < 0 || t.ref >= static_cast<int64_t>(i)) {
          TVM_FFI_THROW(ValueError) << "view '" << t.name << "' must follow its base tensor "
                                    << t.ref;
        }
      } else if (t.place != "input" && t.place != "param") {
        TVM_FFI_THROW(ValueError) << what << " has unknown place '" << t.place << "'";
      }
      if (t.offset != 0 && t.place != "view") {
        TVM_FFI_THROW(ValueError) << what << ": only views have an offset";
      }
      specs.push_back(std::move(t));
    }
    return specs;
  }

  void ParseCalls(const ffi::json::Array& calls, size_t num_tensors) {
    for (size_t i = 0; i < calls.size(); ++i) {
      Fields f(calls[i], "call " + std::to_string(i));
      Call out;
      out.kernel = f.Str("kernel");
      out.node = f.Str("node", "");
      out.func = Resolve(out.kernel);
      for (int64_t t : f.Ints("args")) {
        if (t < 0 || t >= static_cast<int64_t>(num_tensors)) {
          TVM_FFI_THROW(ValueError) << "call of '" << out.kernel << "' names missing tensor "
                                    << t;
        }
        out.args.emplace_back();  // bound to the tensors in MakeTensors
        arg_ids_.push_back(t);
      }
      calls_.push_back(std::move(out));
    }
  }

  /*! \brief The function a call runs: the library's own, else an allowed global. */
  ffi::Function Resolve(const std::string& kernel) const {
    if (kernel.empty() || kernel[0] == '_') {
      // A library's function "f" is its symbol __tvm_ffi_f; __tvm_ffi__* symbols are
      // tvm-ffi's data (__tvm_ffi__library_bin, ...): "calling" one runs data as code.
      TVM_FFI_THROW(ValueError) << "kernel name '" << kernel << "' is reserved (names starting "
                                << "with '_' are tvm-ffi's library data)";
    }
    ffi::Optional<ffi::Function> f = lib_->GetFunction(kernel, /*query_imports=*/true);
    if (f.has_value()) return f.value();
    // call_dps_packed targets (library dispatch) are global functions, not library kernels.
    if (!PackedAllowlist::Global().Allowed(kernel)) {
      TVM_FFI_THROW(ValueError) << "kernel '" << kernel << "' is not in the kernel library, "
                                << "nor a global function allowed with "
                                << "ios_tvm.executor.allow_packed_function";
    }
    f = ffi::Function::GetGlobal(kernel);
    if (!f.has_value()) {
      TVM_FFI_THROW(ValueError) << "kernel '" << kernel << "' is not in the kernel library, "
                                << "nor a registered global function";
    }
    return f.value();
  }

  void ParseStages(const ffi::json::Array& stages) {
    for (size_t si = 0; si < stages.size(); ++si) {
      std::string what = "stage " + std::to_string(si);
      ffi::json::Array groups = Fields(stages[si], what).Arr("groups");
      if (groups.empty() || static_cast<int64_t>(groups.size()) > kMaxStreams) {
        TVM_FFI_THROW(ValueError) << what << " has " << groups.size() << " groups; a stage "
                                  << "needs 1.." << kMaxStreams;
      }
      Stage stage;
      for (const ffi::Any& g : groups) {
        Group group;
        for (const ffi::Any& c : AsArray(g, what + ": a group")) {
          int64_t ci = AsInt(c, what + ": a call id");
          if (ci < 0 || ci >= static_cast<int64_t>(calls_.size())) {
            TVM_FFI_THROW(ValueError) << "a stage names missing call " << ci;
          }
          group.push_back(static_cast<int>(ci));
        }
        if (group.empty()) TVM_FFI_THROW(ValueError) << what << " has an empty group";
        stage.push_back(std::move(group));
      }
      stages_.push_back(std::move(stage));
    }
  }

  /*! \brief An empty tensor; an allocation failure is an error naming `what`. */
  Tensor Allocate(const std::vector<int64_t>& shape, DLDataType dtype, const std::string& what) {
    try {
      return Empty(ffi::Shape(shape), dtype, device_);
    } catch (const std::exception& e) {
      TVM_FFI_THROW(RuntimeError) << "cannot allocate " << what << ": " << e.what();
    }
    return Tensor();
  }

  void MakeTensors(const std::vector<TensorSpec>& specs,
                   const ffi::Map<ffi::String, ffi::Tensor>& params) {
    tensors_.resize(specs.size());
    names_.resize(specs.size());
    for (size_t i = 0; i < specs.size(); ++i) {
      const TensorSpec& t = specs[i];
      ffi::Shape shape(t.shape);
      names_[i] = t.name;
      if (t.place == "input") {
        tensors_[i] = Allocate(t.shape, t.dtype, "input '" + t.name + "'");
      } else if (t.place == "param") {
        auto it = params.find(t.name);
        if (it == params.end()) {
          TVM_FFI_THROW(ValueError) << "the params hold no value for weight '" << t.name << "'";
        }
        ffi::Tensor value = (*it).second;
        CheckTensor(value, shape, t.dtype, "weight '" + t.name + "'");
        Tensor dst = Allocate(t.shape, t.dtype, "weight '" + t.name + "'");
        CopyInto(value, dst);
        tensors_[i] = dst;
      } else if (t.place == "storage") {
        tensors_[i] = View(storages_[t.ref], shape, t.dtype, t.name);
      } else {
        tensors_[i] = View(tensors_[t.ref], shape, t.dtype, t.name, t.offset);
      }
    }
    size_t k = 0;
    call_weights_.assign(calls_.size(), {});
    for (size_t c = 0; c < calls_.size(); ++c) {
      for (ffi::AnyView& a : calls_[c].args) {
        const int64_t t = arg_ids_[k++];
        a = tensors_[t];
        if (specs[t].place == "param") {
          call_weights_[c].emplace_back(static_cast<const char*>(tensors_[t].data_ptr()),
                                        specs[t].nbytes);
        }
      }
    }
  }

  static void CheckTensor(const ffi::Tensor& value, const ffi::Shape& shape, DLDataType dtype,
                          const std::string& what) {
    if (value.dtype() != dtype) {
      TVM_FFI_THROW(ValueError) << what << " has dtype " << ffi::DLDataTypeToString(value.dtype())
                                << ", expected " << ffi::DLDataTypeToString(dtype);
    }
    ffi::ShapeView got = value.shape();
    bool same = got.size() == shape.size();
    for (size_t i = 0; same && i < shape.size(); ++i) same = got[i] == shape[i];
    if (!same) {
      std::ostringstream g;
      g << "(";
      for (size_t i = 0; i < got.size(); ++i) g << (i ? ", " : "") << got[i];
      g << ")";
      TVM_FFI_THROW(ValueError) << what << " has shape " << g.str() << ", expected " << shape;
    }
  }

  /*! \brief Releases the CUDA graph, every event (fork/join and timing) and every stream;
   * never throws: each failure is logged (WarnCuda) and the rest are still released. */
  void ReleaseCuda() noexcept {
    if (device_.device_type != kDLCUDA) return;
    graph_.reset();  // its destructor logs its own errors; before the streams it captured
    auto warn = [](const std::string& what, const std::exception* e) {
      const auto* fe = dynamic_cast<const ffi::Error*>(e);
      WarnCuda("releasing the executor's " + what + ": " +
               (fe ? fe->message() : e ? std::string(e->what()) : std::string("unknown error")));
    };
    const CudaApi* api = nullptr;
    try {
      if (!events_.empty() || !timing_events_.empty()) api = &CudaApi::Get();
    } catch (const std::exception& e) {
      warn("events", &e);
    } catch (...) {
      warn("events", nullptr);
    }
    for (std::vector<void*>* list : {&events_, &timing_events_}) {
      for (void* e : *list) {
        int err = api ? api->event_destroy(e) : 0;
        if (err != 0) WarnCuda("releasing the executor's event: " + api->Describe(err));
      }
      list->clear();
    }
    if (streams_.empty()) return;
    DeviceAPI* dev_api = nullptr;
    try {
      dev_api = DeviceAPI::Get(device_);
    } catch (const std::exception& e) {
      warn("streams", &e);
    } catch (...) {
      warn("streams", nullptr);
    }
    for (void* s : streams_) {
      if (dev_api == nullptr) break;
      try {
        dev_api->FreeStream(device_, s);
      } catch (const std::exception& e) {
        warn("stream", &e);
      } catch (...) {
        warn("stream", nullptr);
      }
    }
    streams_.clear();
  }

  void SetUpCuda() {
    // TVM's CUDA device API first: it loads the CUDA runtime the executor's calls must share.
    DeviceAPI* dev_api = DeviceAPI::Get(device_);
    const CudaApi& api = CudaApi::Get();
    for (int i = 0; i < num_streams_; ++i) streams_.push_back(dev_api->CreateStream(device_));
    // events_[0] forks a stage from stream 0; events_[i] joins stream i back into stream 0;
    // the last two time profiling runs.
    constexpr unsigned kDisableTiming = 0x02;
    for (int i = 0; i < num_streams_; ++i) {
      void* e = nullptr;
      api.Check(api.event_create(&e, kDisableTiming), "cudaEventCreateWithFlags");
      events_.push_back(e);
    }
    for (int i = 0; i < 2; ++i) {
      void* e = nullptr;
      api.Check(api.event_create(&e, 0), "cudaEventCreateWithFlags");
      timing_events_.push_back(e);
    }
  }

  void SetInput(int64_t index, const ffi::Tensor& value) {
    std::lock_guard<std::mutex> lock(mu_);
    if (index < 0 || index >= static_cast<int64_t>(inputs_.size())) {
      TVM_FFI_THROW(IndexError) << "input index " << index << " out of range (the model has "
                                << inputs_.size() << " inputs)";
    }
    Tensor& dst = tensors_[inputs_[index]];
    CheckTensor(value, ffi::Shape(dst.shape().begin(), dst.shape().end()), dst.dtype(),
                "input '" + names_[inputs_[index]] + "'");
    CopyInto(value, dst);
    input_set_[index] = true;
  }

  ffi::Tensor GetOutput(int64_t index) {
    std::lock_guard<std::mutex> lock(mu_);
    if (index < 0 || index >= static_cast<int64_t>(outputs_.size())) {
      TVM_FFI_THROW(IndexError) << "output index " << index << " out of range (the model has "
                                << outputs_.size() << " outputs)";
    }
    return tensors_[outputs_[index]];
  }

  /*! \brief Names of the input buffers never set (a run would read garbage from them). */
  ffi::Array<ffi::String> MissingInputs() {
    std::lock_guard<std::mutex> lock(mu_);
    return MissingInputsLocked();
  }

  ffi::Array<ffi::String> MissingInputsLocked() const {
    ffi::Array<ffi::String> out;
    for (size_t i = 0; i < inputs_.size(); ++i) {
      if (!input_set_[i]) out.push_back(names_[inputs_[i]]);
    }
    return out;
  }

  std::string CallName(int ci) const {
    const Call& call = calls_[ci];
    return "kernel '" + call.kernel + "' (call " + std::to_string(ci) +
           (call.node.empty() ? "" : ", node '" + call.node + "'") + ")";
  }

  void RunGroup(const Group& group) {
    ffi::Any rv;
    const bool capturing = graph_ && graph_->capturing();  // CUDA graph capture: check each call
    for (int ci : group) {
      Call& call = calls_[ci];
      if (capturing) {  // a failure is reported by the capture, naming capture_call_
        capture_call_ = ci;
        call.func.CallPacked(call.args.data(), static_cast<int32_t>(call.args.size()), &rv);
        graph_->CheckCapture(TVMFFIEnvGetStream(device_.device_type, device_.device_id));
        capture_call_ = -1;
        continue;
      }
      try {
        call.func.CallPacked(call.args.data(), static_cast<int32_t>(call.args.size()), &rv);
      } catch (const ffi::Error& e) {
        throw ffi::Error(e.kind(), CallName(ci) + " failed: " + e.message(), e.backtrace());
      } catch (const std::exception& e) {
        TVM_FFI_THROW(RuntimeError) << CallName(ci) << " failed: " << e.what();
      }
    }
  }

  void SetStream(void* stream) {
    TVMFFIStreamHandle prev = nullptr;
    TVM_FFI_CHECK_SAFE_CALL(
        TVMFFIEnvSetStream(device_.device_type, device_.device_id, stream, &prev));
  }

  void RunStageCuda(const Stage& stage) {
    const CudaApi& api = CudaApi::Get();
    if (stage.size() > 1) {
      api.Check(api.event_record(events_[0], streams_[0]), "cudaEventRecord");
      for (size_t g = 1; g < stage.size(); ++g) {
        api.Check(api.stream_wait_event(streams_[g], events_[0], 0), "cudaStreamWaitEvent");
      }
    }
    for (size_t g = 0; g < stage.size(); ++g) {
      SetStream(streams_[g]);
      RunGroup(stage[g]);
    }
    SetStream(streams_[0]);
    for (size_t g = 1; g < stage.size(); ++g) {
      api.Check(api.event_record(events_[g], streams_[g]), "cudaEventRecord");
      api.Check(api.stream_wait_event(streams_[0], events_[g], 0), "cudaStreamWaitEvent");
    }
  }

  void RunStageCpu(const Stage& stage) {
    const int k = static_cast<int>(stage.size());
    if (k == 1) {
      kernel_threads_.Use(kernel_threads_.Share(0, 1));
      RunGroup(stage[0]);
      return;
    }
    std::vector<std::function<void()>> jobs;
    for (int g = 1; g < k; ++g) {
      const Group* group = &stage[g];
      jobs.emplace_back([this, group, g, k] {
        kernel_threads_.Use(kernel_threads_.Share(g, k));
        RunGroup(*group);
      });
    }
    pool_->Run(jobs, [this, &stage, k] {
      kernel_threads_.Use(kernel_threads_.Share(0, k));
      RunGroup(stage[0]);
    });
  }

  /*! \brief Gives the calling thread's kernels all threads again when a CPU run ends. */
  struct KernelThreadsGuard {
    const KernelThreads& threads;
    ~KernelThreadsGuard() { threads.Use(threads.total()); }
  };

  void RunStage(const Stage& stage) {
    if (device_.device_type == kDLCUDA) {
      RunStageCuda(stage);
    } else {
      RunStageCpu(stage);
    }
  }

  /*! \brief Restores the calling thread's stream when a CUDA run ends (or throws). */
  struct StreamGuard {
    DLDevice dev;
    void* prev;
    StreamGuard(DLDevice d) : dev(d), prev(TVMFFIEnvGetStream(d.device_type, d.device_id)) {}
    ~StreamGuard() {
      TVMFFIStreamHandle ignored = nullptr;
      TVMFFIEnvSetStream(dev.device_type, dev.device_id, prev, &ignored);
    }
  };

  void Run() {
    std::lock_guard<std::mutex> lock(mu_);
    ffi::Array<ffi::String> missing = MissingInputsLocked();
    if (!missing.empty()) {
      std::ostringstream os;
      for (size_t i = 0; i < missing.size(); ++i) os << (i ? ", " : "") << "'" << missing[i] << "'";
      TVM_FFI_THROW(ValueError) << "input(s) " << os.str() << " were never set; set every "
                                << "input before running";
    }
    if (device_.device_type == kDLCUDA) {
      StreamGuard guard(device_);
      if (graph_) return RunCudaGraph();
      for (const Stage& stage : stages_) RunStage(stage);
      const CudaApi& api = CudaApi::Get();
      api.Check(api.stream_synchronize(streams_[0]), "cudaStreamSynchronize");
    } else {
      KernelThreadsGuard restore{kernel_threads_};
      for (const Stage& stage : stages_) RunStage(stage);
    }
  }

  /*! \brief A stage given as groups of call ids, checked against this plan. */
  Stage ParseStage(const ffi::Array<ffi::Array<int64_t>>& groups) const {
    if (groups.empty() || static_cast<int>(groups.size()) > num_streams_) {
      TVM_FFI_THROW(ValueError) << "a profiled stage needs 1.." << num_streams_ << " groups, got "
                                << groups.size();
    }
    Stage stage;
    for (const auto& g : groups) {
      Group group;
      for (int64_t c : g) {
        if (c < 0 || c >= static_cast<int64_t>(calls_.size())) {
          TVM_FFI_THROW(ValueError) << "profile_stage names missing call " << c;
        }
        group.push_back(static_cast<int>(c));
      }
      stage.push_back(std::move(group));
    }
    return stage;
  }

  ffi::Array<double> ProfileStage(const ffi::Array<ffi::Array<int64_t>>& groups, int64_t warmup,
                                  int64_t number, int64_t repeat) {
    std::lock_guard<std::mutex> lock(mu_);
    if (number < 1 || repeat < 1 || warmup < 0) {
      TVM_FFI_THROW(ValueError) << "profile_stage needs warmup >= 0, number >= 1, repeat >= 1";
    }
    const Stage stage = ParseStage(groups);
    std::vector<double> out;
    if (device_.device_type == kDLCUDA) {
      StreamGuard guard(device_);
      const CudaApi& api = CudaApi::Get();
      for (int64_t i = 0; i < warmup; ++i) RunStage(stage);
      for (int64_t r = 0; r < repeat; ++r) {
        api.Check(api.event_record(timing_events_[0], streams_[0]), "cudaEventRecord");
        for (int64_t i = 0; i < number; ++i) RunStage(stage);
        api.Check(api.event_record(timing_events_[1], streams_[0]), "cudaEventRecord");
        api.Check(api.event_synchronize(timing_events_[1]), "cudaEventSynchronize");
        float ms = 0;
        api.Check(api.event_elapsed_time(&ms, timing_events_[0], timing_events_[1]),
                  "cudaEventElapsedTime");
        out.push_back(ms * 1e-3 / number);
      }
    } else {
      KernelThreadsGuard restore{kernel_threads_};
      for (int64_t i = 0; i < warmup; ++i) RunStage(stage);
      for (int64_t r = 0; r < repeat; ++r) {
        auto t0 = std::chrono::steady_clock::now();
        for (int64_t i = 0; i < number; ++i) RunStage(stage);
        auto t1 = std::chrono::steady_clock::now();
        out.push_back(std::chrono::duration<double>(t1 - t0).count() / number);
      }
    }
    return ffi::Array<double>(out.begin(), out.end());
  }

  /*! \brief Seconds of `repeat` single runs of a stage on the CPU, each run with the weights
   * of the stage's calls evicted from every cache level first (after `warmup` runs).
   *
   * In a whole run a kernel's weights were last read one run ago, and everything the plan
   * touched since has passed through the caches: for a model whose weights exceed the caches
   * they come from memory, while the activations a stage reads were just written by the
   * stage before it and are still cached. Timing a stage over and over keeps its weights hot,
   * which on such models predicts the run 20-30% low; this keeps the activations hot and
   * the weights cold, as in the plan. CPU only (a CUDA kernel's weights cannot be evicted
   * from the host). */
  ffi::Array<double> ProfileStageCold(const ffi::Array<ffi::Array<int64_t>>& groups,
                                      int64_t warmup, int64_t repeat) {
    std::lock_guard<std::mutex> lock(mu_);
    if (repeat < 1 || warmup < 0) {
      TVM_FFI_THROW(ValueError) << "profile_stage_cold needs warmup >= 0, repeat >= 1";
    }
    if (device_.device_type != kDLCPU) {
      TVM_FFI_THROW(ValueError) << "profile_stage_cold times CPU stages only";
    }
    const Stage stage = ParseStage(groups);
    KernelThreadsGuard restore{kernel_threads_};
    for (int64_t i = 0; i < warmup; ++i) RunStage(stage);
    std::vector<double> out;
    for (int64_t r = 0; r < repeat; ++r) {
      EvictWeights(stage);
      auto t0 = std::chrono::steady_clock::now();
      RunStage(stage);
      auto t1 = std::chrono::steady_clock::now();
      out.push_back(std::chrono::duration<double>(t1 - t0).count());
    }
    return ffi::Array<double>(out.begin(), out.end());
  }

  /*! \brief Writes back and drops from every cache level the weights of a stage's calls. */
  void EvictWeights(const Stage& stage) const {
#if defined(__x86_64__) || defined(__i386__)
    // clflushopt flushes lines in parallel (clflush one after another, ~1 GB/s here, which
    // made evicting cost more than the stages it was timing); the fence orders it before
    // the timed run.
    static const bool opt = HasClflushopt();
    for (const Group& group : stage) {
      for (int c : group) {
        for (const auto& [data, nbytes] : call_weights_[c]) {
          if (opt) {
            FlushOpt(data, nbytes);
          } else {
            for (int64_t off = 0; off < nbytes; off += 64) _mm_clflush(data + off);
          }
        }
      }
    }
    _mm_mfence();
#elif defined(__aarch64__)
    for (const Group& group : stage) {
      for (int c : group) {
        for (const auto& [data, nbytes] : call_weights_[c]) {
          for (int64_t off = 0; off < nbytes; off += 64) {
            asm volatile("dc civac, %0" ::"r"(data + off) : "memory");
          }
        }
      }
    }
    asm volatile("dsb ish" ::: "memory");
#else
    (void)stage;  // no portable cache eviction: the weights stay warm
#endif
  }

  // -- profiling stages the way a plan runs them (ios_tvm/compiler/fidelity.py) ------------------
  /*! \brief Per-stage seconds of `repeat` whole runs of the plan, after `warmup` runs.
   *
   * Row-major, repeat x (num_stages + 1): each row holds every stage's seconds, timed by a
   * steady clock around the stage inside a real run (same threads, pool shares and order as
   * run()), then the seconds of the whole run. On CUDA stream 0 is synchronised after each
   * stage so that its time can be read on the host (this adds one synchronisation per
   * stage; run() has none). Inputs need not be set (their values do not matter for timing). */
  ffi::Array<double> ProfileRun(int64_t warmup, int64_t repeat) {
    std::lock_guard<std::mutex> lock(mu_);
    return TimeStages(stages_, warmup, repeat);
  }

  /*! \brief As ProfileRun, for a sequence of stages given by call ids (any order the caller
   * wants: e.g. a candidate stage after the stages that precede it in a plan). */
  ffi::Array<double> ProfileStages(const ffi::Array<ffi::Array<ffi::Array<int64_t>>>& stages,
                                   int64_t warmup, int64_t repeat) {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<Stage> seq;
    for (const auto& groups : stages) {
      if (groups.empty() || static_cast<int>(groups.size()) > num_streams_) {
        TVM_FFI_THROW(ValueError) << "a profiled stage needs 1.." << num_streams_
                                  << " groups, got " << groups.size();
      }
      Stage stage;
      for (const auto& g : groups) {
        Group group;
        for (int64_t c : g) {
          if (c < 0 || c >= static_cast<int64_t>(calls_.size())) {
            TVM_FFI_THROW(ValueError) << "profile_stages names missing call " << c;
          }
          group.push_back(static_cast<int>(c));
        }
        if (group.empty()) TVM_FFI_THROW(ValueError) << "profile_stages: an empty group";
        stage.push_back(std::move(group));
      }
      seq.push_back(std::move(stage));
    }
    return TimeStages(seq, warmup, repeat);
  }

  ffi::Array<double> TimeStages(const std::vector<Stage>& seq, int64_t warmup, int64_t repeat) {
    if (repeat < 1 || warmup < 0) {
      TVM_FFI_THROW(ValueError) << "profiling runs need warmup >= 0 and repeat >= 1";
    }
    using Clock = std::chrono::steady_clock;
    const bool cuda = device_.device_type == kDLCUDA;
    std::vector<double> out;
    out.reserve(static_cast<size_t>(repeat) * (seq.size() + 1));
    auto sync = [this, cuda] {
      if (!cuda) return;
      const CudaApi& api = CudaApi::Get();
      api.Check(api.stream_synchronize(streams_[0]), "cudaStreamSynchronize");
    };
    auto body = [&] {
      for (int64_t i = 0; i < warmup; ++i) {
        for (const Stage& stage : seq) RunStage(stage);
        sync();
      }
      for (int64_t r = 0; r < repeat; ++r) {
        const auto start = Clock::now();
        auto t = start;
        for (const Stage& stage : seq) {
          RunStage(stage);
          sync();
          const auto now = Clock::now();
          out.push_back(std::chrono::duration<double>(now - t).count());
          t = now;
        }
        out.push_back(std::chrono::duration<double>(t - start).count());
      }
    };
    if (cuda) {
      StreamGuard guard(device_);
      body();
    } else {
      KernelThreadsGuard restore{kernel_threads_};
      body();
    }
    return ffi::Array<double>(out.begin(), out.end());
  }

  // -- CUDA graph mode (runtime/cuda_graph.h) ---------------------------------------------------
  /*! \brief Graph mode on (the next run captures the whole plan) or off (drops the graph). */
  void SetCudaGraph(bool on) {
    std::lock_guard<std::mutex> lock(mu_);
    if (on && device_.device_type != kDLCUDA) {
      TVM_FFI_THROW(ValueError) << "CUDA graphs need a CUDA device; this executor runs on "
                                << (device_.device_type == kDLCPU ? std::string("the CPU")
                                    : "device type " + std::to_string(device_.device_type));
    }
    graph_error_.clear();
    if (!on) {
      graph_.reset();
    } else if (!graph_) {
      graph_ = std::make_unique<CudaGraphRunner>(streams_[0]);
    }
  }

  ffi::Map<ffi::String, ffi::Any> CudaGraphStats() {
    std::lock_guard<std::mutex> lock(mu_);
    ffi::Map<ffi::String, ffi::Any> out;
    out.Set("enabled", graph_ != nullptr);
    out.Set("captured", graph_ != nullptr && graph_->captured());
    out.Set("captures", graph_ ? graph_->captures() : int64_t(0));
    out.Set("launches", graph_ ? graph_->launches() : int64_t(0));
    out.Set("nodes", graph_ ? graph_->num_nodes() : int64_t(0));
    out.Set("error", ffi::String(graph_error_));
    return out;
  }

  /*! \brief A run in graph mode. The first one runs the plan eagerly (module loading, kernel
   * attributes and workspace allocation happen on first calls and cannot be captured),
   * captures it (the same launches, fork/join events and streams) and replays the graph; later
   * ones only replay it: one cudaGraphLaunch on stream 0. A failed capture throws naming the
   * kernel at fault and turns graph mode off, so later runs are eager. */
  void RunCudaGraph() {
    const CudaApi& api = CudaApi::Get();
    if (!graph_->captured()) {
      for (const Stage& stage : stages_) RunStage(stage);
      api.Check(api.stream_synchronize(streams_[0]), "cudaStreamSynchronize");
      capture_call_ = -1;
      auto issue = [this] {
        for (const Stage& stage : stages_) RunStage(stage);
      };
      auto where = [this] {
        if (capture_call_ < 0) return std::string();
        return "kernel '" + calls_[capture_call_].kernel + "' (call " +
               std::to_string(capture_call_) + ")";
      };
      auto rejoin = [this, &api] {  // after a failure mid-stage: join the side streams
        for (int g = 1; g < num_streams_; ++g) {
          api.event_record(events_[g], streams_[g]);
          api.stream_wait_event(streams_[0], events_[g], 0);
        }
      };
      try {
        graph_->Capture(issue, where, rejoin);
      } catch (const ffi::Error& e) {
        graph_error_ = e.message();
        graph_.reset();
        throw;
      }
    }
    graph_->Launch();
    api.Check(api.stream_synchronize(streams_[0]), "cudaStreamSynchronize");
  }

  ffi::Module lib_;
  DLDevice device_;
  /*! \brief Held by every entry point: one call at a time. */
  std::mutex mu_;
  std::vector<Tensor> storages_;
  std::vector<Tensor> tensors_;
  std::vector<std::string> names_;
  std::vector<Call> calls_;
  /*! \brief The tensor ids of every call's arguments, in order (while parsing). */
  std::vector<int64_t> arg_ids_;
  /*! \brief Per call: the weights (params) it reads, as host address and bytes. */
  std::vector<std::vector<std::pair<const char*, int64_t>>> call_weights_;
  std::vector<Stage> stages_;
  std::vector<int64_t> inputs_, outputs_;
  /*! \brief Whether input i has been set (a run needs all of them). */
  std::vector<bool> input_set_;
  int num_streams_ = 1;
  int64_t min_streams_ = 1;
  std::unique_ptr<WorkerPool> pool_;
  KernelThreads kernel_threads_;
  std::vector<void*> streams_, events_, timing_events_;
  /*! \brief Graph mode: the captured plan (null when off), why the last capture failed, and
   * the call being issued during a capture. */
  std::unique_ptr<CudaGraphRunner> graph_;
  std::string graph_error_;
  int capture_call_ = -1;
};

ffi::Module CreateExecutor(const ffi::String& plan_json, const ffi::Module& lib,
                           const ffi::Map<ffi::String, ffi::Tensor>& params, DLDevice device) {
  return ffi::Module(ffi::make_object<ExecutorObj>(plan_json, lib, params, device));
}

TVM_FFI_STATIC_INIT_BLOCK() {
  namespace refl = tvm::ffi::reflection;
  refl::GlobalDef()
      .def("ios_tvm.runtime.create_executor", CreateExecutor)
      .def("ios_tvm.runtime.allow_packed_function",
           [](const ffi::String& name) { PackedAllowlist::Global().Add(name); })
      .def("ios_tvm.runtime.cuda_executor_symbols",
           []() {
             ffi::Array<ffi::String> out;
             for (const char* name : CudaApi::SymbolNames()) out.push_back(name);
             return out;
           })
      .def("ios_tvm.runtime.packed_function_allowed",
           [](const ffi::String& name) { return PackedAllowlist::Global().Allowed(name); });
}

}  // namespace ios_tvm
