// Column sums of with-replacement resamples, indices from the counter-based SplitMix64 stream
// of the reference (bit-identical): idx(b, i) = ((splitmix64(key + b*G + i) >> 32) * n) >> 32.
//
// Each resample is processed in blocks of kBlock draws: first the indices of the block are
// computed into a small buffer (pure integer work; an AVX2 version computes 4 at a time with
// 32x32->64 multiplies when the CPU has it), then the rows are gathered and added. Splitting
// the two phases keeps many independent loads in flight, which is what the random gathers need.
// Threads split the resamples; nothing is shared but the read-only values.
#include "pope_common.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define POPE_HAVE_AVX2_PATH 1
#else
#define POPE_HAVE_AVX2_PATH 0
#endif

namespace pope {

namespace boot_detail {

constexpr std::size_t kMinPerThread = std::size_t{1} << 18;  // index draws per thread
constexpr std::size_t kBlock = 512;                          // draws per index buffer

constexpr std::uint64_t kM1 = 0xBF58476D1CE4E5B9ULL;
constexpr std::uint64_t kM2 = 0x94D049BB133111EBULL;

inline std::uint64_t draw(std::uint64_t x, std::uint64_t n) {
    return ((splitmix64(x) >> 32) * n) >> 32;
}

// ib[j] = draw(x0 + j, n) for j < len, portable version.
void fill_indices_generic(std::uint64_t x0, std::uint64_t n, std::size_t len,
                          std::uint64_t* ib) {
    for (std::size_t j = 0; j < len; ++j) ib[j] = draw(x0 + j, n);
}

#if POPE_HAVE_AVX2_PATH
// a * m (mod 2^64) per lane for a constant m split into 32-bit halves (ml, mh).
__attribute__((target("avx2"))) inline __m256i mul64_avx2(__m256i a, __m256i ml, __m256i mh) {
    const __m256i lo = _mm256_mul_epu32(a, ml);
    const __m256i cross =
        _mm256_add_epi64(_mm256_mul_epu32(_mm256_srli_epi64(a, 32), ml), _mm256_mul_epu32(a, mh));
    return _mm256_add_epi64(lo, _mm256_slli_epi64(cross, 32));
}

// Same as fill_indices_generic, 4 lanes at a time (bit-identical: integer arithmetic only).
__attribute__((target("avx2"))) void fill_indices_avx2(std::uint64_t x0, std::uint64_t n,
                                                       std::size_t len, std::uint64_t* ib) {
    const __m256i m1l = _mm256_set1_epi64x(static_cast<long long>(kM1 & 0xFFFFFFFFULL));
    const __m256i m1h = _mm256_set1_epi64x(static_cast<long long>(kM1 >> 32));
    const __m256i m2l = _mm256_set1_epi64x(static_cast<long long>(kM2 & 0xFFFFFFFFULL));
    const __m256i m2h = _mm256_set1_epi64x(static_cast<long long>(kM2 >> 32));
    const __m256i nv = _mm256_set1_epi64x(static_cast<long long>(n));  // n < 2^32
    const __m256i four = _mm256_set1_epi64x(4);
    __m256i x = _mm256_add_epi64(_mm256_set1_epi64x(static_cast<long long>(x0)),
                                 _mm256_set_epi64x(3, 2, 1, 0));
    std::size_t j = 0;
    for (; j + 4 <= len; j += 4) {
        __m256i z = _mm256_xor_si256(x, _mm256_srli_epi64(x, 30));
        z = mul64_avx2(z, m1l, m1h);
        z = _mm256_xor_si256(z, _mm256_srli_epi64(z, 27));
        z = mul64_avx2(z, m2l, m2h);
        z = _mm256_xor_si256(z, _mm256_srli_epi64(z, 31));
        // (z >> 32) * n < 2^64 fits the 32x32->64 multiply exactly.
        const __m256i idx = _mm256_srli_epi64(_mm256_mul_epu32(_mm256_srli_epi64(z, 32), nv), 32);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(ib + j), idx);
        x = _mm256_add_epi64(x, four);
    }
    for (; j < len; ++j) ib[j] = draw(x0 + j, n);
}
#endif

using FillFn = void (*)(std::uint64_t, std::uint64_t, std::size_t, std::uint64_t*);

FillFn pick_fill() {
#if POPE_HAVE_AVX2_PATH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2")) return &fill_indices_avx2;
#endif
    return &fill_indices_generic;
}

// Resamples [b0, b1) of a single column, 4 partial sums.
void boot_m1(FillFn fill, const double* v, std::uint64_t n, std::uint64_t key, std::size_t b0,
             std::size_t b1, double* out) {
    alignas(32) std::uint64_t ib[kBlock];
    for (std::size_t b = b0; b < b1; ++b) {
        const std::uint64_t base = key + static_cast<std::uint64_t>(b) * kGolden;
        double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0;
        for (std::uint64_t s = 0; s < n; s += kBlock) {
            const std::size_t len = static_cast<std::size_t>(std::min<std::uint64_t>(kBlock, n - s));
            fill(base + s, n, len, ib);
            std::size_t j = 0;
            for (; j + 4 <= len; j += 4) {
                a0 += v[ib[j]];
                a1 += v[ib[j + 1]];
                a2 += v[ib[j + 2]];
                a3 += v[ib[j + 3]];
            }
            for (; j < len; ++j) a0 += v[ib[j]];
        }
        out[b] = (a0 + a1) + (a2 + a3);
    }
}

// Resamples [b0, b1) of m >= 2 columns: rows are added in draw order (as NumPy's axis-0 sum).
void boot_rows(FillFn fill, const double* v, std::uint64_t n, std::size_t m, std::uint64_t key,
               std::size_t b0, std::size_t b1, double* out) {
    alignas(32) std::uint64_t ib[kBlock];
    for (std::size_t b = b0; b < b1; ++b) {
        const std::uint64_t base = key + static_cast<std::uint64_t>(b) * kGolden;
        double* acc = out + b * m;
        std::fill(acc, acc + m, 0.0);
        for (std::uint64_t s = 0; s < n; s += kBlock) {
            const std::size_t len = static_cast<std::size_t>(std::min<std::uint64_t>(kBlock, n - s));
            fill(base + s, n, len, ib);
            for (std::size_t j = 0; j < len; ++j) {
                const double* row = v + ib[j] * m;
                for (std::size_t c = 0; c < m; ++c) acc[c] += row[c];
            }
        }
    }
}

}  // namespace boot_detail

