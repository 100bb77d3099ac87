// Segmented (per-prompt) weighted aspect histograms, their entropy, and the per-response
// diversity reward. Prompts are CSR segments [prompt_ptr[i], prompt_ptr[i+1]) of the response
// arrays. Threads take contiguous ranges of prompts; within a range, prompts are processed in
// batches (a few thousand responses / histogram cells) so that exp and log run as 4-lane
// vector loops over L1-resident buffers while every accumulation stays in response order (as
// np.bincount / np.add.at in the reference).
#include "pope_common.hpp"

namespace pope {

namespace cov_detail {

constexpr std::size_t kMinPerThread = std::size_t{1} << 15;  // responses + histogram cells
constexpr std::size_t kBatchResp = 2048;                     // responses per batch (soft)
constexpr std::size_t kBatchCells = 4096;                    // histogram cells per batch
constexpr std::size_t kGrainPrompts = 1024;                  // prompts per scheduling block

// Scratch buffers of one thread.
struct Scratch {
    std::vector<double> x, w, norm, cell_norm, t, pv;
    std::vector<std::uint32_t> occ;
    void reserve(std::size_t resp, std::size_t prompts, std::size_t cells) {
        if (x.size() < resp) x.resize(resp);
        if (w.size() < resp) w.resize(resp);
        if (pv.size() < resp + 4) pv.resize(resp + 4);
        if (occ.size() < resp + 1) occ.resize(resp + 1);
        if (norm.size() < prompts) norm.resize(prompts);
        if (cell_norm.size() < cells + 4) cell_norm.resize(cells + 4);
        if (t.size() < cells + 4) t.resize(cells + 4);
    }
};

// End of the batch of prompts starting at i (at least one prompt).
inline std::size_t batch_end(const std::int64_t* ptr, std::size_t i, std::size_t i1,
                             std::size_t C) {
    std::size_t j = i + 1;
    while (j < i1 && static_cast<std::size_t>(ptr[j + 1] - ptr[i]) <= kBatchResp &&
           (j + 1 - i) * C <= kBatchCells)
        ++j;
    return j;
}

// Weights of the responses of prompts [i, j) into sc.w (relative to ptr[i]):
// exp(l - max_i l) per prompt (self-normalised; shift 0 when the max is not finite) or exp(l).
POPE_INLINE void batch_weights(const std::int64_t* ptr, const double* lw, std::size_t i,
                          std::size_t j, bool self_normalize, Scratch& sc) {
    const std::size_t r0 = static_cast<std::size_t>(ptr[i]);
    const std::size_t R = static_cast<std::size_t>(ptr[j]) - r0;
    if (!self_normalize) {
        exp_array(lw + r0, R, sc.w.data());
        return;
    }
    for (std::size_t q = i; q < j; ++q) {
        const std::size_t s = static_cast<std::size_t>(ptr[q]);
        const std::size_t K = static_cast<std::size_t>(ptr[q + 1]) - s;
        const double mx = seg_max(lw + s, K);
        seg_sub(lw + s, K, std::isfinite(mx) ? mx : 0.0, sc.x.data() + (s - r0));
    }
    exp_array(sc.x.data(), R, sc.w.data());
}

// Rows [i, j) of hist (in p) become p = hist / norm (0 where norm == 0) and
// H[q] = -sum_c p log p (0 log 0 = 0), the row sums in column order.
POPE_INLINE void batch_normalise_entropy(double* p, double* H, std::size_t i, std::size_t j,
                                    std::size_t C, Scratch& sc) {
    const std::size_t ncell = (j - i) * C;
    double* rows = p + i * C;
    double* cn = sc.cell_norm.data();
    double* t = sc.t.data();
    for (std::size_t q = 0; q < j - i; ++q) {
        const double nq = sc.norm[q];
        for (std::size_t c = 0; c < C; ++c) cn[q * C + c] = nq;
    }
    const v4d zero{}, one = splat4(1.0);
    std::size_t k = 0;
    for (; k + 4 <= ncell; k += 4) {
        const v4d nv = load4(cn + k);
        const auto pos = nv > zero;
        v4d pc = load4(rows + k) / (pos ? nv : one);
        pc = pos ? pc : zero;
        const auto has = pc > zero;
        const v4d lg = log_core<v4d, v4u>(has ? pc : one);
        store4(rows + k, pc);
        store4(t + k, has ? pc * lg : zero);
    }
    for (; k < ncell; ++k) {
        const double nq = cn[k];
        const double pc = nq > 0.0 ? rows[k] / nq : 0.0;
        rows[k] = pc;
        t[k] = pc > 0.0 ? pc * log_scalar(pc) : 0.0;
    }
    for (std::size_t q = 0; q < j - i; ++q) {
        double s = 0.0;
        for (std::size_t c = 0; c < C; ++c) s += t[q * C + c];
        H[i + q] = -s;
    }
}

}  // namespace cov_detail

using namespace cov_detail;

// Hard labels. Per prompt: the histogram is built in its row of p, and the occupied cells are
// listed as they first receive a positive weight (branch-free append), so that only they need
// a log: H = -sum_{occupied c} p_c log p_c, the logs of a whole batch in one vector loop. The
// row is scaled by 1 / Z (one division per prompt: p within an ulp of hist / Z).
// Hard labels. Per prompt: the histogram is built in its row of p, Z is the row's sum and the
// row is scaled by 1 / Z (one division per prompt: p within an ulp of hist / Z); the cells are
// listed as they first receive a positive weight (branch-free append), so that only occupied
// cells need a log: p log p over the batch's list in one vector loop, written back into a
// zeroed dense buffer whose row sums give H = -sum_c p_c log p_c. Loops run over the C cells
// (a trip count that does not change between prompts) except the one over the responses.
POPE_TARGET_CLONES
void coverage_hard_kernel(const std::int64_t* ptr, const double* lw, const std::int64_t* labels,
                          std::size_t C, bool self_normalize, std::size_t i0, std::size_t i1,
                          double* p, double* H, bool* bad_label) {
    Scratch sc;
    bool bad = false;
    for (std::size_t i = i0; i < i1;) {
        const std::size_t j = batch_end(ptr, i, i1, C);
        const std::size_t r0 = static_cast<std::size_t>(ptr[i]);
        const std::size_t ncell = (j - i) * C;
        sc.reserve(static_cast<std::size_t>(ptr[j]) - r0, j - i, ncell);
        batch_weights(ptr, lw, i, j, self_normalize, sc);
        const double* w = sc.w.data();
        std::uint32_t* occ = sc.occ.data();
        double* pb = p + i * C;  // the batch's rows
        std::size_t nocc = 0;
        for (std::size_t q = 0; q < j - i; ++q) {
            double* row = pb + q * C;
            for (std::size_t c = 0; c < C; ++c) row[c] = 0.0;
            const std::size_t s = static_cast<std::size_t>(ptr[i + q]);
            const std::size_t e = static_cast<std::size_t>(ptr[i + q + 1]);
            const std::uint32_t cell0 = static_cast<std::uint32_t>(q * C);
            for (std::size_t k = s; k < e; ++k) {
                const std::int64_t a = labels[k];
                if (a < 0 || static_cast<std::uint64_t>(a) >= C) {
                    bad = true;
                    continue;
                }
                const double wk = w[k - r0];
                const double prev = row[a];
                occ[nocc] = cell0 + static_cast<std::uint32_t>(a);
                nocc += (prev == 0.0) & (wk > 0.0);
                row[a] = prev + wk;
            }
            const double norm = self_normalize ? row_sum(row, C) : static_cast<double>(e - s);
            if (norm > 0.0) {
                const double inv = 1.0 / norm;
                for (std::size_t c = 0; c < C; ++c) row[c] *= inv;
            }
        }
        double* pv = sc.pv.data();
        for (std::size_t o = 0; o < nocc; ++o) pv[o] = pb[occ[o]];
        xlogx_array(pv, nocc, pv);  // p log p; p == 0 (an underflow) gives 0
        double* t = sc.t.data();
        std::fill(t, t + ncell, 0.0);
        for (std::size_t o = 0; o < nocc; ++o) t[occ[o]] = pv[o];
        for (std::size_t q = 0; q < j - i; ++q) H[i + q] = -row_sum(t + q * C, C);
        i = j;
    }
    *bad_label = bad;
}

POPE_TARGET_CLONES
void coverage_soft_kernel(const std::int64_t* ptr, const double* lw, const double* soft,
                          std::size_t C, bool self_normalize, std::size_t i0, std::size_t i1,
                          double* p, double* H) {
    Scratch sc;
    for (std::size_t i = i0; i < i1;) {
        const std::size_t j = batch_end(ptr, i, i1, C);
        const std::size_t r0 = static_cast<std::size_t>(ptr[i]);
        sc.reserve(static_cast<std::size_t>(ptr[j]) - r0, j - i, (j - i) * C);
        batch_weights(ptr, lw, i, j, self_normalize, sc);
        const double* w = sc.w.data();
        for (std::size_t q = i; q < j; ++q) {
            double* row = p + q * C;
            std::fill(row, row + C, 0.0);
            const std::size_t s = static_cast<std::size_t>(ptr[q]);
            const std::size_t e = static_cast<std::size_t>(ptr[q + 1]);
            double z = 0.0;
            for (std::size_t k = s; k < e; ++k) {
                const double wk = w[k - r0];
                const double* qk = soft + k * C;
                for (std::size_t c = 0; c < C; ++c) row[c] += qk[c] * wk;
                z += wk;
            }
            sc.norm[q - i] = self_normalize ? z : static_cast<double>(e - s);
        }
        batch_normalise_entropy(p, H, i, j, C, sc);
        i = j;
    }
}

// d[k] = -log p[i(k), a_k] (0 where p == 0) for the responses of prompts [i0, i1).
POPE_TARGET_CLONES
void diversity_hard_kernel(const std::int64_t* ptr, const double* p, const std::int64_t* labels,
                           std::size_t C, std::size_t i0, std::size_t i1, double* d,
                           bool* bad_label) {
    bool bad = false;
    for (std::size_t i = i0; i < i1;) {
        const std::size_t j = batch_end(ptr, i, i1, 1);
        for (std::size_t q = i; q < j; ++q) {
            const double* row = p + q * C;
            for (std::int64_t k = ptr[q]; k < ptr[q + 1]; ++k) {
                const std::int64_t a = labels[k];
                if (a < 0 || static_cast<std::uint64_t>(a) >= C) {
                    bad = true;
                    d[k] = 0.0;
                    continue;
                }
                d[k] = row[a];
            }
        }
        // In place: d = p_k > 0 ? -log p_k : 0.
        double* dd = d + ptr[i];
        const std::size_t R = static_cast<std::size_t>(ptr[j] - ptr[i]);
        const v4d zero{}, one = splat4(1.0);
        std::size_t k = 0;
        for (; k + 4 <= R; k += 4) {
            const v4d pk = load4(dd + k);
            const auto has = pk > zero;
            const v4d lg = log_core<v4d, v4u>(has ? pk : one);
            store4(dd + k, has ? -lg : zero);
        }
        for (; k < R; ++k) dd[k] = dd[k] > 0.0 ? -log_scalar(dd[k]) : 0.0;
        i = j;
    }
    *bad_label = bad;
}

// d[k] = -sum_c q_k(c) log p[i(k), c] (terms with p == 0 count 0), prompts [i0, i1).
POPE_TARGET_CLONES
void diversity_soft_kernel(const std::int64_t* ptr, const double* p, const double* soft,
                           std::size_t C, std::size_t i0, std::size_t i1, double* d) {
    std::vector<double> logp(kBatchCells + 4 + C);
    const v4d zero{}, one = splat4(1.0);
    for (std::size_t i = i0; i < i1;) {
        const std::size_t j = batch_end(ptr, i, i1, C);
        const std::size_t ncell = (j - i) * C;
        if (logp.size() < ncell) logp.resize(ncell);
        const double* rows = p + i * C;
        double* lp = logp.data();
        std::size_t k = 0;
        for (; k + 4 <= ncell; k += 4) {
            const v4d pc = load4(rows + k);
            const auto has = pc > zero;
            const v4d lg = log_core<v4d, v4u>(has ? pc : one);
            store4(lp + k, has ? lg : zero);
        }
        for (; k < ncell; ++k) lp[k] = rows[k] > 0.0 ? log_scalar(rows[k]) : 0.0;
        for (std::size_t q = i; q < j; ++q) {
            const double* lrow = lp + (q - i) * C;
            for (std::int64_t r = ptr[q]; r < ptr[q + 1]; ++r) {
                const double* qk = soft + static_cast<std::size_t>(r) * C;
                double t = 0.0;
                for (std::size_t c = 0; c < C; ++c) t += qk[c] * lrow[c];
                d[r] = -t;
            }
        }
        i = j;
    }
}

namespace {

int coverage_threads(std::size_t n_prompts, std::size_t n_resp, std::size_t C) {
    return num_threads(n_resp * C + n_prompts * C, kMinPerThread, n_prompts);
}

// Prompts per scheduling block: about 4 blocks per thread, so that each thread writes long
// contiguous runs of the fresh output (threads interleaving small blocks fault in the same
// huge pages and wait for each other), and at least kGrainPrompts.
std::size_t coverage_grain(std::size_t n_prompts, int nt) {
    return std::max(kGrainPrompts, n_prompts / (4 * static_cast<std::size_t>(std::max(nt, 1))));
}

}  // namespace

std::tuple<DArray, DArray> segment_coverage_hard(const IArray& prompt_ptr,
                                                 const DArray& log_weight, const IArray& labels,
                                                 std::int64_t n_aspects, bool self_normalize) {
    require(log_weight.ndim() == 1, "segment_coverage_hard: log_weight must be 1-D");
    require(labels.ndim() == 1 && labels.shape(0) == log_weight.shape(0),
            "segment_coverage_hard: labels must be 1-D with the length of log_weight");
    require(n_aspects >= 1, "segment_coverage_hard: n_aspects must be >= 1");
    const std::size_t P = check_prompt_ptr(prompt_ptr, log_weight.shape(0));
    const std::size_t C = static_cast<std::size_t>(n_aspects);
    DArray p({static_cast<py::ssize_t>(P), static_cast<py::ssize_t>(C)});
    DArray H(static_cast<py::ssize_t>(P));
    const std::int64_t* ptr = prompt_ptr.data();
    const double* lw = log_weight.data();
    const std::int64_t* lab = labels.data();
    double* pp = p.mutable_data();
    double* hh = H.mutable_data();
    const int nt = coverage_threads(P, static_cast<std::size_t>(log_weight.shape(0)), C);
    std::vector<char> bad(static_cast<std::size_t>(nt), 0);
    {
        py::gil_scoped_release release;
        parallel_for(nt, P, coverage_grain(P, nt), [&](int tid, std::size_t b, std::size_t e) {
            bool flag = false;
            coverage_hard_kernel(ptr, lw, lab, C, self_normalize, b, e, pp, hh, &flag);
            if (flag) bad[static_cast<std::size_t>(tid)] = 1;
        });
    }
    for (char f : bad) require(!f, "segment_coverage_hard: labels must lie in [0, n_aspects)");
    return {p, H};
}

std::tuple<DArray, DArray> segment_coverage_soft(const IArray& prompt_ptr,
                                                 const DArray& log_weight, const DArray& soft,
                                                 bool self_normalize) {
    require(log_weight.ndim() == 1, "segment_coverage_soft: log_weight must be 1-D");
    require(soft.ndim() == 2 && soft.shape(0) == log_weight.shape(0),
            "segment_coverage_soft: soft must be (N, C) with N = len(log_weight)");
    require(soft.shape(1) >= 1, "segment_coverage_soft: soft needs at least one aspect");
    const std::size_t P = check_prompt_ptr(prompt_ptr, log_weight.shape(0));
    const std::size_t C = static_cast<std::size_t>(soft.shape(1));
    DArray p({static_cast<py::ssize_t>(P), static_cast<py::ssize_t>(C)});
    DArray H(static_cast<py::ssize_t>(P));
    const std::int64_t* ptr = prompt_ptr.data();
    const double* lw = log_weight.data();
    const double* q = soft.data();
    double* pp = p.mutable_data();
    double* hh = H.mutable_data();
    const int nt = coverage_threads(P, static_cast<std::size_t>(log_weight.shape(0)), C);
    {
        py::gil_scoped_release release;
        parallel_for(nt, P, coverage_grain(P, nt), [&](int, std::size_t b, std::size_t e) {
            coverage_soft_kernel(ptr, lw, q, C, self_normalize, b, e, pp, hh);
        });
    }
    return {p, H};
}

DArray diversity_reward_hard(const IArray& prompt_ptr, const DArray& p, const IArray& labels) {
    require(p.ndim() == 2 && p.shape(1) >= 1, "diversity_reward_hard: p must be (P, C)");
    require(labels.ndim() == 1, "diversity_reward_hard: labels must be 1-D");
    const std::size_t P = check_prompt_ptr(prompt_ptr, labels.shape(0));
    require(static_cast<std::size_t>(p.shape(0)) == P,
            "diversity_reward_hard: p must have one row per prompt");
    const std::size_t C = static_cast<std::size_t>(p.shape(1));
    const std::size_t N = static_cast<std::size_t>(labels.shape(0));
    DArray d(static_cast<py::ssize_t>(N));
    const std::int64_t* ptr = prompt_ptr.data();
    const double* pp = p.data();
    const std::int64_t* lab = labels.data();
    double* dd = d.mutable_data();
    const int nt = num_threads(N, kMinPerThread, P);
    std::vector<char> bad(static_cast<std::size_t>(nt), 0);
    {
        py::gil_scoped_release release;
        parallel_for(nt, P, coverage_grain(P, nt), [&](int tid, std::size_t b, std::size_t e) {
            bool flag = false;
            diversity_hard_kernel(ptr, pp, lab, C, b, e, dd, &flag);
            if (flag) bad[static_cast<std::size_t>(tid)] = 1;
        });
    }
    for (char f : bad) require(!f, "diversity_reward_hard: labels must lie in [0, C)");
    return d;
}

DArray diversity_reward_soft(const IArray& prompt_ptr, const DArray& p, const DArray& soft) {
    require(p.ndim() == 2 && p.shape(1) >= 1, "diversity_reward_soft: p must be (P, C)");
    require(soft.ndim() == 2 && soft.shape(1) == p.shape(1),
            "diversity_reward_soft: soft must be (N, C) with the C of p");
    const std::size_t P = check_prompt_ptr(prompt_ptr, soft.shape(0));
    require(static_cast<std::size_t>(p.shape(0)) == P,
            "diversity_reward_soft: p must have one row per prompt");
    const std::size_t C = static_cast<std::size_t>(p.shape(1));
    const std::size_t N = static_cast<std::size_t>(soft.shape(0));
    DArray d(static_cast<py::ssize_t>(N));
    const std::int64_t* ptr = prompt_ptr.data();
    const double* pp = p.data();
    const double* q = soft.data();
    double* dd = d.mutable_data();
    const int nt = num_threads(N * C + P * C, kMinPerThread, P);
    {
        py::gil_scoped_release release;
        parallel_for(nt, P, coverage_grain(P, nt), [&](int, std::size_t b, std::size_t e) {
            diversity_soft_kernel(ptr, pp, q, C, b, e, dd);
        });
    }
    return d;
}

}  // namespace pope
