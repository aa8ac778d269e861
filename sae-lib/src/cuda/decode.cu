// The sparse decoder of TopK-style SAEs and its backward: each input reads only the k decoder
// rows it selected, instead of stock ops' (batch, k, d_in) gathered copy of them.
//
//   forward:   out[b, :]  = Σ_i v[b, i] · W[idx[b, i], :]
//   backward:  gv[b, i]   = g[b, :] · W[idx[b, i], :]
//              gW[j, :]  += v[b, i] · g[b, :]   for every (b, i) with idx[b, i] = j
//
// Shapes: v, idx and gv (batch, k); W and gW (d_sae, d); out and g (batch, d); all contiguous,
// f32 values and u32 indices. As in topk.cu, only what tests/cuda_on_cpu emulates.

#define DECODE_THREADS 256

// Grid (batch, ceil(d / DECODE_THREADS)): a thread per output column; the row's values and
// indices are the same for the whole block, so they come from cache.
extern "C" __global__ void decode_rows_f32(const float *v, const unsigned *idx, const float *w,
                                           float *out, unsigned k, unsigned d) {
    const unsigned b = blockIdx.x, col = blockIdx.y * blockDim.x + threadIdx.x;
    if (col >= d) return;
    float acc = 0.0f;
    for (unsigned i = 0; i < k; ++i) {
        const float vi = v[(size_t)b * k + i];
        if (vi != 0.0f) acc += vi * w[(size_t)idx[(size_t)b * k + i] * d + col];
    }
    out[(size_t)b * d + col] = acc;
}

// Grid (batch · k): one block per selection, its dot product summed in shared memory. With
// `flat_at_zero`, a zero value's gradient is not read (the activation is flat there) and is
// left at zero, as on the CPU.
extern "C" __global__ void decode_grad_values_f32(const float *g, const unsigned *idx,
                                                  const float *w, const float *v, float *gv,
                                                  unsigned k, unsigned d, unsigned flat_at_zero) {
    __shared__ float part[DECODE_THREADS];
    const unsigned p = blockIdx.x, b = p / k, tid = threadIdx.x;
    if (flat_at_zero && v[p] == 0.0f) {
        if (tid == 0) gv[p] = 0.0f;
        return;
    }
    const float *gr = g + (size_t)b * d, *wr = w + (size_t)idx[p] * d;
    float acc = 0.0f;
    for (unsigned c = tid; c < d; c += blockDim.x) acc += gr[c] * wr[c];
    part[tid] = acc;
    __syncthreads();
    for (unsigned half = blockDim.x >> 1; half > 0; half >>= 1) {
        if (tid < half) part[tid] += part[tid + half];
        __syncthreads();
    }
    if (tid == 0) gv[p] = part[0];
}

// Grid (batch · k, ceil(d / DECODE_THREADS)), into a zeroed gW: atomic adds, since a feature
// chosen by many inputs in the batch gathers all their rows (summation order, and so the last
// bits, may differ between runs on a GPU).
extern "C" __global__ void decode_grad_weights_f32(const float *g, const float *v,
                                                   const unsigned *idx, float *gw, unsigned k,
                                                   unsigned d) {
    const unsigned p = blockIdx.x, col = blockIdx.y * blockDim.x + threadIdx.x;
    const float vp = v[p];
    if (col >= d || vp == 0.0f) return;
    atomicAdd(&gw[(size_t)idx[p] * d + col], vp * g[(size_t)(p / k) * d + col]);
}
