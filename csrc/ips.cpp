// Clipped, max-scaled importance-weight moments in one pass over the data.
//
// With l_i = min(log_target_i - log_logging_i, log_clip) and m = max_i l_i, the moments are
// sums of w~_i = exp(l_i - m) (see MOMENT_NAMES in reference.py). The max is not known in
// advance, so each chunk keeps a running max M and rescales its accumulators by exp(M_old -
// M_new) when M grows (as in an online softmax). The running max is updated once per block of
// kBlock elements: pass 1 over a block (memory -> L1) computes l, its max, the clip count and
// the unclipped max; pass 2 (L1 only) adds exp(l - M) into the 4-lane accumulators. Chunks of
// kChunk elements are independent partials merged in order with the same rescaling, so the
// result does not depend on the number of threads.
//
// The same pass validates the values (ips_moments_checked): pass 1 keeps per-block summaries
// (log_target NaN or > 0; log_logging NaN, > 0 or -inf; reward NaN or +-inf; the min and max
// of the rewards). Only a block whose summary flags a bad value is rescanned, element by
// element, to find the first failing index of each check (IPS_CHECKS in reference.py), and
// only a block with a reward outside [0, 1] is counted element by element. Weights use
// exp_ftz_core (arguments l - M <= 0; a weight below e^-708 counts 0, which changes no sum:
// each chunk's sum of weights contains exp(0) = 1).
#include "pope_common.hpp"

