// A size-keyed caching allocator for torch's CPU tensors (phasetorch/allocator.py loads it).
//
// Why: a solver loop frees and re-allocates tensors of the same few sizes every iteration. glibc
// serves torch's posix_memalign(64) requests from a heap that fragments under that pattern (a
// freed block of exactly the next request's size is often not reused), so fresh pages keep
// being faulted in and zeroed for tens of iterations (results/heap_growth.md). This allocator
// keeps freed blocks of at least `min_bytes` in free lists keyed by their page count and hands
// one back to the next request of that size (or of a size at most 1/8 smaller), so after the
// first iteration no large allocation faults a page.
//
// Blocks: large requests are rounded up to whole pages and mapped with mmap (page aligned, so
// torch's 64-byte alignment holds); small requests go to posix_memalign(64) and free as before.
// One deleter serves both (the map of live large blocks tells them apart).
// Bound: the cache holds at most as many bytes as the most in use at once since it was installed
// (`high water`): a freed block is always kept, and the least recently freed blocks are unmapped
// to make room for it; on a miss, the least recently freed are unmapped while in-use + cached +
// request would exceed twice max(high water, in-use + request): the cache never maps more than
// twice the block's peak, and a loop asking for the same sizes every iteration stops mapping
// after its first round. ptc_uninstall() unmaps everything cached.
//
// Installed with c10::SetCPUAllocator while phasetorch.allocator.retained() is in force and the
// previous allocator restored after; blocks allocated meanwhile are unmapped when freed later.
// Memory taken here is not reported to torch's profiler.
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace {

constexpr int kAbiVersion = 1;
constexpr size_t kPage = 4096;

struct Stats {
  uint64_t in_use = 0;      // bytes of live large blocks
  uint64_t cached = 0;      // bytes in the free lists
  uint64_t high_water = 0;  // most in_use ever
  uint64_t hits = 0, misses = 0, evictions = 0, mapped = 0, unmapped = 0;
};

class CachingCPUAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    void* p = alloc(n);
    return {p, p, &Delete, c10::Device(c10::DeviceType::CPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &Delete; }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    if (count) std::memcpy(dest, src, count);
  }

  static void Delete(void* p);

  void* alloc(size_t n);
  void release(void* p);
  void trim();                       // unmap everything cached (not counted as evictions)
  bool active = false;               // free large blocks into the cache (else unmap them)
  size_t min_bytes = 1 << 20;        // smaller requests: posix_memalign
  std::mutex mu;
  Stats st;

 private:
  struct Cached {
    void* p;
    uint64_t stamp;                            // when it was freed (for least-recently-freed eviction)
  };
  using FreeMap = std::multimap<size_t, Cached>;
  FreeMap free_;                               // bytes -> block
  std::map<uint64_t, FreeMap::iterator> age_;  // stamp -> its entry in free_, oldest first
  uint64_t clock_ = 0;
  std::unordered_map<void*, size_t> live_;     // large blocks handed out, by address
  void take(FreeMap::iterator it);             // remove a cached block from both indexes
  void evict_until(uint64_t limit, bool count);  // unmap cached blocks, least recently freed first
};

CachingCPUAllocator g_alloc;
c10::Allocator* g_previous = nullptr;

void* CachingCPUAllocator::alloc(size_t n) {
  if (n < min_bytes) {
    void* p = nullptr;
    if (n == 0) return nullptr;
    if (posix_memalign(&p, 64, n) != 0 || p == nullptr) {
      TORCH_CHECK_WITH(OutOfMemoryError, false, "phasetorch CPU cache: out of memory allocating ", n, " bytes");
    }
    return p;
  }
  size_t bytes = (n + kPage - 1) / kPage * kPage;
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = free_.lower_bound(bytes);
    if (it != free_.end() && it->first - bytes <= bytes / 8) {
      void* p = it->second.p;
      size_t got = it->first;
      take(it);
      st.in_use += got;
      st.hits++;
      if (st.in_use > st.high_water) st.high_water = st.in_use;
      live_.emplace(p, got);
      return p;
    }
    st.misses++;
    uint64_t limit = 2 * std::max<uint64_t>(st.high_water, st.in_use + bytes);
    if (st.in_use + st.cached + bytes > limit) evict_until(limit - bytes - st.in_use, true);
    st.in_use += bytes;  // reserved before the lock is let go, so concurrent misses see each other
    if (st.in_use > st.high_water) st.high_water = st.in_use;
  }
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    {
      std::lock_guard<std::mutex> lock(mu);
      evict_until(0, true);  // give back all cached memory and try once more
    }
    p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      {
        std::lock_guard<std::mutex> lock(mu);
        st.in_use -= bytes;
      }
      TORCH_CHECK_WITH(OutOfMemoryError, false, "phasetorch CPU cache: out of memory allocating ", n,
                       " bytes (mmap failed)");
    }
  }
  std::lock_guard<std::mutex> lock(mu);
  st.mapped++;
  live_.emplace(p, bytes);
  return p;
}

