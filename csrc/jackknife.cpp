// Delete-one-response jackknife of the per-prompt coverage entropy, one pass over the rows of
// each prompt with its histogram in a small per-thread buffer. Mirrors the NumPy algorithm of
// pope.coverage.jackknife_entropy_core (the reference, called by
// pope.backends.reference.segment_jackknife_entropy_*):
//
//   H^J_i = K_i H(p_i) - (K_i - 1)/K_i sum_k H(p_{i,-k}),  p_{i,-k} = (A_i - w_k q_k)/(Z_i - t_k)
//
// with the conventions of that docstring: K_i <= 1 gives the plug-in; the (first) largest-weight
// row's deletion uses the sums of the other rows, accumulated apart (no cancellation); a deletion
// that leaves no positive weight counts H(p_i); a prompt without positive weight gets 0.
// Entropies of a histogram a with normaliser z are (tot log z - sum_c a_c log a_c) / z,
// tot = sum_c a_c, as in the reference's leave-one-out formula.
#include "pope_common.hpp"

namespace pope {

namespace jk_detail {

constexpr std::size_t kMinPerThread = std::size_t{1} << 14;  // responses per thread
constexpr std::size_t kGrainPrompts = 512;

inline double xlogx(double x) { return x > 0.0 ? x * log_scalar(x) : 0.0; }

// (tot log z - g) / z for z > 0, else `fallback`.
inline double hist_entropy(double tot, double g, double z, double fallback) {
    return z > 0.0 ? (tot * log_scalar(z) - g) / z : fallback;
}

struct Scratch {
    std::vector<double> w, a, a_ex, xa, t0, t1;
    void reserve(std::size_t rows, std::size_t C) {
        if (w.size() < rows + 4) {
            w.resize(rows + 4);
            t0.resize(rows + 4);
            t1.resize(rows + 4);
        }
        if (a.size() < C + 4) {
            a.resize(C + 4);
            a_ex.resize(C + 4);
            xa.resize(C + 4);
        }
    }
};

// y[k] = exp(x[k] - shift) for k < n, 4 lanes at a time.
POPE_INLINE void exp_shift_array(const double* x, double shift, std::size_t n, double* y) {
    const v4d sv = splat4(shift);
    std::size_t k = 0;
    for (; k + 4 <= n; k += 4) store4(y + k, exp_core<v4d, v4u>(load4(x + k) - sv));
    for (; k < n; ++k) y[k] = exp_scalar(x[k] - shift);
}

// Weights of the rows [s, e) into sc.w; returns the row of the (first) largest finite log
// weight, or SIZE_MAX when none is finite.
inline std::size_t prompt_weights(const double* lw, std::size_t s, std::size_t e,
                                  bool self_normalize, Scratch& sc) {
    double mx = -kInf;
    std::size_t star = SIZE_MAX;
    for (std::size_t k = s; k < e; ++k)
        if (lw[k] > mx) {
            mx = lw[k];
            star = k;
        }
    if (!std::isfinite(mx)) star = SIZE_MAX;
    const double shift = self_normalize && star != SIZE_MAX ? mx : 0.0;
    exp_shift_array(lw + s, shift, e - s, sc.w.data());
    return star;
}

// Buffers of one thread for a batch of prompts (hard labels).
struct HardBatch {
    std::vector<double> x, w, A, XA, na, inv, pz;
    std::vector<std::uint32_t> cell, star;
    void reserve(std::size_t rows, std::size_t prompts, std::size_t cells) {
        if (x.size() < rows + 4) {
            for (auto* v : {&x, &w, &inv}) v->resize(rows + 4);
            na.resize(3 * rows + 12);  // a_k, numerators, denominators
            XA.resize(3 * rows + 12);  // their logs
            cell.resize(rows + 4);
        }
        if (A.size() < cells + 4) A.resize(cells + 4);
        if (star.size() < prompts + 1) {
            star.resize(prompts + 1);
            pz.resize(10 * prompts + 4);
        }
    }
};

constexpr std::uint32_t kNone = 0xFFFFFFFFu;
constexpr std::size_t kBatchResp = 512;   // responses per batch
constexpr std::size_t kBatchCells = 1024;  // histogram cells per batch

inline std::size_t jk_batch_end(const std::int64_t* ptr, std::size_t i, std::size_t i1,
                                std::size_t C) {
    std::size_t j = i + 1;
    while (j < i1 && static_cast<std::size_t>(ptr[j + 1] - ptr[i]) <= kBatchResp &&
           (j + 1 - i) * C <= kBatchCells)
        ++j;
    return j;
}

// sum_c x[c] over the C cells of a row but cell `skip` (C or more: none); lanes are masked,
// so the loop's trip count does not depend on `skip`.
POPE_INLINE double row_sum_except(const double* x, std::size_t C, std::size_t skip) {
    const v4i sk = v4i{} + static_cast<std::int64_t>(skip);
    v4i idx = {0, 1, 2, 3};
    v4d acc{};
    std::size_t c = 0;
    for (; c + 4 <= C; c += 4) {
        acc += idx != sk ? load4(x + c) : v4d{};
        idx += 4;
    }
    double s = hsum4(acc);
    for (; c < C; ++c) s += c != skip ? x[c] : 0.0;
    return s;
}

// First k < K with x[k] == v, K when there is none: compares of 4 lanes, the overlapping
// loads of seg_max for 4 <= K <= 16 merged into one bit mask (a lane's bit is its row's,
// whichever load it came from).
POPE_INLINE std::size_t seg_first_equal(const double* x, std::size_t K, double v) {
    const v4d vv = splat4(v);
    auto bits = [](v4i m) {
        return static_cast<unsigned>((m[0] & 1) | (m[1] & 2) | (m[2] & 4) | (m[3] & 8));
    };
    if (K >= 4 && K <= 8) {
        const unsigned m = bits(load4(x) == vv) | bits(load4(x + K - 4) == vv) << (K - 4);
        return m != 0 ? static_cast<std::size_t>(__builtin_ctz(m)) : K;
    }
    if (K > 8 && K <= 16) {
        const unsigned m = bits(load4(x) == vv) | bits(load4(x + 4) == vv) << 4 |
                           bits(load4(x + K - 8) == vv) << (K - 8) |
                           bits(load4(x + K - 4) == vv) << (K - 4);
        return m != 0 ? static_cast<std::size_t>(__builtin_ctz(m)) : K;
    }
    std::size_t k = 0;
    while (k < K && x[k] != v) ++k;
    return k;
}

}  // namespace jk_detail

using namespace jk_detail;

// Prompts [i0, i1), hard labels, in batches of prompts (a few thousand rows and cells).
//
// A deletion changes one cell: with a_k = A[c_k], n_k = a_k - w_k, d_k = Z - t_k,
// T = sum_c A_c and G = sum_c A_c log A_c = sum_k w_k log a_k,
//
//   H_{-k} = ((T - w_k) log d_k - (G - a_k log a_k + n_k log n_k)) / d_k.
//
// Self-normalised, Z is taken as T (the row sum of the histogram), so T - w_k = d_k and
// H_{-k} = log d_k - (G - a_k log a_k + n_k log n_k) / d_k: the deletions' sum is
// L - G S2 + S3 with L = sum_k log d_k = log prod_k d_k (one log per prompt: every d_k of a
// row other than the largest lies in [w*, K] = [1, K], so products of 32 of them are finite),
// S2 = sum_k 1 / d_k and S3 = sum_k (a_k log a_k - n_k log n_k) / d_k. IPS (Z = K): d_k =
// K - 1 for all rows, so the first term is log(K - 1) / (K - 1) sum_k (T + n_k - a_k). Two
// logs per row (a_k, n_k), in one vector loop per batch, and one division.
//
// Per prompt: the (first) largest row by vector compares against max l (seg_first_equal); one
// loop over the rows builds the histogram (a dense batch buffer, zeroed over its C cells); a
// second reads each row's cell a_k and forms n_k, d_k, the product of the d_k and the largest
// row's cell without it, a*_ex, so that Z_ex = (the other cells) + a*_ex has no cancellation;
// a third, after the batch's logs, sums the terms. Deletions that would leave no weight do not
// occur past the prompt-level checks (self-normalised, the largest row has weight 1, so
// d_k >= 1 for the others; IPS, d_k = K - 1 >= 1); the largest row's deletion counts H_ex,
// from the sums without it. Labels outside [0, C) set *bad_label (the caller raises).
template <bool self_normalize>
POPE_INLINE void jackknife_hard_body(const std::int64_t* ptr, const double* lw,
                                     const std::int64_t* lab, std::size_t C, std::size_t i0,
                                     std::size_t i1, double* out, bool* bad_label) {
    constexpr std::size_t kProdRows = 32;  // factors per product of the d_k
    HardBatch bt;
    bool bad = false;
    for (std::size_t i = i0; i < i1;) {
        const std::size_t j = jk_batch_end(ptr, i, i1, C);
        const std::size_t nq = j - i;
        const std::size_t r0 = static_cast<std::size_t>(ptr[i]);
        const std::size_t R = static_cast<std::size_t>(ptr[j]) - r0;
        bt.reserve(R, nq, nq * C);
        double* w = bt.w.data();
        // per prompt, in blocks of nq: Z, Z_ex, a*_ex, prod d_k; their logs; max l; the
        // logs of the full products of d_k (prompts of more than kProdRows rows)
        double* pz = bt.pz.data();
        double* lz = pz + 4 * nq;
        double* pmx = pz + 8 * nq;
        double* lpx = pz + 9 * nq;
        // weights: exp(l - max l) (self-normalised) or exp(l)
        for (std::size_t q = 0; q < nq; ++q) {
            const std::size_t s = static_cast<std::size_t>(ptr[i + q]);
            const std::size_t K = static_cast<std::size_t>(ptr[i + q + 1]) - s;
            const double mx = seg_max(lw + s, K);
            pmx[q] = mx;
            seg_sub(lw + s, K, self_normalize && std::isfinite(mx) ? mx : 0.0,
                    bt.x.data() + (s - r0));
        }
        exp_array(bt.x.data(), R, w);
        double* A = bt.A.data();
        std::uint32_t* cell = bt.cell.data();
        // a_k and n_k in one buffer, so that one vector loop takes their logs; then d_k
        const std::size_t R4 = (R + 3) & ~std::size_t{3};
        double* ac = bt.na.data();
        double* na = ac + R4;
        double* den = na + R4;
        for (std::size_t q = 0; q < nq; ++q) {
            double* row = A + q * C;
            for (std::size_t c = 0; c < C; ++c) row[c] = 0.0;
            const std::size_t s = static_cast<std::size_t>(ptr[i + q]) - r0;
            const std::size_t e = static_cast<std::size_t>(ptr[i + q + 1]) - r0;
            std::uint32_t* cq = cell + s;  // the prompt's cells, relative to its row
            for (std::size_t k = s; k < e; ++k) {
                std::int64_t a = lab[r0 + k];
                if (a < 0 || static_cast<std::uint64_t>(a) >= C) {
                    bad = true;
                    a = 0;
                }
                cell[k] = static_cast<std::uint32_t>(a);
                row[a] += w[k];
            }
            // the (first) largest row; none when no log weight is finite
            const std::size_t kst =
                std::isfinite(pmx[q]) ? seg_first_equal(lw + r0 + s, e - s, pmx[q]) : e - s;
            const std::uint32_t st = kst < e - s ? static_cast<std::uint32_t>(s + kst) : kNone;
            bt.star[q] = st;
            const double K = static_cast<double>(e - s);
            const double z = self_normalize ? row_sum(row, C) : K;  // T (self-normalised) or K
            pz[q] = z;
            // second loop over the prompt's rows, its histogram complete (in L1)
            const std::uint32_t cs = st != kNone ? cell[st] : kNone;
            double a_ex = 0.0;  // the largest row's cell without it
            double prod = 1.0, lprod = 0.0;
            std::size_t nprod = 0;
            for (std::size_t k = s; k < e; ++k) {
                const double wk = w[k];
                const double a = row[cq[k - s]];
                const bool not_star = k != st;
                const double dk = z - (self_normalize ? wk : 1.0);
                ac[k] = a;
                na[k] = std::max(a - wk, 0.0);
                den[k] = dk;
                a_ex += wk * static_cast<double>((cq[k - s] == cs) & not_star);
                if constexpr (self_normalize) {
                    prod *= not_star ? dk : 1.0;
                    if (++nprod == kProdRows) [[unlikely]] {
                        lprod += log_pos1(prod);
                        prod = 1.0;
                        nprod = 0;
                    }
                }
            }
            // the weight without the largest row: the other cells and a*_ex (no cancellation)
            pz[nq + q] = self_normalize ? row_sum_except(row, C, cs) + a_ex : K - 1.0;
            pz[2 * nq + q] = a_ex;
            pz[3 * nq + q] = self_normalize ? prod : K - 1.0;  // IPS: log(K - 1)
            lpx[q] = lprod;
        }
        // the batch's reciprocals and logs
        double* inv = bt.inv.data();
        const v4d zero{}, one = splat4(1.0);
        std::size_t k = 0;
        for (; k + 4 <= R; k += 4) {
            const v4d d = load4(den + k);
            const auto pos = d > zero;
            store4(inv + k, pos ? one / (pos ? d : one) : zero);
        }
        for (; k < R; ++k) inv[k] = den[k] > 0.0 ? 1.0 / den[k] : 0.0;
        for (k = R; k < R4; ++k) ac[k] = na[k] = 0.0;  // padding
        // log a_k, log n_k (0 where n_k = 0); per prompt log Z, log Z_ex, log a*_ex, log prod
        log_pos_array(ac, 2 * R4, bt.XA.data());
        const double* la = bt.XA.data();
        const double* lna = la + R4;
        log_pos_array(pz, 4 * nq, lz);
        for (std::size_t q = 0; q < nq; ++q) {
            const std::size_t s = static_cast<std::size_t>(ptr[i + q]) - r0;
            const std::size_t e = static_cast<std::size_t>(ptr[i + q + 1]) - r0;
            const std::size_t Kn = e - s;
            if (Kn == 0) {
                out[i + q] = 0.0;
                continue;
            }
            const std::uint32_t st = bt.star[q];
            const std::uint32_t cs = st != kNone ? cell[st] : kNone;
            double g0 = 0.0, s2 = 0.0, s3 = 0.0, sa = 0.0;
            for (std::size_t r = s; r < e; ++r) {
                const double other = static_cast<double>(cell[r] != cs);  // outside c*
                g0 += w[r] * la[r] * other;
                const double a = ac[r];
                const double nk = na[r];
                const double iv = inv[r] * static_cast<double>(r != st);  // star: apart
                s2 += iv;
                s3 += (a * la[r] - nk * lna[r]) * iv;
                if constexpr (!self_normalize) sa += (nk - a) * static_cast<double>(r != st);
            }
            const double t0 = row_sum_except(A + q * C, C, cs);  // the cells other than c*
            const double a_cs = st != kNone ? ac[st] : 0.0;
            const double g = st != kNone ? g0 + a_cs * la[st] : g0;
            const double z = pz[q], z_ex = pz[nq + q], a_ex = pz[2 * nq + q];
            const double tot = self_normalize ? z : t0 + a_cs;
            const double h = z > 0.0 ? (tot * lz[q] - g) / z : 0.0;
            if (Kn == 1 || !(z > 0.0)) {
                out[i + q] = Kn == 1 ? h : 0.0;
                continue;
            }
            double h_ex = h;  // the largest row's deletion, from the sums without it
            if (st != kNone && z_ex > 0.0)
                h_ex = ((t0 + a_ex) * lz[nq + q] - (g0 + a_ex * lz[2 * nq + q])) / z_ex;
            const double kf = static_cast<double>(Kn);
            // sum over the deletions of the rows other than the largest of (T - w_k) log d_k / d_k
            const double lsum =
                self_normalize ? lz[3 * nq + q] + lpx[q]
                               : lz[3 * nq + q] / (kf - 1.0) * ((kf - 1.0) * tot + sa);
            double acc = lsum - g * s2 + s3;
            if (st != kNone) acc += h_ex;
            out[i + q] = kf * h - (kf - 1.0) / kf * acc;
        }
        i = j;
    }
    *bad_label = bad;
}

POPE_TARGET_CLONES
void jackknife_hard_kernel(const std::int64_t* ptr, const double* lw, const std::int64_t* lab,
                           std::size_t C, bool self_normalize, std::size_t i0, std::size_t i1,
                           double* out, bool* bad_label) {
    if (self_normalize)
        jackknife_hard_body<true>(ptr, lw, lab, C, i0, i1, out, bad_label);
    else
        jackknife_hard_body<false>(ptr, lw, lab, C, i0, i1, out, bad_label);
}

// Prompts [i0, i1), soft rows q (N, C).
POPE_TARGET_CLONES
void jackknife_soft_kernel(const std::int64_t* ptr, const double* lw, const double* q,
                           std::size_t C, bool self_normalize, std::size_t i0, std::size_t i1,
                           double* out) {
    Scratch sc;
    for (std::size_t i = i0; i < i1; ++i) {
        const std::size_t s = static_cast<std::size_t>(ptr[i]);
        const std::size_t e = static_cast<std::size_t>(ptr[i + 1]);
        const std::size_t K = e - s;
        if (K == 0) {
            out[i] = 0.0;
            continue;
        }
        sc.reserve(K, C);
        const std::size_t star = prompt_weights(lw, s, e, self_normalize, sc);
        const double* w = sc.w.data();
        double* a = sc.a.data();
        double* a_ex = sc.a_ex.data();
        std::fill(a_ex, a_ex + C, 0.0);
        double z_ex = 0.0;
        for (std::size_t k = s; k < e; ++k) {
            if (k == star) continue;
            const double wk = w[k - s];
            const double* qk = q + k * C;
            for (std::size_t c = 0; c < C; ++c) a_ex[c] += qk[c] * wk;
            z_ex += wk;
        }
        std::copy(a_ex, a_ex + C, a);
        double w_star = 0.0;
        if (star != SIZE_MAX) {
            w_star = w[star - s];
            const double* qs = q + star * C;
            for (std::size_t c = 0; c < C; ++c) a[c] += qs[c] * w_star;
        }
        const double kf = static_cast<double>(K);
        double z;
        if (self_normalize) {
            z = star != SIZE_MAX ? z_ex + w_star : z_ex;
        } else {
            z = kf;
            z_ex = kf - 1.0;
        }
        double tot = 0.0, g = 0.0, tot_ex = 0.0, g_ex = 0.0;
        for (std::size_t c = 0; c < C; ++c) {
            tot += a[c];
            g += xlogx(a[c]);
            tot_ex += a_ex[c];
            g_ex += xlogx(a_ex[c]);
        }
        const double h = hist_entropy(tot, g, z, 0.0);
        if (K == 1) {
            out[i] = h;
            continue;
        }
        if (!(z > 0.0)) {
            out[i] = 0.0;
            continue;
        }
        const double h_ex = star != SIZE_MAX ? hist_entropy(tot_ex, g_ex, z_ex, h) : h;
        double s_del = 0.0;
        for (std::size_t k = s; k < e; ++k) {
            if (k == star) {
                s_del += h_ex;
                continue;
            }
            const double wk = w[k - s];
            const double den = z - (self_normalize ? wk : 1.0);
            if (!(den > 0.0)) {
                s_del += h;
                continue;
            }
            const double* qk = q + k * C;
            double* nc = sc.xa.data();
            double* lg = sc.a_ex.data();  // a_ex is no longer needed
            double tn = 0.0, gn = 0.0;
            for (std::size_t c = 0; c < C; ++c) {
                nc[c] = std::max(a[c] - qk[c] * wk, 0.0);
                tn += nc[c];
            }
            log_pos_array(nc, C, lg);
            for (std::size_t c = 0; c < C; ++c) gn += nc[c] * lg[c];
            s_del += (tn * log_scalar(den) - gn) / den;
        }
        out[i] = kf * h - (kf - 1.0) / kf * s_del;
    }
}

DArray segment_jackknife_entropy_hard(const IArray& prompt_ptr, const DArray& log_weight,
                                      const IArray& labels, std::int64_t n_aspects,
                                      bool self_normalize) {
    require(log_weight.ndim() == 1, "segment_jackknife_entropy_hard: log_weight must be 1-D");
    require(labels.ndim() == 1 && labels.shape(0) == log_weight.shape(0),
            "segment_jackknife_entropy_hard: labels must be 1-D with the length of log_weight");
    require(n_aspects >= 1, "segment_jackknife_entropy_hard: n_aspects must be >= 1");
    const std::size_t P = check_prompt_ptr(prompt_ptr, log_weight.shape(0));
    const std::size_t C = static_cast<std::size_t>(n_aspects);
    const std::size_t N = static_cast<std::size_t>(log_weight.shape(0));
    DArray out(static_cast<py::ssize_t>(P));
    double* o = out.mutable_data();
    const std::int64_t* lab = labels.data();
    if (N == 0 || C == 1) {
        for (std::size_t k = 0; k < N; ++k)
            require(lab[k] >= 0 && static_cast<std::size_t>(lab[k]) < C,
                    "segment_jackknife_entropy_hard: labels must lie in [0, n_aspects)");
        std::fill(o, o + P, 0.0);
        return out;
    }
    const std::int64_t* ptr = prompt_ptr.data();
    const double* lw = log_weight.data();
    const int nt = num_threads(N, kMinPerThread, P);
    std::vector<char> bad(static_cast<std::size_t>(nt), 0);
    {
        py::gil_scoped_release release;
        parallel_for(nt, P, kGrainPrompts, [&](int tid, std::size_t b, std::size_t e) {
            bool flag = false;
            jackknife_hard_kernel(ptr, lw, lab, C, self_normalize, b, e, o, &flag);
            if (flag) bad[static_cast<std::size_t>(tid)] = 1;
        });
    }
    for (char f : bad)
        require(!f, "segment_jackknife_entropy_hard: labels must lie in [0, n_aspects)");
    return out;
}

DArray segment_jackknife_entropy_soft(const IArray& prompt_ptr, const DArray& log_weight,
                                      const DArray& soft, bool self_normalize) {
    require(log_weight.ndim() == 1, "segment_jackknife_entropy_soft: log_weight must be 1-D");
    require(soft.ndim() == 2 && soft.shape(0) == log_weight.shape(0),
            "segment_jackknife_entropy_soft: soft must be (N, C) with N = len(log_weight)");
    require(soft.shape(1) >= 1, "segment_jackknife_entropy_soft: soft needs at least one aspect");
    const std::size_t P = check_prompt_ptr(prompt_ptr, log_weight.shape(0));
    const std::size_t C = static_cast<std::size_t>(soft.shape(1));
    const std::size_t N = static_cast<std::size_t>(log_weight.shape(0));
    DArray out(static_cast<py::ssize_t>(P));
    double* o = out.mutable_data();
    if (C == 1 || N == 0) {
        std::fill(o, o + P, 0.0);
        return out;
    }
    const std::int64_t* ptr = prompt_ptr.data();
    const double* lw = log_weight.data();
    const double* q = soft.data();
    {
        py::gil_scoped_release release;
        const int nt = num_threads(N * C, kMinPerThread, P);
        parallel_for(nt, P, kGrainPrompts, [&](int, std::size_t b, std::size_t e) {
            jackknife_soft_kernel(ptr, lw, q, C, self_normalize, b, e, o);
        });
    }
    return out;
}

}  // namespace pope
