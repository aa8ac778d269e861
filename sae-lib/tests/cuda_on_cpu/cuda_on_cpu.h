// Just enough of CUDA to run sae-lib's kernels on the CPU, so `cargo test` checks their logic
// on a machine without a GPU (tests/it/cuda_kernels.rs compiles them with this header).
//
// A launch runs its blocks one after another, each as blockDim.x OS threads: a `__shared__`
// variable becomes a function-level static, which one block at a time may treat as its own,
// and __syncthreads is a barrier over the block's threads (a thread that has returned no
// longer holds the others up). One dimension of threads per block; grids may use x and y.
#pragma once
#include <atomic>
#include <barrier>
#include <math.h>  // sqrtf and the rest of the device math library
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;
inline std::barrier<> *block_barrier = nullptr;

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static

inline void __syncthreads() { block_barrier->arrive_and_wait(); }
inline unsigned __float_as_uint(float f) {
    unsigned u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}
template <class T> T atomicAdd(T *p, T v) { return std::atomic_ref<T>(*p).fetch_add(v); }

// kernel<<<grid, block>>>(args...)
template <class... P, class... A> void launch(void (*kernel)(P...), dim3 grid, dim3 block, A... args) {
    gridDim = grid;
    blockDim = block;
    for (unsigned by = 0; by < grid.y; ++by)
        for (unsigned bx = 0; bx < grid.x; ++bx) {
            std::barrier<> sync(block.x);
            block_barrier = &sync;
            std::vector<std::thread> threads;
            for (unsigned t = 0; t < block.x; ++t)
                threads.emplace_back([&, t] {
                    threadIdx = {t, 0, 0};
                    blockIdx = {bx, by, 0};
                    kernel(args...);
                    sync.arrive_and_drop();
                });
            for (auto &th : threads) th.join();
        }
}
