// Column sums of Poisson-bootstrap resamples (definition: the docstring of
// src/pope/backends/reference.py). Row i of resample b is drawn c_bi times, c_bi from a 16-bit
// uniform u_bi and the table POISSON_TAILS (mean and variance exactly 1):
//
//   c_bi   = #{k : u_bi >= 65536 - T_k}
//   u_bi   = 16-bit half (i mod 2) of x_{i / 16}(b, (i / 2) mod 8)
//   out[b] = (n / N_b) sum_i c_bi v_i,  N_b = sum_i c_bi   (redrawn with the next key if 0)
//
// where x_t(b, l) is the t-th 32-bit output of lane l of the 8 xoshiro128++ streams of resample
// b, keyed by (seed, attempt, b, l). One step of the 8 streams gives the counts of 16
// consecutive rows: 8 16-bit compares per 16 rows in an AVX2 register, the counts converted to
// doubles and multiplied into 16 partial sums per column. No gather: the rows are read in
// order, a block of 2048 rows at a time for a group of resamples (their streams and partial
// sums stay in L1), so the values are read from L1/L2. Threads take groups of resamples; each
// resample's arithmetic is the same whatever the thread count.
#include "pope_common.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define POPE_HAVE_AVX2_PATH 1
#else
#define POPE_HAVE_AVX2_PATH 0
#endif

