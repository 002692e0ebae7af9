// See buffer_cache.h.
#include "buffer_cache.h"

#include <cstdlib>
#include <mutex>
#include <vector>

#if defined(__linux__)
#include <pthread.h>
#include <sys/mman.h>
#define KDK_HAVE_MMAP 1
#else
#define KDK_HAVE_MMAP 0
#endif

namespace kdkernels::cpu {
namespace {

constexpr size_t kHugePage = size_t(2) << 20;
constexpr size_t kPage = 4096;

size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

int64_t limit_from_env() {
  const char* v = std::getenv("KDKERNELS_CPU_CACHE_MB");
  if (v == nullptr || *v == '\0') return int64_t(512) << 20;
  char* end = nullptr;
  const long long mb = std::strtoll(v, &end, 10);
  TORCH_CHECK(end != v && *end == '\0' && mb >= 0,
              "KDKERNELS_CPU_CACHE_MB must be a non-negative integer (MiB), got '", v, "'");
  return static_cast<int64_t>(mb) << 20;
}

#if KDK_HAVE_MMAP
// A 2 MiB aligned anonymous mapping of `bytes` (a multiple of 4 KiB), advised for huge pages.
void* map_block(size_t bytes) {
  void* raw = mmap(nullptr, bytes + kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  const uintptr_t start = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = round_up(start, kHugePage);
  if (aligned > start) munmap(raw, aligned - start);
  const uintptr_t tail = aligned + bytes, end = start + bytes + kHugePage;
  if (end > tail) munmap(reinterpret_cast<void*>(tail), end - tail);
  void* p = reinterpret_cast<void*>(aligned);
#ifdef MADV_HUGEPAGE
  madvise(p, bytes, MADV_HUGEPAGE);  // advisory: ignored where THP is off
#endif
  return p;
}

struct Block {
  void* ptr;
  size_t bytes;
};

class BufferCache {
 public:
  BufferCache() : limit_(limit_from_env()) {}

  void* acquire(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (size_t i = free_.size(); i-- > 0;) {  // most recently freed first
        if (free_[i].bytes == bytes) {
          void* p = free_[i].ptr;
          free_.erase(free_.begin() + static_cast<std::ptrdiff_t>(i));
          cached_ -= bytes;
          ++hits_;
          return p;
        }
      }
      ++misses_;
    }
    void* p = map_block(bytes);
    if (p == nullptr) {  // out of address space or memory: give back what is kept, try once more
      release();
      p = map_block(bytes);
    }
    return p;
  }

  void give_back(void* p, size_t bytes) {
    std::vector<Block> evicted;
    {
      std::lock_guard<std::mutex> lock(mu_);
      free_.push_back({p, bytes});
      cached_ += bytes;
      size_t drop = 0;  // least recently freed first
      while (cached_ > limit_ && drop < free_.size()) {
        cached_ -= free_[drop].bytes;
        evicted.push_back(free_[drop++]);
      }
      free_.erase(free_.begin(), free_.begin() + static_cast<std::ptrdiff_t>(drop));
    }
    for (const Block& b : evicted) munmap(b.ptr, b.bytes);
  }

  void release() {
    std::vector<Block> all;
    {
      std::lock_guard<std::mutex> lock(mu_);
      all.swap(free_);
      cached_ = 0;
    }
    for (const Block& b : all) munmap(b.ptr, b.bytes);
  }

  // fork() while another thread holds mu_ would leave the child's copy locked forever: the
  // pthread_atfork handlers take it around the fork (the child inherits the kept mappings).
  void lock_for_fork() { mu_.lock(); }
  void unlock_after_fork() { mu_.unlock(); }

  BufferCacheInfo info() {
    std::lock_guard<std::mutex> lock(mu_);
    return {static_cast<int64_t>(limit_), static_cast<int64_t>(cached_),
            static_cast<int64_t>(free_.size()), hits_, misses_};
  }

 private:
  std::mutex mu_;
  std::vector<Block> free_;
  size_t limit_;
  size_t cached_ = 0;
  int64_t hits_ = 0, misses_ = 0;
};

// Never destroyed: tensors freed during interpreter shutdown still find it.
BufferCache& cache() {
  static BufferCache* c = [] {
    auto* made = new BufferCache();
    pthread_atfork([] { cache().lock_for_fork(); }, [] { cache().unlock_after_fork(); },
                   [] { cache().unlock_after_fork(); });
    return made;
  }();
  return *c;
}

void free_block(void* ctx) {
  auto* b = static_cast<Block*>(ctx);
  cache().give_back(b->ptr, b->bytes);
  delete b;
}
#endif

}  // namespace

at::Tensor empty_large(at::IntArrayRef sizes, const at::TensorOptions& options) {
#if KDK_HAVE_MMAP
  const int64_t numel = c10::multiply_integers(sizes);
  const size_t nbytes = static_cast<size_t>(numel) * options.dtype().itemsize();
  if (options.device().is_cpu() && static_cast<int64_t>(nbytes) >= kMinCachedBytes) {
    // Page granularity: a 2 MiB-aligned mapping of a few MB gets huge pages for its whole 2 MiB
    // chunks and 4 KiB pages for the tail, so resident memory stays the size asked for.
    const size_t bytes = round_up(nbytes, kPage);
    if (void* p = cache().acquire(bytes)) {
      return at::for_blob(p, sizes)
          .context(new Block{p, bytes}, &free_block)
          .options(options)
          .make_tensor();
    }
  }
#endif
  return at::empty(sizes, options);
}

BufferCacheInfo buffer_cache_info() {
#if KDK_HAVE_MMAP
  return cache().info();
#else
  return {0, 0, 0, 0, 0};
#endif
}

void release_buffer_cache() {
#if KDK_HAVE_MMAP
  cache().release();
#endif
}

}  // namespace kdkernels::cpu
