/*!
 * \file ios_dp.cc
 * \brief The IOS schedule DP over one part of an op graph, in C++.
 *
 * This is a line-by-line port of ``ios_tvm.search._PartSearch`` (see the module docstring of
 * ios_tvm/search.py for the algorithm). It enumerates the same endings in the same order and
 * breaks ties the same way (strict ``<``), so it returns the very same stages, total cost and
 * state/transition counts as the Python search, only faster.
 *
 * Masks. A part has at most 64 ops, so an op set is a ``uint64_t`` with bit ``i`` for local op
 * ``i``. The FFI carries ``int64_t``: every mask crosses the boundary as the two's-complement
 * reinterpretation of its ``uint64_t`` bits (bit 63 set means a negative ``int64_t``), and
 * ios_tvm/native_search.py converts with ``m - 2**64 if m >= 2**63`` and ``m & (2**64 - 1)``.
 *
 * Costs and the merge predicate stay in Python: the DP calls back once per distinct (mask,
 * strategy) and once per distinct merge candidate, and memoises the answers here.
 */
#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/shape.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/optional.h>
#include <tvm/ffi/reflection/registry.h>
#include <tvm/ffi/string.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace ios_tvm {
namespace {

namespace ffi = tvm::ffi;

/*! \brief Largest part the native DP accepts: one bit per op in a uint64_t. */
constexpr int64_t kMaxOps = 64;

/*! \brief Stage strategies, as in ios_tvm.schedule.STRATEGIES. */
enum Strategy : uint8_t { kConcurrent = 0, kMerge = 1 };

/*! \brief The strategy's name on the Python side. */
const char* StrategyName(Strategy s) { return s == kConcurrent ? "concurrent" : "merge"; }

/*! \brief Number of set bits. */
inline int PopCount(uint64_t m) { return __builtin_popcountll(m); }

/*! \brief Reinterpret an FFI int64 as the mask's 64 bits. */
inline uint64_t ToMask(int64_t v) { return static_cast<uint64_t>(v); }

/*! \brief Reinterpret a mask's 64 bits as an FFI int64. */
inline int64_t FromMask(uint64_t m) { return static_cast<int64_t>(m); }

/*! \brief The best ending found for one DP state. */
struct Choice {
  /*! \brief Minimum cost of scheduling the state. */
  double cost;
  /*! \brief The last stage's op set. */
  uint64_t ending;
  /*! \brief Index of the last stage's groups in PartSearch::group_pool_. */
  uint32_t groups_begin;
  /*! \brief Number of groups of the last stage. */
  uint32_t num_groups;
  /*! \brief How the last stage runs. */
  Strategy strategy;
};

/*! \brief One open node of the depth-first enumeration of disjoint group collections. */
struct Frame {
  /*! \brief First candidate index still to try. */
  int64_t start;
  /*! \brief Union of the groups picked so far. */
  uint64_t used;
  /*! \brief Last picked group's node in the pick arena, or -1 for none. */
  int64_t pick;
  /*! \brief Number of groups picked so far. */
  int64_t depth;
};

/*! \brief One picked group, linked to the group picked before it. */
struct Pick {
  uint64_t group;
  int64_t parent;
};

/*! \brief The DP over one part; mirrors ios_tvm.search._PartSearch. */
class PartSearch {
 public:
  PartSearch(std::vector<uint64_t> desc, int64_t r, int64_t s, bool merge, bool singletons_only,
             ffi::Function cost_fn, ffi::Optional<ffi::Function> merge_fn)
      : n_(static_cast<int>(desc.size())),
        desc_(std::move(desc)),
        r_(r),
        s_(s),
        merge_(merge),
        singletons_only_(singletons_only),
        cost_fn_(std::move(cost_fn)),
        merge_fn_(std::move(merge_fn)) {
    memo_.reserve(1024);
    memo_.emplace(0, Choice{0.0, 0, 0, 0, kConcurrent});
  }

