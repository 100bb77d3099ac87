// Column sums of with-replacement resamples. Indices come from 8 xoshiro128++ streams per
// resample, keyed by (seed, resample, lane), so every backend produces the same resamples
// whatever the number of threads (definition: the docstring of src/pope/backends/reference.py):
//
//   u_k      = splitmix64(splitmix64(seed) + (16 b + 2 l + k + 1) * G),  k = 0, 1
//   state    = (lo32 u_0, hi32 u_0, lo32 u_1, hi32 u_1)   (0 -> s0 = 1)
//   idx(b,i) = (x_{i / 8}(b, i mod 8) * n) >> 32           (Lemire's multiply-shift, n < 2^32)
//
// where x_t(b, l) is the t-th 32-bit output of lane l's stream. One 32-bit draw per index, no
// 64-bit multiply: an AVX2 step advances the 8 lanes with adds, shifts and xors, and two
// 32x32->64 multiplies map 8 outputs to indices. Each resample is processed in blocks of
// kBlock draws: the indices of the block go to a small buffer (integer work), then the rows are
// gathered and added (many independent loads in flight). Threads split the resamples.
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
constexpr std::size_t kLanes = 8;                            // streams per resample
constexpr std::size_t kBlock = 512;                          // draws per index buffer

// The 8 xoshiro128++ states of one resample, lane-major per state word (SoA).
struct Streams {
    alignas(32) std::uint32_t s[4][kLanes];
};

inline Streams seed_streams(std::uint64_t key, std::uint64_t b) {
    Streams st;
    for (std::size_t l = 0; l < kLanes; ++l) {
        const std::uint64_t c = 16 * b + 2 * l;
        const std::uint64_t u0 = splitmix64(key + (c + 1) * kGolden);
        const std::uint64_t u1 = splitmix64(key + (c + 2) * kGolden);
        st.s[0][l] = static_cast<std::uint32_t>(u0);
        st.s[1][l] = static_cast<std::uint32_t>(u0 >> 32);
        st.s[2][l] = static_cast<std::uint32_t>(u1);
        st.s[3][l] = static_cast<std::uint32_t>(u1 >> 32);
        if ((st.s[0][l] | st.s[1][l] | st.s[2][l] | st.s[3][l]) == 0) st.s[0][l] = 1;
    }
    return st;
}

inline std::uint32_t rotl32(std::uint32_t x, int k) { return (x << k) | (x >> (32 - k)); }

// ib[8t + l] = idx of step t, lane l, for t < steps (portable version).
void fill_generic(Streams& st, std::uint64_t n, std::size_t steps, std::uint32_t* ib) {
    for (std::size_t t = 0; t < steps; ++t) {
        for (std::size_t l = 0; l < kLanes; ++l) {
            std::uint32_t& s0 = st.s[0][l];
            std::uint32_t& s1 = st.s[1][l];
            std::uint32_t& s2 = st.s[2][l];
            std::uint32_t& s3 = st.s[3][l];
            const std::uint32_t x = rotl32(s0 + s3, 7) + s0;
            const std::uint32_t u = s1 << 9;
            s2 ^= s0;
            s3 ^= s1;
            s1 ^= s2;
            s0 ^= s3;
            s2 ^= u;
            s3 = rotl32(s3, 11);
            ib[t * kLanes + l] = static_cast<std::uint32_t>((std::uint64_t{x} * n) >> 32);
        }
    }
}

#if POPE_HAVE_AVX2_PATH
__attribute__((target("avx2"))) inline __m256i rotl_avx2(__m256i x, int k) {
    return _mm256_or_si256(_mm256_slli_epi32(x, k), _mm256_srli_epi32(x, 32 - k));
}

