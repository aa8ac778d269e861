// Each row's k largest values, as column indices, largest first: one thread block per row.
//
// A radix select finds the k-th largest value in four passes over the row (one byte of the
// value's ordered bits per pass, a 256-bin histogram in shared memory), then one more pass
// gathers the values above it and as many of those equal to it as are needed (the lowest
// columns first), and a bitonic sort in shared memory orders those k. The row is read five
// times and never sorted (stock ops sort it in blocks of 1,024 columns, twice over); whether
// that is faster on a GPU is what scripts/gpu/check.sh's TopK rows with and without the
// kernels measure.
//
// Kept to CUDA features the CPU emulation in tests/cuda_on_cpu implements (no warp
// intrinsics): blockIdx, threadIdx, blockDim, __shared__ arrays, __syncthreads, atomicAdd.

#define TOPK_THREADS 256
#define TOPK_MAX_K 1024

// The float's bits, turned so that unsigned order is the floats' order.
__device__ __forceinline__ unsigned order_key(float f) {
    unsigned u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Whether (ka, ia) comes before (kb, ib): larger value first, then the lower column.
__device__ __forceinline__ bool before(unsigned ka, unsigned ia, unsigned kb, unsigned ib) {
    return ka > kb || (ka == kb && ia < ib);
}

// x: (rows, n) f32, contiguous; out: (rows, k) u32. 1 <= k <= min(n, TOPK_MAX_K); launched
// with TOPK_THREADS threads per block and one block per row.
extern "C" __global__ void topk_rows_f32(const float *x, unsigned *out, unsigned n, unsigned k) {
    __shared__ unsigned hist[256];
    __shared__ unsigned scan[TOPK_THREADS];
    __shared__ unsigned cand_key[TOPK_MAX_K];
    __shared__ unsigned cand_idx[TOPK_MAX_K];
    __shared__ unsigned s_prefix, s_need, s_ties, s_count, s_taken;
    const unsigned tid = threadIdx.x, threads = blockDim.x;
    const float *row = x + (size_t)blockIdx.x * n;

    // 1. The k-th largest key, a byte at a time from the top; s_need counts how many of the
    // keys sharing the prefix found so far are still to be taken.
    if (tid == 0) {
        s_prefix = 0;
        s_need = k;
        s_count = 0;
        s_taken = 0;
    }
    for (int shift = 24; shift >= 0; shift -= 8) {
        const unsigned high = shift == 24 ? 0u : 0xffffffffu << (shift + 8);
        for (unsigned i = tid; i < 256; i += threads) hist[i] = 0;
        __syncthreads();
        const unsigned prefix = s_prefix;
        for (unsigned i = tid; i < n; i += threads) {
            const unsigned key = order_key(row[i]);
            if ((key & high) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
        }
        __syncthreads();
        if (tid == 0) {
            unsigned need = s_need, digit = 255;
            for (; digit > 0 && hist[digit] < need; --digit) need -= hist[digit];
            s_prefix = prefix | (digit << shift);
            s_need = need;
            s_ties = hist[digit];
        }
        __syncthreads();
    }
    const unsigned kth = s_prefix, need = s_need, ties = s_ties, above = k - need;

    // 2. Everything above the k-th key (and its equals too when all of them are needed), in
    // whatever order the atomics give: the sort below fixes the order.
    const bool all_ties = ties == need;
    for (unsigned i = tid; i < n; i += threads) {
        const unsigned key = order_key(row[i]);
        if (key > kth || (all_ties && key == kth)) {
            const unsigned slot = atomicAdd(&s_count, 1u);
            cand_key[slot] = key;
            cand_idx[slot] = i;
        }
    }
    // More equals than places: the lowest columns, found tile by tile with a prefix sum.
    if (!all_ties) {
        for (unsigned base = 0; base < n; base += threads) {
            const unsigned i = base + tid;
            const unsigned flag = i < n && order_key(row[i]) == kth;
            scan[tid] = flag;
            __syncthreads();
            for (unsigned off = 1; off < threads; off <<= 1) {
                const unsigned add = tid >= off ? scan[tid - off] : 0;
                __syncthreads();
                scan[tid] += add;
                __syncthreads();
            }
            const unsigned rank = s_taken + scan[tid] - flag;
            if (flag && rank < need) {
                cand_key[above + rank] = kth;
                cand_idx[above + rank] = i;
            }
            __syncthreads();
            if (tid == threads - 1) s_taken += scan[tid];
            __syncthreads();
            if (s_taken >= need) break;
        }
    }
    __syncthreads();

    // 3. Bitonic sort of the k candidates, padded to a power of two with entries that sort last.
    unsigned width = 1;
    while (width < k) width <<= 1;
    for (unsigned i = k + tid; i < width; i += threads) {
        cand_key[i] = 0;
        cand_idx[i] = 0xffffffffu;
    }
    __syncthreads();
    for (unsigned size = 2; size <= width; size <<= 1) {
        for (unsigned stride = size >> 1; stride > 0; stride >>= 1) {
            for (unsigned i = tid; i < width; i += threads) {
                const unsigned j = i ^ stride;
                if (j > i) {
                    const bool forward = (i & size) == 0;
                    if (forward != before(cand_key[i], cand_idx[i], cand_key[j], cand_idx[j])) {
                        const unsigned tk = cand_key[i], ti = cand_idx[i];
                        cand_key[i] = cand_key[j];
                        cand_idx[i] = cand_idx[j];
                        cand_key[j] = tk;
                        cand_idx[j] = ti;
                    }
                }
            }
            __syncthreads();
        }
    }
    for (unsigned i = tid; i < k; i += threads) out[(size_t)blockIdx.x * k + i] = cand_idx[i];
}
