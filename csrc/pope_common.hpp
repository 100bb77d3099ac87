// Shared helpers of the pope C++ core: thread pool sizing, a parallel-for over index ranges,
// SplitMix64, a branch-free exp that vectorises, and the declarations of the routines bound in
// module.cpp. The numerical contract is the one of src/pope/backends/reference.py.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

namespace pope {

namespace py = pybind11;

using DArray = py::array_t<double, py::array::c_style | py::array::forcecast>;
using IArray = py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>;

constexpr double kInf = std::numeric_limits<double>::infinity();

// ---------------------------------------------------------------------------------------------
// Threads
// ---------------------------------------------------------------------------------------------

// Number of worker threads for `units` independent work units of `work` elements in total.
// Default: min(hardware_concurrency, work / min_work_per_thread), at least 1. The environment
// variable POPE_NUM_THREADS (a positive integer) overrides the default; the result never
// exceeds `units` (no idle threads).
inline int num_threads(std::size_t work, std::size_t min_work_per_thread, std::size_t units) {
    std::size_t t = 0;
    if (const char* env = std::getenv("POPE_NUM_THREADS")) {
        char* end = nullptr;
        const long v = std::strtol(env, &end, 10);
        if (end != env && v > 0) t = static_cast<std::size_t>(v);
    }
    if (t == 0) {
        std::size_t hw = std::thread::hardware_concurrency();
        if (hw == 0) hw = 1;
        t = std::min(hw, work / std::max<std::size_t>(min_work_per_thread, 1));
    }
    t = std::min(t, units);
    return static_cast<int>(std::max<std::size_t>(t, 1));
}

// Calls fn(tid, begin, end) on consecutive blocks of `grain` items covering [0, n_items).
// With nthreads > 1 the blocks are handed out dynamically (an atomic counter), so a thread that
// the OS slows down does not hold the others back; the calling thread is worker 0. Every item
// is visited exactly once, and the kernels make each item's result independent of which thread
// computes it, so results do not depend on the thread count or on scheduling. Exceptions thrown
// by fn are re-thrown (the first one) after all joins.
template <class Fn>
void parallel_for(int nthreads, std::size_t n_items, std::size_t grain, Fn&& fn) {
    if (n_items == 0) return;
    grain = std::max<std::size_t>(grain, 1);
    const std::size_t n_blocks = (n_items + grain - 1) / grain;
    const std::size_t t = std::min<std::size_t>(std::max(nthreads, 1), n_blocks);
    if (t == 1) {
        fn(0, std::size_t{0}, n_items);
        return;
    }
    std::atomic<std::size_t> next{0};
    std::vector<std::exception_ptr> errors(t);
    auto run = [&](std::size_t tid) {
        try {
            for (;;) {
                const std::size_t blk = next.fetch_add(1, std::memory_order_relaxed);
                if (blk >= n_blocks) break;
                const std::size_t b = blk * grain;
                fn(static_cast<int>(tid), b, std::min(n_items, b + grain));
            }
        } catch (...) {
            errors[tid] = std::current_exception();
            next.store(n_blocks, std::memory_order_relaxed);  // stop handing out work
        }
    };
    std::vector<std::thread> pool;
    pool.reserve(t - 1);
    for (std::size_t tid = 1; tid < t; ++tid) pool.emplace_back(run, tid);
    run(0);
    for (auto& th : pool) th.join();
    for (auto& err : errors)
        if (err) std::rethrow_exception(err);
}

// ---------------------------------------------------------------------------------------------
// SIMD: GCC/Clang vector extensions (4 doubles; lowered to two SSE2 registers on baseline
// x86-64) and, with GCC on x86-64 Linux, function multi-versioning so that the hot kernels
// also get an AVX2+FMA clone chosen at load time. The build never needs -march=native.
// ---------------------------------------------------------------------------------------------

// Everything that takes or returns a vector type is forced inline: a vector passed across a
// call between an AVX2 clone and a baseline function would not agree on the ABI.
#define POPE_INLINE inline __attribute__((always_inline))

typedef double v4d __attribute__((vector_size(32)));
typedef std::uint64_t v4u __attribute__((vector_size(32)));
typedef std::int64_t v4i __attribute__((vector_size(32)));

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    !defined(POPE_NO_CLONES)
#define POPE_TARGET_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define POPE_TARGET_CLONES
#endif

POPE_INLINE v4d load4(const double* p) {
    v4d v;
    std::memcpy(&v, p, sizeof(v));
    return v;
}

POPE_INLINE void store4(double* p, v4d v) { std::memcpy(p, &v, sizeof(v)); }

POPE_INLINE v4d splat4(double x) { return v4d{x, x, x, x}; }

POPE_INLINE double hmax4(v4d v) {
    const double a = v[0] > v[1] ? v[0] : v[1];
    const double b = v[2] > v[3] ? v[2] : v[3];
    return a > b ? a : b;
}

POPE_INLINE double hsum4(v4d v) { return (v[0] + v[1]) + (v[2] + v[3]); }

POPE_INLINE v4d vmax4(v4d a, v4d b) { return a > b ? a : b; }

// Short segments without a data-dependent loop: for 4 <= K <= 16 the segment [x, x + K) is
// covered by 2 or 4 overlapping 4-lane loads (the first and last 4 or 8 elements), so a
// prompt of a few responses costs a fixed number of vector operations and no loop exit to
// predict. Longer and shorter segments take the scalar loop.

// max_k x[k] (-inf when K == 0).
POPE_INLINE double seg_max(const double* x, std::size_t K) {
    if (K >= 4 && K <= 8) return hmax4(vmax4(load4(x), load4(x + K - 4)));
    if (K > 8 && K <= 16)
        return hmax4(vmax4(vmax4(load4(x), load4(x + 4)), vmax4(load4(x + K - 8), load4(x + K - 4))));
    double m = -kInf;
    for (std::size_t k = 0; k < K; ++k) m = x[k] > m ? x[k] : m;
    return m;
}

// y[k] = x[k] - shift for k < K (overlapping stores write equal values).
POPE_INLINE void seg_sub(const double* x, std::size_t K, double shift, double* y) {
    const v4d sv = splat4(shift);
    if (K >= 4 && K <= 8) {
        const v4d a = load4(x) - sv, b = load4(x + K - 4) - sv;
        store4(y, a);
        store4(y + K - 4, b);
        return;
    }
    if (K > 8 && K <= 16) {
        const v4d a = load4(x) - sv, b = load4(x + 4) - sv;
        const v4d c = load4(x + K - 8) - sv, d = load4(x + K - 4) - sv;
        store4(y, a);
        store4(y + 4, b);
        store4(y + K - 8, c);
        store4(y + K - 4, d);
        return;
    }
    for (std::size_t k = 0; k < K; ++k) y[k] = x[k] - shift;
}

// sum_c x[c] over a row of C cells (4 lane sums, then the tail).
POPE_INLINE double row_sum(const double* x, std::size_t C) {
    v4d acc{};
    std::size_t c = 0;
    for (; c + 4 <= C; c += 4) acc += load4(x + c);
    double s = hsum4(acc);
    for (; c < C; ++c) s += x[c];
    return s;
}

// ---------------------------------------------------------------------------------------------
// SplitMix64 (see the reference module docstring)
// ---------------------------------------------------------------------------------------------

constexpr std::uint64_t kGolden = 0x9E3779B97F4A7C15ULL;

inline std::uint64_t splitmix64(std::uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

// ---------------------------------------------------------------------------------------------
// exp without a library call, branch-free so that loops over it vectorise.
//
// exp(x) = 2^k e^r with k = rint(x / ln 2) and r = x - k ln 2 (Cody-Waite, two-part ln 2),
// |r| <= ln(2)/2; e^r by its Taylor polynomial of degree 13 (truncation < 2e-18 relative,
// Estrin evaluation);
// 2^k = 2^k1 2^k2 with k1 = rint(k/2) so that both factors are normal numbers, which gives
// correct subnormal results and 0 below -745.2. x is clamped to [-746, 710] first, so -inf
// gives 0 and +inf gives inf. Measured maximum error: about 2 ulp over [-745, 709].
// ---------------------------------------------------------------------------------------------

namespace expc {
constexpr double kLog2e = 1.4426950408889634;
constexpr double kLn2Hi = 6.93147180369123816490e-01;  // 32 significant bits: k*kLn2Hi exact
constexpr double kLn2Lo = 1.90821492927058770002e-10;
constexpr double kShifter = 6755399441055744.0;  // 1.5 * 2^52: x + kShifter rounds x to int
constexpr double kShifterBias = kShifter + 1023.0;
constexpr double kMin = -746.0;
constexpr double kMax = 710.0;
constexpr double kC[14] = {1.0,
                           1.0,
                           1.0 / 2,
                           1.0 / 6,
                           1.0 / 24,
                           1.0 / 120,
                           1.0 / 720,
                           1.0 / 5040,
                           1.0 / 40320,
                           1.0 / 362880,
                           1.0 / 3628800,
                           1.0 / 39916800,
                           1.0 / 479001600,
                           1.0 / 6227020800.0};
}  // namespace expc

// Generic over double and GCC/Clang vector types V of doubles with matching integer type U.
template <class V, class U>
POPE_INLINE V exp_core(V x) {
    using namespace expc;
    x = x < kMin ? V{} + kMin : x;
    x = x > kMax ? V{} + kMax : x;
    V kd = x * kLog2e + kShifter;
    kd = kd - kShifter;
    V r = x - kd * kLn2Hi;
    r = r - kd * kLn2Lo;
    // Estrin's scheme: a short dependency chain (the loop is latency-bound with Horner).
    const V r2 = r * r;
    const V r4 = r2 * r2;
    const V r8 = r4 * r4;
    const V q0 = (r + 1.0) + (r * kC[3] + kC[2]) * r2;
    const V q1 = (r * kC[5] + kC[4]) + (r * kC[7] + kC[6]) * r2;
    const V q2 = (r * kC[9] + kC[8]) + (r * kC[11] + kC[10]) * r2;
    const V q3 = r * kC[13] + kC[12];
    const V p = (q0 + q1 * r4) + (q2 + q3 * r4) * r8;
    const V k1 = (kd * 0.5 + kShifter) - kShifter;
    const V k2 = kd - k1;
    const V b1 = k1 + kShifterBias;
    const V b2 = k2 + kShifterBias;
    U u1, u2;
    std::memcpy(&u1, &b1, sizeof(V));
    std::memcpy(&u2, &b2, sizeof(V));
    u1 = u1 << 52;
    u2 = u2 << 52;
    V s1, s2;
    std::memcpy(&s1, &u1, sizeof(V));
    std::memcpy(&s2, &u2, sizeof(V));
    return (p * s1) * s2;
}

// exp for arguments that cannot overflow (x <= 709), with results below e^-708 (about
// 3.3e-308) flushed to 0; -inf gives 0 and NaN stays NaN. Cheaper than exp_core: one scale
// factor 2^k built from the rounding constant's low bits, and a degree-11 polynomial fitted to
// e^r on |r| <= ln(2)/2 (relative error 1.4e-16 in double arithmetic, by a Lawson-weighted
// least-squares fit with p(0) = 1, p'(0) = 1). Measured maximum error: about 1 ulp. Meant for
// max-shifted weights exp(l - m), l <= m, whose sums contain a 1: a flushed term is below
// 1e-307 of the sum.
namespace expf0 {
constexpr double kLo = -708.0;
constexpr double kC[12] = {1.0,
                           1.0,
                           0.5000000000000011,
                           0.16666666666666413,
                           0.04166666666653024,
                           0.008333333333494333,
                           0.0013888888943604078,
                           0.00019841269506805343,
                           2.4801493130012368e-05,
                           2.7557586227578293e-06,
                           2.7630235984850195e-07,
                           2.5000088195767496e-08};
}  // namespace expf0

template <class V, class U>
POPE_INLINE V exp_ftz_core(V x) {
    using namespace expc;
    using expf0::kC;
    const auto tiny = x < expf0::kLo;  // -inf too; NaN compares false and stays NaN
    const V xc = tiny ? V{} + expf0::kLo : x;
    const V kds = xc * kLog2e + kShifter;  // low mantissa bits: k = rint(x / ln 2)
    const V kd = kds - kShifter;
    V r = xc - kd * kLn2Hi;
    r = r - kd * kLn2Lo;
    const V r2 = r * r;
    const V r4 = r2 * r2;
    const V r8 = r4 * r4;
    const V q0 = (r + 1.0) + (r * kC[3] + kC[2]) * r2;
    const V q1 = (r * kC[5] + kC[4]) + (r * kC[7] + kC[6]) * r2;
    const V q2 = (r * kC[9] + kC[8]) + (r * kC[11] + kC[10]) * r2;
    const V p = (q0 + q1 * r4) + q2 * r8;
    U bits;
    std::memcpy(&bits, &kds, sizeof(V));
    bits = (bits + 1023) << 52;  // (2^51 + k + 1023) << 52 = (k + 1023) << 52 mod 2^64
    V s;
    std::memcpy(&s, &bits, sizeof(V));
    const V y = p * s;
    return tiny ? V{} : y;
}

inline double exp_ftz_scalar(double x) { return exp_ftz_core<double, std::uint64_t>(x); }

// log without a library call, branch-free, for finite x > 0 (callers mask other lanes).
//
// x = 2^e m with m in [sqrt(1/2), sqrt(2)) (subnormals are scaled by 2^52 first);
// log m = 2 atanh(s) = 2s + 2s (s^2/3 + s^4/5 + ... + s^18/19) with s = (m - 1)/(m + 1),
// |s| <= 0.1716 (truncation < 3e-17 relative; Estrin evaluation);
// log x = e ln2_hi + (log m + e ln2_lo).
// Measured maximum error: about 2 ulp.
template <class V, class U>
POPE_INLINE V log_core(V x) {
    constexpr double kTwo52 = 4503599627370496.0;
    const auto sub = x < 2.2250738585072014e-308;
    const V xs = sub ? x * kTwo52 : x;
    const V eadj = sub ? V{} - 52.0 : V{};
    U bits;
    std::memcpy(&bits, &xs, sizeof(V));
    const U mbits = (bits & 0x000FFFFFFFFFFFFFULL) | 0x3FF0000000000000ULL;
    const U ebits = (bits >> 52) | 0x4330000000000000ULL;  // 2^52 + biased exponent
    V m, ef;
    std::memcpy(&m, &mbits, sizeof(V));
    std::memcpy(&ef, &ebits, sizeof(V));
    V e = (ef - (kTwo52 + 1023.0)) + eadj;
    const auto big = m > 1.4142135623730951;
    m = big ? m * 0.5 : m;
    e = big ? e + 1.0 : e;
    const V f = m - 1.0;
    const V s = f / (f + 2.0);
    const V z = s * s;
    const V z2 = z * z;
    const V z4 = z2 * z2;
    const V z8 = z4 * z4;
    const V a0 = (z * (1.0 / 5) + 1.0 / 3) + (z * (1.0 / 9) + 1.0 / 7) * z2;
    const V a1 = (z * (1.0 / 13) + 1.0 / 11) + (z * (1.0 / 17) + 1.0 / 15) * z2;
    const V r = ((a0 + a1 * z4) + z8 * (1.0 / 19)) * z;
    const V s2 = s * 2.0;
    const V lm = s2 + s2 * r;
    return e * expc::kLn2Hi + (lm + e * expc::kLn2Lo);
}

namespace logc {
// log m = 2s + 2s z R(z), s = (m - 1)/(m + 1), z = s^2 <= 0.0295 (m in [sqrt(1/2), sqrt(2))):
// R(z) = (atanh(s)/s - 1)/z = 1/3 + z/5 + ..., here its degree-6 fit on [0, 0.0295]
// (Lawson-weighted least squares; log m to 3.1e-16 relative in double arithmetic).
constexpr double kR[7] = {0.3333333333333335,  0.19999999999949253, 0.14285714313185327,
                          0.11111105538743236, 0.09091446440726343, 0.07665804069395878,
                          0.07308867419577511};
}  // namespace logc

// log for positive normal x (vectors only): as log_core, with the exponent and the mantissa
// in [sqrt(1/2), sqrt(2)) taken by integer operations (musl's offset trick): t = bits(x) -
// bits(sqrt(1/2)), e = t >> 52 (a signed 12-bit field, converted through 2^52 + 2048), and
// m = x 2^-e; no compare, blend or multiply before the polynomial (logc::kR).
// Subnormal, zero, negative and non-finite lanes are the caller's (log_pos_array).
template <class V, class U>
POPE_INLINE V log_norm_core(V x) {
    constexpr double kTwo52 = 4503599627370496.0;
    U ix;
    std::memcpy(&ix, &x, sizeof(V));
    const U t = ix - 0x3FE6A09E667F3BCDULL;
    const U kb = ((t >> 52) ^ 0x800) | 0x4330000000000000ULL;  // 2^52 + 2048 + e
    const U iz = ix - (t & 0xFFF0000000000000ULL);
    V ef, m;
    std::memcpy(&ef, &kb, sizeof(V));
    std::memcpy(&m, &iz, sizeof(V));
    const V e = ef - (kTwo52 + 2048.0);
    const V f = m - 1.0;
    const V s = f / (f + 2.0);
    const V z = s * s;
    const V z2 = z * z;
    const V z4 = z2 * z2;
    using logc::kR;
    const V a0 = (z * kR[1] + kR[0]) + (z * kR[3] + kR[2]) * z2;
    const V a1 = (z * kR[5] + kR[4]) + z2 * kR[6];
    const V r = (a0 + a1 * z4) * z;
    const V s2 = s + s;
    const V lm = s2 + s2 * r;
    return e * expc::kLn2Hi + (lm + e * expc::kLn2Lo);
}

// Scalar version of exp_core (same arithmetic, so the same bits as each vector lane).
inline double exp_scalar(double x) { return exp_core<double, std::uint64_t>(x); }
inline double log_scalar(double x) { return log_core<double, std::uint64_t>(x); }

// y[k] = exp(x[k]) for k < n (in place allowed).
POPE_INLINE void exp_array(const double* x, std::size_t n, double* y) {
    std::size_t k = 0;
    for (; k + 4 <= n; k += 4) store4(y + k, exp_core<v4d, v4u>(load4(x + k)));
    for (; k < n; ++k) y[k] = exp_core<double, std::uint64_t>(x[k]);
}

// log of 4 positive lanes: log_norm_core, log_core for subnormal lanes.
POPE_INLINE v4d log_pos4(v4d v) {
    v4i bits;
    std::memcpy(&bits, &v, sizeof(v));
    const v4i tiny = bits < static_cast<std::int64_t>(0x0010000000000000LL);
    const v4d ln = log_norm_core<v4d, v4u>(v);
    if ((tiny[0] | tiny[1] | tiny[2] | tiny[3]) == 0) return ln;
    return tiny ? log_core<v4d, v4u>(v) : ln;  // per lane, as log_pos1
}

// The same for one positive value (bit-identical to a lane of log_pos4, so that results do
// not depend on where a batch's vector loop ends).
POPE_INLINE double log_pos1(double v) {
    if (v < 2.2250738585072014e-308) return log_scalar(v);
    return log_norm_core<double, std::uint64_t>(v);
}

// y[k] = x[k] > 0 ? log(x[k]) : 0 for k < n, 4 lanes at a time (in place allowed).
POPE_INLINE void log_pos_array(const double* x, std::size_t n, double* y) {
    const v4d zero{}, one = splat4(1.0);
    std::size_t k = 0;
    for (; k + 4 <= n; k += 4) {
        const v4d v = load4(x + k);
        const auto pos = v > zero;
        store4(y + k, pos ? log_pos4(pos ? v : one) : zero);
    }
    for (; k < n; ++k) y[k] = x[k] > 0.0 ? log_pos1(x[k]) : 0.0;
}

// y[k] = x[k] log x[k] for x[k] > 0, else 0 (in place allowed).
POPE_INLINE void xlogx_array(const double* x, std::size_t n, double* y) {
    const v4d zero{}, one = splat4(1.0);
    std::size_t k = 0;
    for (; k + 4 <= n; k += 4) {
        const v4d v = load4(x + k);
        const auto pos = v > zero;
        store4(y + k, pos ? v * log_pos4(pos ? v : one) : zero);
    }
    for (; k < n; ++k) y[k] = x[k] > 0.0 ? x[k] * log_pos1(x[k]) : 0.0;
}

// ---------------------------------------------------------------------------------------------
// Validation helpers (throw std::invalid_argument, which pybind11 maps to ValueError)
// ---------------------------------------------------------------------------------------------

inline void require(bool cond, const char* msg) {
    if (!cond) throw std::invalid_argument(msg);
}

// Checks a CSR offset vector against the number of rows it indexes; returns P.
inline std::size_t check_prompt_ptr(const IArray& prompt_ptr, py::ssize_t n_rows) {
    require(prompt_ptr.ndim() == 1, "prompt_ptr must be 1-D");
    require(prompt_ptr.shape(0) >= 1, "prompt_ptr must have at least one entry");
    auto ptr = prompt_ptr.unchecked<1>();
    const py::ssize_t n_ptr = prompt_ptr.shape(0);
    require(ptr(0) == 0, "prompt_ptr[0] must be 0");
    for (py::ssize_t i = 1; i < n_ptr; ++i)
        require(ptr(i) >= ptr(i - 1), "prompt_ptr must be non-decreasing");
    if (ptr(n_ptr - 1) != n_rows)
        throw std::invalid_argument("prompt_ptr[-1] (" + std::to_string(ptr(n_ptr - 1)) +
                                    ") must equal the number of responses (" +
                                    std::to_string(n_rows) + ")");
    return static_cast<std::size_t>(n_ptr - 1);
}

// ---------------------------------------------------------------------------------------------
// Routines bound in module.cpp (signatures and semantics of pope.backends.reference)
// ---------------------------------------------------------------------------------------------

DArray ips_moments(const DArray& log_target, const DArray& log_logging, const DArray& reward,
                   double log_clip);

std::tuple<DArray, IArray> ips_moments_checked(const DArray& log_target,
                                               const DArray& log_logging, const DArray& reward,
                                               double log_clip);

std::tuple<DArray, DArray> segment_coverage_hard(const IArray& prompt_ptr,
                                                 const DArray& log_weight, const IArray& labels,
                                                 std::int64_t n_aspects, bool self_normalize);

std::tuple<DArray, DArray> segment_coverage_soft(const IArray& prompt_ptr,
                                                 const DArray& log_weight, const DArray& soft,
                                                 bool self_normalize);

DArray diversity_reward_hard(const IArray& prompt_ptr, const DArray& p, const IArray& labels);

DArray diversity_reward_soft(const IArray& prompt_ptr, const DArray& p, const DArray& soft);

DArray segment_jackknife_entropy_hard(const IArray& prompt_ptr, const DArray& log_weight,
                                      const IArray& labels, std::int64_t n_aspects,
                                      bool self_normalize);

DArray segment_jackknife_entropy_soft(const IArray& prompt_ptr, const DArray& log_weight,
                                      const DArray& soft, bool self_normalize);

DArray bootstrap_sums(const DArray& values, std::int64_t n_boot, std::uint64_t seed);

std::tuple<DArray, DArray> elementary_sums_hard(const IArray& prompt_ptr, const DArray& weight,
                                                const IArray& labels, std::int64_t n_aspects,
                                                std::int64_t degree);

std::tuple<DArray, DArray> elementary_sums_soft(const IArray& prompt_ptr, const DArray& weight,
                                                const DArray& soft, std::int64_t degree);

}  // namespace pope
