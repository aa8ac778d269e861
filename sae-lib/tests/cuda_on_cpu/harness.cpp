// sae-lib's CUDA kernels, run on the CPU through cuda_on_cpu.h, against plain C++ references
// (a full sort for top-k, loops for the row sums and Adam), launched as src/cuda/mod.rs launches them.
// Prints each failure and exits non-zero on any.
#include "cuda_on_cpu.h"

#include "adam.cu"
#include "rows.cu"
#include "topk.cu"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>

static int failures = 0;
#define CHECK(cond, ...)                                                                          \
    do {                                                                                          \
        if (!(cond)) {                                                                            \
            std::printf("FAIL: " __VA_ARGS__);                                                    \
            std::printf("\n");                                                                    \
            ++failures;                                                                           \
        }                                                                                         \
    } while (0)

// rows of n values: kind 0 normal, 1 mostly zeros (many ties at the k-th), 2 all one value,
// 3 small integers (ties everywhere), with a few -inf.
static std::vector<float> rows_of(unsigned rows, unsigned n, int kind, std::mt19937 &rng) {
    std::normal_distribution<float> normal;
    std::uniform_int_distribution<int> small(-3, 3);
    std::vector<float> x(size_t(rows) * n);
    for (auto &v : x) {
        switch (kind) {
        case 0: v = normal(rng); break;
        case 1: v = rng() % 8 == 0 ? std::fabs(normal(rng)) : 0.0f; break;
        case 2: v = 1.5f; break;
        default: v = float(small(rng)); break;
        }
        if (kind != 2 && rng() % 97 == 0) v = -INFINITY;
    }
    return x;
}

static void check_topk(unsigned rows, unsigned n, unsigned k, int kind, std::mt19937 &rng) {
    auto x = rows_of(rows, n, kind, rng);
    std::vector<unsigned> out(size_t(rows) * k, 0xdeadbeef);
    launch(topk_rows_f32, {rows}, {TOPK_THREADS}, x.data(), out.data(), n, k);
    for (unsigned r = 0; r < rows; ++r) {
        const float *row = &x[size_t(r) * n];
        std::vector<unsigned> order(n);
        std::iota(order.begin(), order.end(), 0u);
        std::stable_sort(order.begin(), order.end(),
                         [&](unsigned a, unsigned b) { return row[a] > row[b]; });
        for (unsigned i = 0; i < k; ++i) {
            const unsigned got = out[size_t(r) * k + i];
            CHECK(got == order[i], "topk n=%u k=%u kind=%d row %u place %u: got %u want %u", n, k,
                  kind, r, i, got, order[i]);
            if (got != order[i]) return;
        }
    }
}

static bool close(float a, float b) { return std::fabs(a - b) <= 1e-4f * (1.0f + std::fabs(b)); }

static void check_rows(unsigned batch, unsigned k, unsigned d_sae, unsigned d, bool flat,
                         std::mt19937 &rng) {
    std::normal_distribution<float> normal;
    std::vector<float> v(size_t(batch) * k), w(size_t(d_sae) * d), g(size_t(batch) * d);
    std::vector<unsigned> idx(v.size());
    for (auto &e : v) e = rng() % 4 == 0 ? 0.0f : normal(rng);
    for (auto &e : idx) e = rng() % d_sae;  // repeats: many inputs share a feature
    for (auto &e : w) e = normal(rng);
    for (auto &e : g) e = normal(rng);
    const unsigned col_blocks = (d + ROWS_THREADS - 1) / ROWS_THREADS;

    std::vector<float> out(size_t(batch) * d, NAN), gv(v.size(), NAN), gw(w.size(), 0.0f);
    launch(sum_rows_f32, {batch, col_blocks}, {ROWS_THREADS}, v.data(), idx.data(),
           w.data(), out.data(), k, d);
    launch(dot_rows_f32, {batch * k}, {ROWS_THREADS}, g.data(), idx.data(), w.data(),
           v.data(), gv.data(), k, d, unsigned(flat));
    launch(scatter_rows_f32, {batch * k, col_blocks}, {ROWS_THREADS}, g.data(), v.data(),
           idx.data(), gw.data(), k, d);

    std::vector<float> want_gw(w.size(), 0.0f);
    for (unsigned b = 0; b < batch; ++b) {
        for (unsigned c = 0; c < d; ++c) {
            float acc = 0.0f;
            for (unsigned i = 0; i < k; ++i)
                acc += v[b * k + i] * w[size_t(idx[b * k + i]) * d + c];
            CHECK(close(out[size_t(b) * d + c], acc), "sum_rows b=%u c=%u: %g vs %g", b, c,
                  out[size_t(b) * d + c], acc);
        }
        for (unsigned i = 0; i < k; ++i) {
            const unsigned p = b * k + i;
            float dot = 0.0f;
            for (unsigned c = 0; c < d; ++c) {
                dot += g[size_t(b) * d + c] * w[size_t(idx[p]) * d + c];
                want_gw[size_t(idx[p]) * d + c] += v[p] * g[size_t(b) * d + c];
            }
            const float want = flat && v[p] == 0.0f ? 0.0f : dot;
            CHECK(close(gv[p], want), "dot_rows p=%u: %g vs %g", p, gv[p], want);
        }
    }
    for (size_t e = 0; e < gw.size(); ++e)
        CHECK(close(gw[e], want_gw[e]), "scatter_rows element %zu: %g vs %g", e, gw[e], want_gw[e]);
}