  /*! \brief Minimum cost of scheduling the down-set ``state``. */
  double Solve(uint64_t state) {
    auto hit = memo_.find(state);
    if (hit != memo_.end()) return hit->second.cost;

    double best = std::numeric_limits<double>::infinity();
    bool found = false;
    uint64_t best_ending = 0;
    Strategy best_strategy = kConcurrent;
    std::vector<uint64_t> best_groups;

    std::vector<uint64_t> groups = Groups(state);
    if (singletons_only_) {
      groups.erase(std::remove_if(groups.begin(), groups.end(),
                                  [](uint64_t g) { return (g & (g - 1)) != 0; }),
                   groups.end());
    }
    const int64_t ng = static_cast<int64_t>(groups.size());

    // Every collection of <= s pairwise-disjoint candidate groups is a concurrent ending. The
    // explicit LIFO stack reproduces the Python enumeration order exactly.
    std::vector<Pick> picks;
    std::vector<Frame> stack{Frame{0, 0, -1, 0}};
    while (!stack.empty()) {
      Frame f = stack.back();
      stack.pop_back();
      for (int64_t j = f.start; j < ng; ++j) {
        uint64_t g = groups[j];
        if (g & f.used) continue;
        uint64_t ending = f.used | g;
        int64_t pick = static_cast<int64_t>(picks.size());
        picks.push_back(Pick{g, f.pick});
        ++transitions_;
        double total = Solve(state ^ ending) + StageCost(ending, kConcurrent, picks, pick);
        if (total < best) {
          best = total;
          found = true;
          best_ending = ending;
          best_strategy = kConcurrent;
          CollectPicks(picks, pick, &best_groups);
        }
        if (f.depth + 1 < s_ && !singletons_only_) {
          stack.push_back(Frame{j + 1, ending, pick, f.depth + 1});
        }
      }
    }

    if (merge_) {
      uint64_t sink_mask = 0;
      for (uint64_t m = state; m; m &= m - 1) {
        int v = __builtin_ctzll(m);
        if (!(desc_[v] & state)) sink_mask |= uint64_t{1} << v;
      }
      if (PopCount(sink_mask) >= 2) {
        for (uint64_t sub = sink_mask; sub; sub = (sub - 1) & sink_mask) {
          if ((sub & (sub - 1)) && Mergeable(sub)) {
            ++transitions_;
            double total = Solve(state ^ sub) + MergeCost(sub);
            if (total < best) {
              best = total;
              found = true;
              best_ending = sub;
              best_strategy = kMerge;
              best_groups.assign(1, sub);
            }
          }
        }
      }
    }
    TVM_FFI_ICHECK(found) << "state " << state << " has no ending; every non-empty down-set "
                          << "has a singleton ending";
    uint32_t begin = static_cast<uint32_t>(group_pool_.size());
    group_pool_.insert(group_pool_.end(), best_groups.begin(), best_groups.end());
    memo_.emplace(state, Choice{best, best_ending, begin, static_cast<uint32_t>(best_groups.size()),
                                best_strategy});
    return best;
  }

  /*! \brief Solve the whole part and package the result for Python. */
  ffi::Array<ffi::Any> Run() {
    uint64_t full = n_ == kMaxOps ? ~uint64_t{0} : (uint64_t{1} << n_) - 1;
    double total = Solve(full);
    std::vector<ffi::Any> stages;
    for (uint64_t state = full; state;) {
      const Choice& c = memo_.at(state);
      std::vector<int64_t> gs;
      for (uint32_t i = 0; i < c.num_groups; ++i) {
        gs.push_back(FromMask(group_pool_[c.groups_begin + i]));
      }
      stages.push_back(
          ffi::Array<ffi::Any>{ffi::String(StrategyName(c.strategy)), ffi::Shape(std::move(gs))});
      state ^= c.ending;
    }
    std::reverse(stages.begin(), stages.end());
    return ffi::Array<ffi::Any>{total,
                                static_cast<int64_t>(memo_.size()) - 1,
                                transitions_,
                                cost_requests_,
                                static_cast<int64_t>(cost_memo_[0].size() + cost_memo_[1].size()),
                                ffi::Array<ffi::Any>(stages.begin(), stages.end())};
  }

