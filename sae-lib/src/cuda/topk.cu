// Each row's k largest values, as column indices, largest first: one thread block per row.
//
// First a shortcut for small k: each thread's largest value, then the k-th largest of those,
// is a threshold no higher than the row's k-th largest value (at least k values reach it), so
// every value at or above it is a candidate. For a random row of 16,384 and k = 32 that is
// about 33 of them: two reads of the row, a handful of atomics. When more than fit in shared
// memory pass (many equal values), a radix select finds the k-th largest value in four
// passes over the row (one byte of the value's ordered bits per pass, a 256-bin histogram in
// shared memory), then one more pass gathers the values above it and as many of those equal
// to it as are needed (the lowest columns first). Either way a bitonic sort in shared memory
// orders the candidates and the first k are kept. The row is never sorted (stock ops sort it
// in blocks of 1,024 columns, twice over); scripts/gpu/check.sh's TopK rows with and without
// the kernels measure what that is worth on a GPU.
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
    __shared__ unsigned s_prefix, s_need, s_ties, s_count, s_taken, s_tau;
    const unsigned tid = threadIdx.x, threads = blockDim.x;
    const float *row = x + (size_t)blockIdx.x * n;

    if (tid == 0) {
        s_prefix = 0;
        s_need = k;
        s_count = 0;
        s_taken = 0;
    }
    // 1. The shortcut, worth it while a few maxima per candidate are likely (k <= threads / 4).
    unsigned m = TOPK_MAX_K + 1;  // how many candidates; more than fit: none yet
    if (4 * k <= threads) {
        unsigned local = 0;  // below every float's key but a negative NaN's, which equals it
        for (unsigned i = tid; i < n; i += threads) {
            const unsigned key = order_key(row[i]);
            local = key > local ? key : local;
        }
        scan[tid] = local;
        __syncthreads();
        // The thread whose maximum ranks k-th (ties by thread) publishes it.
        unsigned rank = 0;
        for (unsigned j = 0; j < threads; ++j)
            rank += scan[j] > local || (scan[j] == local && j < tid);
        if (rank == k - 1) s_tau = local;
        __syncthreads();
        const unsigned tau = s_tau;
        for (unsigned i = tid; i < n; i += threads) {
            const unsigned key = order_key(row[i]);
            if (key >= tau) {
                const unsigned slot = atomicAdd(&s_count, 1u);
                if (slot < TOPK_MAX_K) {
                    cand_key[slot] = key;
                    cand_idx[slot] = i;
                }
            }
        }
        __syncthreads();
        m = s_count;
        __syncthreads();  // every thread has read the count before it is reset
        if (m > TOPK_MAX_K && tid == 0) s_count = 0;
    }

    if (m > TOPK_MAX_K) {
        m = k;
        // 2. The k-th largest key, a byte at a time from the top; s_need counts how many of
        // the keys sharing the prefix found so far are still to be taken.
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

        // 3. Everything above the k-th key (and its equals too when all of them are needed),
        // in whatever order the atomics give: the sort below fixes the order.
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
    }
    __syncthreads();

    // 4. Bitonic sort of the m candidates, padded to a power of two with entries that sort
    // last; the first k are the answer.
    unsigned width = 1;
    while (width < m) width <<= 1;
    for (unsigned i = m + tid; i < width; i += threads) {
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