// One Adam update of n elements, launched as src/cuda/mod.rs does (blocks of 256 over n) and
// with a grid too small for n (the kernels stride over the rest), against the formula.
static void check_adam(unsigned n, dim3 grid, std::mt19937 &rng) {
    std::normal_distribution<float> normal;
    std::vector<float> p(n), g(n), m(n), v(n);
    for (unsigned i = 0; i < n; ++i) {
        p[i] = normal(rng);
        g[i] = normal(rng);
        m[i] = 0.1f * normal(rng);
        v[i] = std::fabs(0.01f * normal(rng));
    }
    const float scale = 0.37f, b1 = 0.9f, b2 = 0.999f, step = 1e-3f / 0.19f, inv_bc2 = 1 / 0.002f,
                eps = 1e-8f;
    std::vector<float> p2 = p, m2(n, NAN), v2(n, NAN);
    launch(adam_moment_f32, grid, {ADAM_THREADS}, m.data(), g.data(), &scale, m2.data(), n, b1,
           1 - b1, 0u);
    launch(adam_moment_f32, grid, {ADAM_THREADS}, v.data(), g.data(), &scale, v2.data(), n, b2,
           1 - b2, 1u);
    launch(adam_step_f32, grid, {ADAM_THREADS}, p2.data(), m2.data(), v2.data(), n, step,
           inv_bc2, eps);
    for (unsigned i = 0; i < n; ++i) {
        const float gi = g[i] * scale;
        const float mi = m[i] * b1 + gi * (1 - b1), vi = v[i] * b2 + gi * gi * (1 - b2);
        const float pi = p[i] - mi / (std::sqrt(vi * inv_bc2) + eps) * step;
        CHECK(close(m2[i], mi) && close(v2[i], vi) && close(p2[i], pi),
              "adam n=%u i=%u: p %g vs %g, m %g vs %g, v %g vs %g", n, i, p2[i], pi, m2[i], mi,
              v2[i], vi);
    }
}

int main() {
    std::mt19937 rng(7);
    // widths around the block's 256 threads and up to a 16,384-feature SAE; k from 1 to the
    // kernel's largest, and k = n.
    const unsigned shapes[][2] = {{1, 1},      {7, 3},     {256, 32},   {300, 300}, {1000, 1},
                                  {1000, 257}, {3000, 64}, {4096, 1024}, {16384, 32}};
    for (auto [n, k] : shapes)
        for (int kind = 0; kind < 4; ++kind) check_topk(2, n, k, kind, rng);
    for (bool flat : {false, true}) {
        check_rows(5, 4, 9, 300, flat, rng);
        check_rows(3, 32, 64, 512, flat, rng);
    }
    for (unsigned n : {1u, 255u, 257u, 3000u}) {
        check_adam(n, {(n + ADAM_THREADS - 1) / ADAM_THREADS}, rng);
        check_adam(n, {2}, rng);
    }
    std::printf("%s (%d failures)\n", failures ? "FAILED" : "ok", failures);
    return failures ? 1 : 0;
}