namespace pope {

namespace boot_detail {

constexpr std::size_t kLanes = 8;           // streams per resample
constexpr std::size_t kRowsPerStep = 16;    // 16-bit uniforms per step of the 8 streams
constexpr std::size_t kBlockSteps = 128;    // steps per block of rows (2048 rows)
constexpr std::size_t kBlockRows = kBlockSteps * kRowsPerStep;
constexpr std::size_t kGroup = 16;          // resamples per group
constexpr int kNumTails = 8;
constexpr int kRareTail = 5;  // tails from here on checked only when a row of the step needs them
// u >= kThresh[k] <=> c > k: 65536 - POISSON_TAILS of reference.py
constexpr std::uint32_t kThresh[kNumTails] = {24110, 48218, 60273, 64292,
                                              65296, 65497, 65531, 65535};
constexpr std::size_t kMinPerThread = std::size_t{1} << 20;  // row draws per thread

// The 8 xoshiro128++ states of one resample, lane-major per state word (SoA).
struct Streams {
    alignas(32) std::uint32_t s[4][kLanes];
};

// The key of attempt a (a >= 1 when a resample drew no row).
inline std::uint64_t attempt_key(std::uint64_t key0, std::uint64_t a) {
    return a == 0 ? key0 : splitmix64(key0 + a * kGolden);
}

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

// One resample over `rows` rows of a block (rows <= kBlockRows): values column-major
// vb[col * ld + r], partial sums acc[col * 16 + lane], lane = row mod 16; returns sum of counts.
using BlockFn = std::uint64_t (*)(Streams&, const double*, std::size_t, std::size_t,
                                  std::size_t, double*);

std::uint64_t block_generic(Streams& st, const double* vb, std::size_t ld, std::size_t m,
                            std::size_t rows, double* acc) {
    std::uint64_t ntot = 0;
    for (std::size_t r0 = 0; r0 < rows; r0 += kRowsPerStep) {
        std::uint32_t c[kRowsPerStep];
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
            for (int h = 0; h < 2; ++h) {
                const std::uint32_t v16 = (x >> (16 * h)) & 0xFFFFu;
                std::uint32_t k = 0;
                for (int t = 0; t < kNumTails; ++t) k += v16 >= kThresh[t];
                c[2 * l + h] = k;
            }
        }
        const std::size_t len = std::min(kRowsPerStep, rows - r0);
        for (std::size_t j = 0; j < len; ++j) {
            ntot += c[j];
            const double cj = static_cast<double>(c[j]);
            for (std::size_t col = 0; col < m; ++col)
                acc[col * kRowsPerStep + j] += cj * vb[col * ld + r0 + j];
        }
    }
    return ntot;
}

#if POPE_HAVE_AVX2_PATH
__attribute__((target("avx2"))) inline __m256i rotl_avx2(__m256i x, int k) {
    return _mm256_or_si256(_mm256_slli_epi32(x, k), _mm256_srli_epi32(x, 32 - k));
}

// One step of the 8 streams: the counts of the next 16 rows (16-bit lanes, in row order).
__attribute__((target("avx2"), always_inline)) inline __m256i step_counts(
    __m256i& s0, __m256i& s1, __m256i& s2, __m256i& s3, const __m256i* th) {
    const __m256i x = _mm256_add_epi32(rotl_avx2(_mm256_add_epi32(s0, s3), 7), s0);
    const __m256i u = _mm256_slli_epi32(s1, 9);
    s2 = _mm256_xor_si256(s2, s0);
    s3 = _mm256_xor_si256(s3, s1);
    s1 = _mm256_xor_si256(s1, s2);
    s0 = _mm256_xor_si256(s0, s3);
    s2 = _mm256_xor_si256(s2, u);
    s3 = rotl_avx2(s3, 11);
    // 16 rows: the 16-bit halves of the 8 outputs, in row order (little endian), sign-flipped
    // for the signed compares
    const __m256i us = _mm256_xor_si256(x, _mm256_set1_epi16(static_cast<short>(0x8000)));
    __m256i cnt = _mm256_setzero_si256();
    for (int k = 0; k < kRareTail; ++k) cnt = _mm256_sub_epi16(cnt, _mm256_cmpgt_epi16(us, th[k]));
    // c > kRareTail in about 1% of the steps (P(u >= 65497) = 39/65536 per row)
    const __m256i rare = _mm256_cmpgt_epi16(us, th[kRareTail]);
    if (!_mm256_testz_si256(rare, rare)) [[unlikely]] {
        cnt = _mm256_sub_epi16(cnt, rare);
        for (int k = kRareTail + 1; k < kNumTails; ++k)
            cnt = _mm256_sub_epi16(cnt, _mm256_cmpgt_epi16(us, th[k]));
    }
    return cnt;
}

// The 16 counts of a step as doubles, rows 4j .. 4j + 3 in d[j] (in-lane unpacks: lo holds
// rows 0-3 | 8-11, hi rows 4-7 | 12-15).
__attribute__((target("avx2"), always_inline)) inline void counts_pd(__m256i cnt, __m256d* d) {
    const __m256i lo = _mm256_unpacklo_epi16(cnt, _mm256_setzero_si256());
    const __m256i hi = _mm256_unpackhi_epi16(cnt, _mm256_setzero_si256());
    d[0] = _mm256_cvtepi32_pd(_mm256_castsi256_si128(lo));
    d[1] = _mm256_cvtepi32_pd(_mm256_castsi256_si128(hi));
    d[2] = _mm256_cvtepi32_pd(_mm256_extracti128_si256(lo, 1));
    d[3] = _mm256_cvtepi32_pd(_mm256_extracti128_si256(hi, 1));
}

// Same counts as block_generic (integer arithmetic only); the partial sums use FMA.
__attribute__((target("avx2,fma"))) std::uint64_t block_avx2(Streams& st, const double* vb,
                                                             std::size_t ld, std::size_t m,
                                                             std::size_t rows, double* acc) {
    __m256i s0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(st.s[0]));
    __m256i s1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(st.s[1]));
    __m256i s2 = _mm256_load_si256(reinterpret_cast<const __m256i*>(st.s[2]));
    __m256i s3 = _mm256_load_si256(reinterpret_cast<const __m256i*>(st.s[3]));
    __m256i th[kNumTails];  // (t - 1) ^ 0x8000: signed u' > th <=> u >= t
    for (int t = 0; t < kNumTails; ++t)
        th[t] = _mm256_set1_epi16(static_cast<short>((kThresh[t] - 1) ^ 0x8000u));
    __m256i ncount = _mm256_setzero_si256();  // 16-bit lanes: <= 8 * kBlockSteps each
    const std::size_t full = rows / kRowsPerStep;
    const std::size_t tail = rows - full * kRowsPerStep;
    alignas(32) std::uint16_t keep[kRowsPerStep];
    for (std::size_t j = 0; j < kRowsPerStep; ++j) keep[j] = j < tail ? 0xFFFF : 0;
    const __m256i tail_mask = _mm256_load_si256(reinterpret_cast<const __m256i*>(keep));
    __m256d d[4];
    if (m == 1) {
        __m256d a0 = _mm256_loadu_pd(acc), a1 = _mm256_loadu_pd(acc + 4);
        __m256d a2 = _mm256_loadu_pd(acc + 8), a3 = _mm256_loadu_pd(acc + 12);
        for (std::size_t t = 0; t < full; ++t) {
            const __m256i cnt = step_counts(s0, s1, s2, s3, th);
            ncount = _mm256_add_epi16(ncount, cnt);
            counts_pd(cnt, d);
            const double* v = vb + t * kRowsPerStep;
            a0 = _mm256_fmadd_pd(d[0], _mm256_loadu_pd(v), a0);
            a1 = _mm256_fmadd_pd(d[1], _mm256_loadu_pd(v + 4), a1);
            a2 = _mm256_fmadd_pd(d[2], _mm256_loadu_pd(v + 8), a2);
            a3 = _mm256_fmadd_pd(d[3], _mm256_loadu_pd(v + 12), a3);
        }
        if (tail > 0) {  // the last, partial step: rows past the end count 0, padded with 0
            const __m256i cnt = _mm256_and_si256(step_counts(s0, s1, s2, s3, th), tail_mask);
            ncount = _mm256_add_epi16(ncount, cnt);
            counts_pd(cnt, d);
            alignas(32) double pad[kRowsPerStep];
            for (std::size_t j = 0; j < kRowsPerStep; ++j)
                pad[j] = j < tail ? vb[full * kRowsPerStep + j] : 0.0;
            a0 = _mm256_fmadd_pd(d[0], _mm256_load_pd(pad), a0);
            a1 = _mm256_fmadd_pd(d[1], _mm256_load_pd(pad + 4), a1);
            a2 = _mm256_fmadd_pd(d[2], _mm256_load_pd(pad + 8), a2);
            a3 = _mm256_fmadd_pd(d[3], _mm256_load_pd(pad + 12), a3);
        }
        _mm256_storeu_pd(acc, a0);
        _mm256_storeu_pd(acc + 4, a1);
        _mm256_storeu_pd(acc + 8, a2);
        _mm256_storeu_pd(acc + 12, a3);
    } else {
        const std::size_t steps = full + (tail > 0);
        for (std::size_t t = 0; t < steps; ++t) {
            __m256i cnt = step_counts(s0, s1, s2, s3, th);
            if (t == full) cnt = _mm256_and_si256(cnt, tail_mask);  // rows past the block's end
            ncount = _mm256_add_epi16(ncount, cnt);
            counts_pd(cnt, d);
            const std::size_t r0 = t * kRowsPerStep;
            for (std::size_t col = 0; col < m; ++col) {
                const double* v = vb + col * ld + r0;
                double* ac = acc + col * kRowsPerStep;
                alignas(32) double pad[kRowsPerStep];
                if (t == full) {  // the last, partial step
                    for (std::size_t j = 0; j < kRowsPerStep; ++j)
                        pad[j] = r0 + j < rows ? v[j] : 0.0;
                    v = pad;
                }
                for (int j = 0; j < 4; ++j)
                    _mm256_storeu_pd(ac + 4 * j, _mm256_fmadd_pd(d[j], _mm256_loadu_pd(v + 4 * j),
                                                                 _mm256_loadu_pd(ac + 4 * j)));
            }
        }
    }
    _mm256_store_si256(reinterpret_cast<__m256i*>(st.s[0]), s0);
    _mm256_store_si256(reinterpret_cast<__m256i*>(st.s[1]), s1);
    _mm256_store_si256(reinterpret_cast<__m256i*>(st.s[2]), s2);
    _mm256_store_si256(reinterpret_cast<__m256i*>(st.s[3]), s3);
    // horizontal sum of the 16 count lanes
    const __m256i pairs = _mm256_madd_epi16(ncount, _mm256_set1_epi16(1));
    alignas(32) std::int32_t p8[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(p8), pairs);
    std::uint64_t ntot = 0;
    for (int j = 0; j < 8; ++j) ntot += static_cast<std::uint64_t>(p8[j]);
    return ntot;
}
#endif