 private:
  /*! \brief Connected, successor-closed subsets of ``state`` with at most r ops, ascending. */
  std::vector<uint64_t> Groups(uint64_t state) const {
    std::vector<uint64_t> closures;
    for (uint64_t m = state; m; m &= m - 1) {
      int v = __builtin_ctzll(m);
      uint64_t c = (desc_[v] & state) | (uint64_t{1} << v);
      if (PopCount(c) <= r_) closures.push_back(c);
    }
    // Closures come in ascending order of their lowest bit v, which is their minimum, so they
    // are already sorted ascending like Python's sorted(found).
    if (r_ == 1 || closures.size() <= 1) return closures;
    std::unordered_set<uint64_t> found(closures.begin(), closures.end());
    std::vector<uint64_t> frontier(closures.begin(), closures.end());
    while (!frontier.empty()) {
      uint64_t g = frontier.back();
      frontier.pop_back();
      for (uint64_t c : closures) {
        if ((c & g) && (c | g) != g) {
          uint64_t u = c | g;
          if (PopCount(u) <= r_ && found.insert(u).second) frontier.push_back(u);
        }
      }
    }
    std::vector<uint64_t> out(found.begin(), found.end());
    std::sort(out.begin(), out.end());
    return out;
  }

  /*! \brief The groups along the pick chain ending at ``pick``, in the order they were picked. */
  static void CollectPicks(const std::vector<Pick>& picks, int64_t pick,
                           std::vector<uint64_t>* out) {
    out->clear();
    for (int64_t p = pick; p >= 0; p = picks[p].parent) out->push_back(picks[p].group);
    std::reverse(out->begin(), out->end());
  }

  /*! \brief Memoised cost of the concurrent stage ``ending`` whose groups end at ``pick``. */
  double StageCost(uint64_t ending, Strategy strategy, const std::vector<Pick>& picks,
                   int64_t pick) {
    ++cost_requests_;
    auto& table = cost_memo_[strategy];
    auto it = table.find(ending);
    if (it != table.end()) return it->second;
    std::vector<uint64_t> groups;
    CollectPicks(picks, pick, &groups);
    double value = CallCost(ending, groups, strategy);
    table.emplace(ending, value);
    return value;
  }

  /*! \brief Memoised cost of merging the ops of ``mask`` into one kernel. */
  double MergeCost(uint64_t mask) {
    ++cost_requests_;
    auto& table = cost_memo_[kMerge];
    auto it = table.find(mask);
    if (it != table.end()) return it->second;
    double value = CallCost(mask, {mask}, kMerge);
    table.emplace(mask, value);
    return value;
  }

  /*! \brief Ask the Python cost model; rejects negative and NaN answers. */
  double CallCost(uint64_t mask, const std::vector<uint64_t>& groups, Strategy strategy) {
    // A Shape arrives in Python as a tuple subclass: much cheaper to read than an Array.
    std::vector<int64_t> gs;
    gs.reserve(groups.size());
    for (uint64_t g : groups) gs.push_back(FromMask(g));
    double value =
        cost_fn_(FromMask(mask), ffi::Shape(std::move(gs)), ffi::String(StrategyName(strategy)))
            .cast<double>();
    if (!(value >= 0.0)) {
      TVM_FFI_THROW(ValueError) << "cost callback returned " << value << " for the "
                                << StrategyName(strategy) << " stage with mask " << mask
                                << "; costs must be non-negative numbers";
    }
    return value;
  }

  /*! \brief Memoised merge predicate. */
  bool Mergeable(uint64_t mask) {
    auto it = merge_ok_.find(mask);
    if (it != merge_ok_.end()) return it->second;
    bool ok = merge_fn_.value()(FromMask(mask)).cast<bool>();
    merge_ok_.emplace(mask, ok);
    return ok;
  }