// Same as fill_generic, the 8 lanes in one register (bit-identical: integer arithmetic only).
__attribute__((target("avx2"))) void fill_avx2(Streams& st, std::uint64_t n, std::size_t steps,
                                                 std::uint32_t* ib) {
    __m256i s0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(st.s[0]));
    __m256i s1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(st.s[1]));
    __m256i s2 = _mm256_load_si256(reinterpret_cast<const __m256i*>(st.s[2]));
    __m256i s3 = _mm256_load_si256(reinterpret_cast<const __m256i*>(st.s[3]));
    const __m256i nv = _mm256_set1_epi64x(static_cast<long long>(n));  // n < 2^32
    const __m256i hi_mask = _mm256_set1_epi64x(static_cast<long long>(0xFFFFFFFF00000000ULL));
    for (std::size_t t = 0; t < steps; ++t) {
        const __m256i x = _mm256_add_epi32(rotl_avx2(_mm256_add_epi32(s0, s3), 7), s0);
        const __m256i u = _mm256_slli_epi32(s1, 9);
        s2 = _mm256_xor_si256(s2, s0);
        s3 = _mm256_xor_si256(s3, s1);
        s1 = _mm256_xor_si256(s1, s2);
        s0 = _mm256_xor_si256(s0, s3);
        s2 = _mm256_xor_si256(s2, u);
        s3 = rotl_avx2(s3, 11);
        // (x * n) >> 32 per 32-bit lane: even lanes from the low dwords, odd from the high
        const __m256i even = _mm256_srli_epi64(_mm256_mul_epu32(x, nv), 32);
        const __m256i odd = _mm256_and_si256(_mm256_mul_epu32(_mm256_srli_epi64(x, 32), nv),
                                             hi_mask);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(ib + t * kLanes),
                            _mm256_or_si256(even, odd));
    }
    _mm256_store_si256(reinterpret_cast<__m256i*>(st.s[0]), s0);
    _mm256_store_si256(reinterpret_cast<__m256i*>(st.s[1]), s1);
    _mm256_store_si256(reinterpret_cast<__m256i*>(st.s[2]), s2);
    _mm256_store_si256(reinterpret_cast<__m256i*>(st.s[3]), s3);
}
#endif

using FillFn = void (*)(Streams&, std::uint64_t, std::size_t, std::uint32_t*);

FillFn pick_fill() {
#if POPE_HAVE_AVX2_PATH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2")) return &fill_avx2;
#endif
    return &fill_generic;
}

// Resamples [b0, b1) of a single column, 8 partial sums.
void boot_m1(FillFn fill, const double* v, std::uint64_t n, std::uint64_t key, std::size_t b0,
             std::size_t b1, double* out) {
    alignas(32) std::uint32_t ib[kBlock];
    for (std::size_t b = b0; b < b1; ++b) {
        Streams st = seed_streams(key, b);
        double a[kLanes] = {};
        for (std::uint64_t s = 0; s < n; s += kBlock) {
            const std::size_t len = static_cast<std::size_t>(std::min<std::uint64_t>(kBlock, n - s));
            fill(st, n, (len + kLanes - 1) / kLanes, ib);
            std::size_t j = 0;
            for (; j + kLanes <= len; j += kLanes)
                for (std::size_t l = 0; l < kLanes; ++l) a[l] += v[ib[j + l]];
            for (; j < len; ++j) a[0] += v[ib[j]];
        }
        out[b] = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
    }
}

// Resamples [b0, b1) of m >= 2 columns: rows are added in draw order (as NumPy's axis-0 sum).
void boot_rows(FillFn fill, const double* v, std::uint64_t n, std::size_t m, std::uint64_t key,
               std::size_t b0, std::size_t b1, double* out) {
    alignas(32) std::uint32_t ib[kBlock];
    for (std::size_t b = b0; b < b1; ++b) {
        Streams st = seed_streams(key, b);
        double* acc = out + b * m;
        std::fill(acc, acc + m, 0.0);
        for (std::uint64_t s = 0; s < n; s += kBlock) {
            const std::size_t len = static_cast<std::size_t>(std::min<std::uint64_t>(kBlock, n - s));
            fill(st, n, (len + kLanes - 1) / kLanes, ib);
            for (std::size_t j = 0; j < len; ++j) {
                const double* row = v + static_cast<std::size_t>(ib[j]) * m;
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
