// Adam's update of one f32 variable in three passes over memory (stock ops take about a dozen,
// each a full read and write): each moment, then the variable in place from both. The
// gradient's clipping factor is read from device memory, so clipping needs no wait for the
// GPU. The same f32 arithmetic as the CPU's fused Adam (src/train/optim.rs).
//
// Launched in blocks of ADAM_THREADS; each thread strides over the elements past the grid. As
// in topk.cu, only what tests/cuda_on_cpu emulates.

#define ADAM_THREADS 256

// out <- beta * mom + keep * (s * g), or with `square`, + keep * (s * g)^2: the first moment
// (beta1, 1 - beta1) or the second (beta2, 1 - beta2). `scale` points at s.
extern "C" __global__ void adam_moment_f32(const float *mom, const float *g, const float *scale,
                                           float *out, unsigned n, float beta, float keep,
                                           unsigned square) {
    const float s = *scale;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)blockDim.x * gridDim.x) {
        const float gi = g[i] * s;
        out[i] = mom[i] * beta + (square ? gi * gi : gi) * keep;
    }
}

// p <- p - m / (sqrt(v * inv_bc2) + eps) * step, with step = lr / (1 - beta1^t) and
// inv_bc2 = 1 / (1 - beta2^t).
extern "C" __global__ void adam_step_f32(float *p, const float *m, const float *v, unsigned n,
                                         float step, float inv_bc2, float eps) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)blockDim.x * gridDim.x)
        p[i] -= m[i] / (sqrtf(v[i] * inv_bc2) + eps) * step;
}