void CachingCPUAllocator::take(FreeMap::iterator it) {
  st.cached -= it->first;
  age_.erase(it->second.stamp);
  free_.erase(it);
}

void CachingCPUAllocator::evict_until(uint64_t limit, bool count) {
  while (st.cached > limit && !age_.empty()) {
    auto it = age_.begin()->second;
    munmap(it->second.p, it->first);
    if (count) st.evictions++;
    st.unmapped++;
    take(it);
  }
}

void CachingCPUAllocator::release(void* p) {
  if (p == nullptr) return;
  if (reinterpret_cast<uintptr_t>(p) % kPage == 0) {
    size_t bytes = 0;
    bool cache = false;
    {
      std::lock_guard<std::mutex> lock(mu);
      auto it = live_.find(p);
      if (it != live_.end()) {
        bytes = it->second;
        live_.erase(it);
        st.in_use -= bytes;
        cache = active;
        if (cache) {
          // keep the block just freed; make room by unmapping the least recently freed ones
          if (st.cached + bytes > st.high_water) evict_until(st.high_water - bytes, true);
          auto entry = free_.emplace(bytes, Cached{p, ++clock_});
          age_.emplace(clock_, entry);
          st.cached += bytes;
        } else {
          st.unmapped++;
        }
      }
    }
    if (bytes) {
      if (!cache) munmap(p, bytes);
      return;
    }
  }
  std::free(p);
}

void CachingCPUAllocator::trim() {
  std::lock_guard<std::mutex> lock(mu);
  evict_until(0, false);
}

void CachingCPUAllocator::Delete(void* p) { g_alloc.release(p); }

}  // namespace

extern "C" {

int ptc_abi_version() { return kAbiVersion; }

// Route torch's CPU allocations here, caching freed blocks of at least min_bytes. Returns 0, or 1
// when another allocator registered with a higher priority keeps the place (nothing changed then).
int ptc_install(uint64_t min_bytes) {
  std::lock_guard<std::mutex> lock(g_alloc.mu);
  c10::Allocator* current = c10::GetCPUAllocator();
  if (current != &g_alloc) {
    c10::SetCPUAllocator(&g_alloc, /*priority=*/0);      // torch's own CPU allocator registers at 0
    if (c10::GetCPUAllocator() != &g_alloc) return 1;
    g_previous = current;
  }
  g_alloc.min_bytes = min_bytes < kPage ? kPage : min_bytes;
  g_alloc.active = true;
  g_alloc.st.high_water = g_alloc.st.in_use;             // the cache bound follows this block's own peak
  return 0;
}

// Give torch its previous CPU allocator back and unmap every cached block (live blocks are
// unmapped when freed). Returns 0.
int ptc_uninstall() {
  {
    std::lock_guard<std::mutex> lock(g_alloc.mu);
    g_alloc.active = false;
    if (g_previous != nullptr && c10::GetCPUAllocator() == &g_alloc) {
      c10::SetCPUAllocator(g_previous, /*priority=*/0);
    }
  }
  g_alloc.trim();
  return 0;
}

// in_use, cached, high_water, hits, misses, evictions, mapped, unmapped (bytes / counts).
void ptc_stats(uint64_t* out) {
  std::lock_guard<std::mutex> lock(g_alloc.mu);
  const Stats& s = g_alloc.st;
  uint64_t v[8] = {s.in_use, s.cached, s.high_water, s.hits, s.misses, s.evictions, s.mapped, s.unmapped};
  std::memcpy(out, v, sizeof v);
}

}  // extern "C"
