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

}  // namespace jk_detail

using namespace jk_detail;

// Prompts [i0, i1), hard labels (already checked to lie in [0, C)).
POPE_TARGET_CLONES
void jackknife_hard_kernel(const std::int64_t* ptr, const double* lw, const std::int64_t* lab,
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
        std::fill(a, a + C, 0.0);
        double z_ex = 0.0;
        for (std::size_t k = s; k < e; ++k) {  // sums without the largest-weight row
            if (k == star) continue;
            a[lab[k]] += w[k - s];
            z_ex += w[k - s];
        }
        double a_star_ex = 0.0, w_star = 0.0;
        std::size_t c_star = 0;
        if (star != SIZE_MAX) {
            c_star = static_cast<std::size_t>(lab[star]);
            w_star = w[star - s];
            a_star_ex = a[c_star];
            a[c_star] += w_star;
        }
        const double kf = static_cast<double>(K);
        double z;
        if (self_normalize) {
            z = star != SIZE_MAX ? z_ex + w_star : z_ex;
        } else {
            z = kf;
            z_ex = kf - 1.0;
        }
        // a log a per cell (vector logs); totals over the cells other than the largest-weight
        // row's, then with that cell
        double* xa = sc.xa.data();
        log_pos_array(a, C, xa);
        double tot_o = 0.0, g_o = 0.0;
        for (std::size_t c = 0; c < C; ++c) {
            xa[c] *= a[c];
            if (star != SIZE_MAX && c == c_star) continue;
            tot_o += a[c];
            g_o += xa[c];
        }
        double tot = tot_o, g = g_o;
        if (star != SIZE_MAX) {
            tot += a[c_star];
            g += xa[c_star];
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
        double h_ex = h;
        if (star != SIZE_MAX)  // summed afresh: no cancellation against the largest weight
            h_ex = hist_entropy(tot_o + a_star_ex, g_o + xlogx(a_star_ex), z_ex, h);
        // leave-one-out numerators a_k - w_k and denominators z - t_k, then their logs
        double* na = sc.t0.data();
        double* den = sc.t1.data();
        for (std::size_t k = s; k < e; ++k) {
            const double wk = w[k - s];
            na[k - s] = std::max(a[lab[k]] - wk, 0.0);
            den[k - s] = z - (self_normalize ? wk : 1.0);
        }
        log_pos_array(na, K, na);  // in place: na and den now hold the logs
        log_pos_array(den, K, den);
        const double* lna = na;
        double s_del = 0.0;
        for (std::size_t k = s; k < e; ++k) {
            if (k == star) {
                s_del += h_ex;
                continue;
            }
            const double wk = w[k - s];
            const double d = z - (self_normalize ? wk : 1.0);
            if (!(d > 0.0)) {
                s_del += h;
                continue;
            }
            const double aa = a[lab[k]];
            const double nk = std::max(aa - wk, 0.0);
            const double sum_num = tot - aa + nk;
            const double sum_g = g - xa[lab[k]] + nk * lna[k - s];
            s_del += (sum_num * den[k - s] - sum_g) / d;
        }
        out[i] = kf * h - (kf - 1.0) / kf * s_del;
    }
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
    for (std::size_t k = 0; k < N; ++k)
        require(lab[k] >= 0 && static_cast<std::size_t>(lab[k]) < C,
                "segment_jackknife_entropy_hard: labels must lie in [0, n_aspects)");
    if (C == 1 || N == 0) {
        std::fill(o, o + P, 0.0);
        return out;
    }
    const std::int64_t* ptr = prompt_ptr.data();
    const double* lw = log_weight.data();
    {
        py::gil_scoped_release release;
        const int nt = num_threads(N, kMinPerThread, P);
        parallel_for(nt, P, kGrainPrompts, [&](int, std::size_t b, std::size_t e) {
            jackknife_hard_kernel(ptr, lw, lab, C, self_normalize, b, e, o);
        });
    }
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
