// The CUDA unit of the extension. It only reports the toolkit it was compiled with for now;
// the CUDA loss kernels register themselves beside it (TORCH_LIBRARY_IMPL(kdkernels, CUDA, m)).
#include <cuda_runtime_api.h>

namespace kdkernels::cuda {
int compiled_cuda_version() { return CUDART_VERSION; }
}  // namespace kdkernels::cuda
