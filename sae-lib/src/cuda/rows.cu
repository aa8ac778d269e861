// Sums over selected rows of a table: the sparse decoder of TopK-style SAEs, the sparse
// encoder's backward, and the decoder's backward. Each input reads only the k table rows it
// selected, instead of stock ops' (batch, k, d) gathered copy of them or a dense matmul.
//
//   sum_rows:     out[b, :]  = Σ_i c[b, i] · T[idx[b, i], :]
//   dot_rows:     out[b, i]  = g[b, :] · T[idx[b, i], :]
//   scatter_rows: out[j, :] += c[b, i] · g[b, :]   for every (b, i) with idx[b, i] = j
//
// The decoder (T = W_dec) is sum_rows forward, dot_rows and scatter_rows backward; the encoder
// at the selected features (T = W_encᵀ, g = the input) is dot_rows forward (TopK has the
// values from its dense matmul already), sum_rows and scatter_rows backward.
//
// Shapes: c, idx and dot_rows' out (batch, k); T and scatter_rows' out (rows, d); g and
// sum_rows' out (batch, d); all contiguous, f32 values and u32 indices. As in topk.cu, only
// what tests/cuda_on_cpu emulates.

#define ROWS_THREADS 256

// Grid (batch, ceil(d / ROWS_THREADS)): a thread per output column; the row's coefficients and
// indices are the same for the whole block, so they come from cache.
extern "C" __global__ void sum_rows_f32(const float *c, const unsigned *idx, const float *t,
                                        float *out, unsigned k, unsigned d) {
    const unsigned b = blockIdx.x, col = blockIdx.y * blockDim.x + threadIdx.x;
    if (col >= d) return;
    float acc = 0.0f;
    for (unsigned i = 0; i < k; ++i) {
        const float ci = c[(size_t)b * k + i];
        if (ci != 0.0f) acc += ci * t[(size_t)idx[(size_t)b * k + i] * d + col];
    }
    out[(size_t)b * d + col] = acc;
}

// Grid (batch · k): one block per selection, its dot product summed in shared memory. With
// `flat_at_zero`, where c is zero (the activation is flat there) the dot is not read and is
// left at zero, as on the CPU.
extern "C" __global__ void dot_rows_f32(const float *g, const unsigned *idx, const float *t,
                                        const float *c, float *out, unsigned k, unsigned d,
                                        unsigned flat_at_zero) {
    __shared__ float part[ROWS_THREADS];
    const unsigned p = blockIdx.x, b = p / k, tid = threadIdx.x;
    if (flat_at_zero && c[p] == 0.0f) {
        if (tid == 0) out[p] = 0.0f;
        return;
    }
    const float *gr = g + (size_t)b * d, *tr = t + (size_t)idx[p] * d;
    float acc = 0.0f;
    for (unsigned col = tid; col < d; col += blockDim.x) acc += gr[col] * tr[col];
    part[tid] = acc;
    __syncthreads();
    for (unsigned half = blockDim.x >> 1; half > 0; half >>= 1) {
        if (tid < half) part[tid] += part[tid + half];
        __syncthreads();
    }
    if (tid == 0) out[p] = part[0];
}

// Grid (batch · k, ceil(d / ROWS_THREADS)), into a zeroed out: atomic adds, since a feature
// chosen by many inputs in the batch gathers all their rows (summation order, and so the last
// bits, may differ between runs on a GPU).
extern "C" __global__ void scatter_rows_f32(const float *g, const float *c, const unsigned *idx,
                                            float *out, unsigned k, unsigned d) {
    const unsigned p = blockIdx.x, col = blockIdx.y * blockDim.x + threadIdx.x;
    const float cp = c[p];
    if (col >= d || cp == 0.0f) return;
    atomicAdd(&out[(size_t)idx[p] * d + col], cp * g[(size_t)(p / k) * d + col]);
}