using namespace boot_detail;

DArray bootstrap_sums(const DArray& values, std::int64_t n_boot, std::uint64_t seed) {
    require(values.ndim() == 2, "bootstrap_sums: values must be 2-D (n, m)");
    require(n_boot >= 0, "bootstrap_sums: n_boot must be >= 0");
    const std::uint64_t n = static_cast<std::uint64_t>(values.shape(0));
    const std::size_t m = static_cast<std::size_t>(values.shape(1));
    require(n >= 1 && n < (std::uint64_t{1} << 32), "bootstrap_sums: need 1 <= n < 2**32 rows");
    const std::size_t B = static_cast<std::size_t>(n_boot);
    DArray out({static_cast<py::ssize_t>(B), static_cast<py::ssize_t>(m)});
    if (B == 0 || m == 0) {
        std::fill(out.mutable_data(), out.mutable_data() + B * m, 0.0);
        return out;
    }
    const double* v = values.data();
    double* o = out.mutable_data();
    const std::uint64_t key = splitmix64(seed);
    static const FillFn fill = pick_fill();
    {
        py::gil_scoped_release release;
        const int nt = num_threads(B * static_cast<std::size_t>(n), kMinPerThread, B);
        // blocks of about 2^20 draws
        const std::size_t grain = std::max<std::size_t>(1, (std::size_t{1} << 20) / n);
        parallel_for(nt, B, grain, [&](int, std::size_t b0, std::size_t b1) {
            if (m == 1)
                boot_m1(fill, v, n, key, b0, b1, o);
            else
                boot_rows(fill, v, n, m, key, b0, b1, o);
        });
    }
    return out;
}

}  // namespace pope
