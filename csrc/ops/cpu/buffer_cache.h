// Large CPU output buffers (the student gradient the fused kernels write in the forward pass, and
// reduction='none' outputs) from a small cache of huge-page-advised anonymous mappings.
//
// Why: a fresh multi-MB tensor from glibc is a new mmap whose every 4 KiB page faults on first
// write (measured: ~4x the cost of the write itself at FPN P3 sizes). The cache hands back the
// mapping freed by the previous training step (no faults), and new mappings are 2 MiB aligned
// with MADV_HUGEPAGE (512x fewer faults when transparent huge pages are enabled).
//
// Buffers below kMinCachedBytes, and every buffer on non-Linux systems, come from at::empty.
// Freed mappings are kept up to KDKERNELS_CPU_CACHE_MB (default 512; 0 disables keeping, the
// huge-page mappings are still used), least recently freed evicted first;
// release_buffer_cache() unmaps everything kept.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace kdkernels::cpu {

constexpr int64_t kMinCachedBytes = int64_t(1) << 20;

// Uninitialised contiguous tensor of `sizes` with `options` (a CPU dtype/device).
at::Tensor empty_large(at::IntArrayRef sizes, const at::TensorOptions& options);

inline at::Tensor empty_large_like(const at::Tensor& like) {
  return empty_large(like.sizes(), like.options());
}

struct BufferCacheInfo {
  int64_t limit_bytes;   // KDKERNELS_CPU_CACHE_MB
  int64_t cached_bytes;  // freed mappings kept for reuse (resident memory)
  int64_t cached_blocks;
  int64_t hits;          // allocations served from the cache
  int64_t misses;        // allocations that mapped new memory
};

BufferCacheInfo buffer_cache_info();
void release_buffer_cache();

}  // namespace kdkernels::cpu