namespace pope {

namespace ips_detail {

constexpr std::size_t kBlock = 512;             // elements per max update (fits in L1)
constexpr std::size_t kChunk = std::size_t{1} << 16;  // elements per partial
constexpr std::size_t kMinPerThread = std::size_t{1} << 18;
constexpr int kNumChecks = 10;  // IPS_CHECKS in reference.py

struct Partial {
    double m = -kInf;  // running max of the clipped log-ratio
    double sw = 0.0, sw2 = 0.0, swr = 0.0, swr2 = 0.0, sw2r = 0.0;
    std::int64_t n_clipped = 0;
    double max_lr = -kInf;
    std::int64_t n_outside = 0;  // rewards outside [0, 1]
    std::int64_t first_bad[kNumChecks] = {-1, -1, -1, -1, -1, -1, -1, -1, -1, -1};
};

// Element-wise rescan of a block that holds an invalid value: the first failing index of each
// check (IPS_CHECKS order), where not already set by an earlier block of the chunk.
void scan_bad(const double* a, const double* b, const double* c, std::size_t len,
              std::int64_t base, std::int64_t* first) {
    for (std::size_t j = 0; j < len; ++j) {
        const double t = a[j], l = b[j], r = c[j];
        const bool fails[kNumChecks] = {std::isnan(t), t == kInf,       t > 0.0,
                                        std::isnan(l), l == kInf,       l == -kInf,
                                        l > 0.0,       std::isnan(r),   r == kInf,
                                        r == -kInf};
        for (int k = 0; k < kNumChecks; ++k)
            if (fails[k] && first[k] < 0) first[k] = base + static_cast<std::int64_t>(j);
    }
}

}  // namespace ips_detail

using namespace ips_detail;

// Rewards of a block outside [0, 1] (rescan of a block whose min or max is out of range).
std::int64_t count_outside(const double* c, std::size_t len) {
    std::int64_t k = 0;
    for (std::size_t j = 0; j < len; ++j) k += (c[j] < 0.0) | (c[j] > 1.0);
    return k;
}

// One chunk [0, n) of the three arrays into `out`. Has external linkage because GCC's
// target_clones wants it.
//
// Pass 1 keeps the checks cheap and branch-free: per block, "t <= 0" fails for NaN, > 0 and
// +inf (one compare); l * 0 and r * 0 are +-0 for finite values and NaN otherwise, summed into
// one accumulator each (NaN, +-inf); max(l) > 0 catches l > 0; min and max of r tell whether a
// reward is outside [0, 1] (the block is then counted element by element).
POPE_TARGET_CLONES
void ips_chunk_kernel(const double* lt, const double* ll, const double* rw, std::size_t n,
                      double clip, std::int64_t base, Partial* out) {
    alignas(32) double buf[kBlock];
    alignas(32) double pad_t[kBlock], pad_l[kBlock], pad_r[kBlock];
    const v4d clipv = splat4(clip);
    const v4d ninf = splat4(-kInf);
    v4d acc_w{}, acc_w2{}, acc_wr{}, acc_wr2{}, acc_w2r{};
    v4d lrmax = ninf;
    v4i cnt{};
    std::int64_t n_outside = 0;
    const v4d zero{};
    double m_run = -kInf;

    for (std::size_t s = 0; s < n; s += kBlock) {
        const std::size_t len = std::min(kBlock, n - s);
        const double* a = lt + s;
        const double* b = ll + s;
        const double* c = rw + s;
        if (len < kBlock) {
            // Tail: pad with zero-weight entries (l = -inf, reward 0).
            std::copy(a, a + len, pad_t);
            std::copy(b, b + len, pad_l);
            std::copy(c, c + len, pad_r);
            std::fill(pad_t + len, pad_t + kBlock, -kInf);
            std::fill(pad_l + len, pad_l + kBlock, 0.0);
            std::fill(pad_r + len, pad_r + kBlock, 0.0);
            a = pad_t;
            b = pad_l;
            c = pad_r;
        }
        // Pass 1: clipped log-ratio, block max, clip count, unclipped max, checks.
        v4d blr = ninf;
        v4i tbad{};
        v4d lmax = splat4(-kInf), lfin{}, rfin{}, rmin{}, rmax{};
        for (std::size_t j = 0; j < kBlock; j += 4) {
            const v4d t = load4(a + j), l = load4(b + j), r = load4(c + j);
            const v4d lr = t - l;
            store4(buf + j, lr < clipv ? lr : clipv);
            blr = lr > blr ? lr : blr;
            cnt -= (lr > clipv);
            tbad |= ~(t <= zero);
            lmax = l > lmax ? l : lmax;
            lfin = l * zero + lfin;
            rfin = r * zero + rfin;
            rmin = r < rmin ? r : rmin;
            rmax = r > rmax ? r : rmax;
        }
        const v4i lrbad = ~(lfin == zero) | ~(rfin == zero) | (lmax > zero) | tbad;
        if ((lrbad[0] | lrbad[1] | lrbad[2] | lrbad[3]) != 0)
            scan_bad(a, b, c, len, base + static_cast<std::int64_t>(s), out->first_bad);
        const v4i oob = (rmin < zero) | (rmax > splat4(1.0));
        if ((oob[0] | oob[1] | oob[2] | oob[3]) != 0) n_outside += count_outside(c, len);
        lrmax = blr > lrmax ? blr : lrmax;
        const double blr_max = hmax4(blr);
        const double bm = blr_max < clip ? blr_max : clip;  // = max_j min(lr_j, clip)
        if (bm > m_run) {
            const double sc = std::exp(m_run - bm);  // 0 on the first finite block
            const double sc2 = sc * sc;
            acc_w *= sc;
            acc_wr *= sc;
            acc_w2 *= sc2;
            acc_wr2 *= sc2;
            acc_w2r *= sc2;
            m_run = bm;
        }
        if (m_run == -kInf) continue;  // every weight so far is zero
        // Pass 2: scaled weights (arguments <= 0), in place; pass 3: their products with the
        // reward. Apart, neither loop runs out of vector registers (no accumulator spills).
        const v4d mv = splat4(m_run);
        for (std::size_t j = 0; j < kBlock; j += 4)
            store4(buf + j, exp_ftz_core<v4d, v4u>(load4(buf + j) - mv));
        for (std::size_t j = 0; j < kBlock; j += 4) {
            const v4d w = load4(buf + j);
            const v4d wr = w * load4(c + j);
            acc_w += w;
            acc_w2 += w * w;
            acc_wr += wr;
            acc_wr2 += wr * wr;
            acc_w2r += w * wr;
        }
    }
    out->m = m_run;
    out->sw = hsum4(acc_w);
    out->sw2 = hsum4(acc_w2);
    out->swr = hsum4(acc_wr);
    out->swr2 = hsum4(acc_wr2);
    out->sw2r = hsum4(acc_w2r);
    out->n_clipped = cnt[0] + cnt[1] + cnt[2] + cnt[3];  // each true lane subtracted -1
    out->max_lr = hmax4(lrmax);
    out->n_outside = n_outside;
}

namespace {

// The parallel pass and the in-order merge: o[0..9) the moments (MOMENT_NAMES), o[9] the
// number of rewards outside [0, 1], and the first failing index of each check (-1: none).
void ips_pass(const DArray& log_target, const DArray& log_logging, const DArray& reward,
              double log_clip, double* o, std::int64_t* first_bad) {
    require(log_target.ndim() == 1 && log_logging.ndim() == 1 && reward.ndim() == 1,
            "ips_moments: log_target, log_logging and reward must be 1-D");
    const py::ssize_t n_signed = log_target.shape(0);
    require(log_logging.shape(0) == n_signed && reward.shape(0) == n_signed,
            "ips_moments: log_target, log_logging and reward must have the same length");
    require(!std::isnan(log_clip), "ips_moments: log_clip must not be NaN");

    const std::size_t n = static_cast<std::size_t>(n_signed);
    std::fill(o, o + 10, 0.0);
    std::fill(first_bad, first_bad + kNumChecks, std::int64_t{-1});
    o[1] = static_cast<double>(n);
    if (n == 0) {
        o[0] = -kInf;
        o[8] = -kInf;
        return;
    }
    const double* lt = log_target.data();
    const double* ll = log_logging.data();
    const double* rw = reward.data();
    const std::size_t n_chunks = (n + kChunk - 1) / kChunk;
    std::vector<Partial> parts(n_chunks);
    {
        py::gil_scoped_release release;
        const int nt = num_threads(n, kMinPerThread, n_chunks);
        parallel_for(nt, n_chunks, 1, [&](int, std::size_t cb, std::size_t ce) {
            for (std::size_t ci = cb; ci < ce; ++ci) {
                const std::size_t s = ci * kChunk;
                const std::size_t len = std::min(kChunk, n - s);
                ips_chunk_kernel(lt + s, ll + s, rw + s, len, log_clip,
                                 static_cast<std::int64_t>(s), &parts[ci]);
            }
        });
    }
    double m = -kInf, max_lr = -kInf;
    std::int64_t n_clipped = 0, n_outside = 0;
    for (const Partial& p : parts) {
        m = std::max(m, p.m);
        max_lr = std::max(max_lr, p.max_lr);
        n_clipped += p.n_clipped;
        n_outside += p.n_outside;
        for (int k = 0; k < kNumChecks; ++k)  // chunks in order: the first one set wins
            if (first_bad[k] < 0) first_bad[k] = p.first_bad[k];
    }
    double sw = 0.0, sw2 = 0.0, swr = 0.0, swr2 = 0.0, sw2r = 0.0;
    if (m > -kInf) {
        for (const Partial& p : parts) {
            if (p.m == -kInf) continue;  // all weights of this chunk are zero
            const double sc = p.m == m ? 1.0 : std::exp(p.m - m);
            const double sc2 = sc * sc;
            sw += p.sw * sc;
            sw2 += p.sw2 * sc2;
            swr += p.swr * sc;
            swr2 += p.swr2 * sc2;
            sw2r += p.sw2r * sc2;
        }
    }
    o[0] = m;
    o[2] = sw;
    o[3] = sw2;
    o[4] = swr;
    o[5] = swr2;
    o[6] = sw2r;
    o[7] = static_cast<double>(n_clipped);
    o[8] = max_lr;
    o[9] = static_cast<double>(n_outside);
}

}  // namespace

DArray ips_moments(const DArray& log_target, const DArray& log_logging, const DArray& reward,
                   double log_clip) {
    double o[10];
    std::int64_t first_bad[kNumChecks];
    ips_pass(log_target, log_logging, reward, log_clip, o, first_bad);
    DArray out(9);
    std::copy(o, o + 9, out.mutable_data());
    return out;
}

std::tuple<DArray, IArray> ips_moments_checked(const DArray& log_target,
                                               const DArray& log_logging, const DArray& reward,
                                               double log_clip) {
    DArray out(10);
    IArray bad(kNumChecks);
    double* o = out.mutable_data();
    std::int64_t* fb = bad.mutable_data();
    ips_pass(log_target, log_logging, reward, log_clip, o, fb);
    bool any = false;
    for (int k = 0; k < kNumChecks; ++k) any = any || fb[k] >= 0;
    if (any) std::fill(o, o + 10, std::numeric_limits<double>::quiet_NaN());
    return {out, bad};
}

}  // namespace pope