  int n_;
  std::vector<uint64_t> desc_;
  int64_t r_;
  int64_t s_;
  bool merge_;
  bool singletons_only_;
  ffi::Function cost_fn_;
  ffi::Optional<ffi::Function> merge_fn_;
  std::unordered_map<uint64_t, Choice> memo_;
  std::vector<uint64_t> group_pool_;
  std::unordered_map<uint64_t, double> cost_memo_[2];
  std::unordered_map<uint64_t, bool> merge_ok_;
  int64_t transitions_ = 0;
  int64_t cost_requests_ = 0;
};

/*!
 * \brief Run the IOS DP over one part (``ios_tvm.search.solve_part``).
 *
 * \param n Number of ops of the part (1..64); local op ids are 0..n-1 in topological order.
 * \param desc Local strict-descendant mask of each op (bits > i only), as int64 bit patterns.
 * \param max_group_size IOS's r: most ops in one group.
 * \param max_groups IOS's s: most groups in one concurrent stage.
 * \param concurrent Whether the concurrent strategy is enabled; without it the only non-merge
 *   endings are single ops (as ``_PartSearch.singletons_only = not concurrent``).
 * \param merge Whether merge stages are enabled (needs ``merge_fn``).
 * \param singletons_only Restrict non-merge endings to single ops even when ``concurrent``.
 * \param cost_fn ``(mask, group_masks, strategy) -> seconds``; called once per distinct
 *   (mask, strategy).
 * \param merge_fn ``(mask) -> bool``: may the ops of ``mask`` merge into one kernel; called once
 *   per distinct mask. May be None when ``merge`` is false.
 * \return ``[total, states, transitions, cost_requests, cost_callbacks, stages]`` where stages is
 *   a list, first to last, of ``[strategy, [group masks]]``.
 */
ffi::Array<ffi::Any> SolvePart(int64_t n, ffi::Array<int64_t> desc, int64_t max_group_size,
                               int64_t max_groups, bool concurrent, bool merge,
                               bool singletons_only, ffi::Function cost_fn,
                               ffi::Optional<ffi::Function> merge_fn) {
  if (n < 1 || n > kMaxOps) {
    TVM_FFI_THROW(ValueError) << "n must be in 1.." << kMaxOps << ", got " << n;
  }
  if (static_cast<int64_t>(desc.size()) != n) {
    TVM_FFI_THROW(ValueError) << "desc must have n = " << n << " masks, got " << desc.size();
  }
  if (max_group_size < 1) {
    TVM_FFI_THROW(ValueError) << "max_group_size must be >= 1, got " << max_group_size;
  }
  if (max_groups < 1) {
    TVM_FFI_THROW(ValueError) << "max_groups must be >= 1, got " << max_groups;
  }
  if (merge && !merge_fn.has_value()) {
    TVM_FFI_THROW(ValueError) << "merge=True needs a merge predicate, got None";
  }
  std::vector<uint64_t> masks(n);
  for (int64_t i = 0; i < n; ++i) {
    uint64_t m = ToMask(desc[i]);
    // Descendants of op i have larger local ids, all below n.
    uint64_t allowed = (i + 1 >= kMaxOps ? 0 : ~uint64_t{0} << (i + 1));
    if (n < kMaxOps) allowed &= (uint64_t{1} << n) - 1;
    if (m & ~allowed) {
      TVM_FFI_THROW(ValueError) << "desc[" << i << "] = " << m << " names ops outside " << i + 1
                                << ".." << n - 1
                                << "; op ids must be topological and local to the part";
    }
    masks[i] = m;
  }
  PartSearch search(std::move(masks), max_group_size, max_groups, merge,
                    singletons_only || !concurrent, std::move(cost_fn), std::move(merge_fn));
  return search.Run();
}

}  // namespace
}  // namespace ios_tvm

TVM_FFI_STATIC_INIT_BLOCK() {
  namespace refl = tvm::ffi::reflection;
  refl::GlobalDef().def("ios_tvm.search.solve_part", ios_tvm::SolvePart,
                        "Run the IOS DP over one part of at most 64 ops (see ios_dp.cc).");
}