BlockFn pick_block() {
#if POPE_HAVE_AVX2_PATH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return &block_avx2;
#endif
    return &block_generic;
}

// The 16 partial sums of a column in a fixed order.
inline double sum16(const double* a) {
    double s[4];
    for (int j = 0; j < 4; ++j) s[j] = (a[j] + a[j + 4]) + (a[j + 8] + a[j + 12]);
    return (s[0] + s[1]) + (s[2] + s[3]);
}

// Block [r, r + rows) of the (n, m) row-major values, column-major into vb (ld = kBlockRows);
// with m == 1 the values are used in place.
inline const double* block_values(const double* v, std::size_t m, std::size_t r,
                                  std::size_t rows, double* vb) {
    if (m == 1) return v + r;
    for (std::size_t i = 0; i < rows; ++i)
        for (std::size_t col = 0; col < m; ++col) vb[col * kBlockRows + i] = v[(r + i) * m + col];
    return vb;
}

// Resamples [b0, b1) into out (rows b, m columns).
void boot_group(BlockFn block, const double* v, std::size_t n, std::size_t m,
                std::uint64_t key0, std::size_t b0, std::size_t b1, double* out) {
    const std::size_t G = b1 - b0;
    std::vector<Streams> st(G);
    std::vector<double> acc(G * m * kRowsPerStep, 0.0);
    std::vector<std::uint64_t> ntot(G, 0);
    std::vector<double> vb(m > 1 ? m * kBlockRows : 0);
    const std::size_t ld = m > 1 ? kBlockRows : n;
    for (std::size_t g = 0; g < G; ++g) st[g] = seed_streams(key0, b0 + g);
    for (std::size_t r = 0; r < n; r += kBlockRows) {
        const std::size_t rows = std::min(kBlockRows, n - r);
        const double* blk = block_values(v, m, r, rows, vb.data());
        for (std::size_t g = 0; g < G; ++g)
            ntot[g] += block(st[g], blk, ld, m, rows, acc.data() + g * m * kRowsPerStep);
    }
    for (std::size_t g = 0; g < G; ++g) {
        double* a = acc.data() + g * m * kRowsPerStep;
        for (std::uint64_t att = 1; ntot[g] == 0; ++att) {  // no row drawn: the next key
            std::fill(a, a + m * kRowsPerStep, 0.0);
            Streams s = seed_streams(attempt_key(key0, att), b0 + g);
            for (std::size_t r = 0; r < n; r += kBlockRows) {
                const std::size_t rows = std::min(kBlockRows, n - r);
                const double* blk = block_values(v, m, r, rows, vb.data());
                ntot[g] += block(s, blk, ld, m, rows, a);
            }
        }
        const double scale = static_cast<double>(n) / static_cast<double>(ntot[g]);
        for (std::size_t col = 0; col < m; ++col)
            out[(b0 + g) * m + col] = sum16(a + col * kRowsPerStep) * scale;
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
    static const BlockFn block = pick_block();
    {
        py::gil_scoped_release release;
        const std::size_t work = B * static_cast<std::size_t>(n) * std::max<std::size_t>(m, 1);
        const int nt = num_threads(work, kMinPerThread, (B + kGroup - 1) / kGroup);
        parallel_for(nt, B, kGroup, [&](int, std::size_t b0, std::size_t b1) {
            boot_group(block, v, static_cast<std::size_t>(n), m, key, b0, b1, o);
        });
    }
    return out;
}

}  // namespace pope
