// Elementary symmetric sums of importance-weighted aspect rows per prompt: the un-normalised
// U-statistic power sums of pope.power_sums (reference: power_sums_reference). For prompt i,
// e_j(x_{.c}) with x_kc = w_k q_k(c) by the recursion e_j += x_k e_{j-1} (descending j) over
// the responses in stored order; returned are E_P[i, j] = sum_c e_j(x_{.c}) and
// E_S[i, j] = e_j(w). Only sums of non-negative products: no cancellation. Threads take blocks
// of whole prompts; each prompt's result depends only on its own rows and is computed in
// response order, so results are bit-identical whatever the thread count.
#include "pope_common.hpp"

namespace pope {

namespace ps_detail {

constexpr std::size_t kGrain = 512;  // prompts per scheduling block

void check_common(const IArray& prompt_ptr, const DArray& weight, std::int64_t degree,
                  std::size_t* P) {
    require(weight.ndim() == 1, "elementary_sums: weight must be 1-D");
    require(degree >= 0 && degree <= 64, "elementary_sums: degree must be in [0, 64]");
    *P = check_prompt_ptr(prompt_ptr, weight.shape(0));
}

}  // namespace ps_detail

std::tuple<DArray, DArray> elementary_sums_hard(const IArray& prompt_ptr, const DArray& weight,
                                                const IArray& labels, std::int64_t n_aspects,
                                                std::int64_t degree) {
    std::size_t P = 0;
    ps_detail::check_common(prompt_ptr, weight, degree, &P);
    require(labels.ndim() == 1 && labels.shape(0) == weight.shape(0),
            "elementary_sums_hard: labels must be 1-D with the length of weight");
    require(n_aspects >= 1, "elementary_sums_hard: n_aspects must be >= 1");
    const std::size_t C = static_cast<std::size_t>(n_aspects);
    const std::size_t L1 = static_cast<std::size_t>(degree) + 1;
    DArray ep({static_cast<py::ssize_t>(P), static_cast<py::ssize_t>(L1)});
    DArray es({static_cast<py::ssize_t>(P), static_cast<py::ssize_t>(L1)});
    const std::int64_t* ptr = prompt_ptr.data();
    const double* w = weight.data();
    const std::int64_t* lab = labels.data();
    double* pp = ep.mutable_data();
    double* ss = es.mutable_data();
    const std::size_t n = static_cast<std::size_t>(weight.shape(0));
    const int nt = num_threads(n * L1 + P * C * L1, std::size_t{1} << 16, P);
    std::vector<char> bad(static_cast<std::size_t>(nt), 0);
    {
        py::gil_scoped_release release;
        parallel_for(nt, P, ps_detail::kGrain, [&](int tid, std::size_t b, std::size_t e) {
            std::vector<double> st(C * L1), ws(L1);
            std::vector<std::int64_t> touched;
            for (std::size_t i = b; i < e; ++i) {
                std::fill(ws.begin(), ws.end(), 0.0);
                ws[0] = 1.0;
                const std::size_t r0 = static_cast<std::size_t>(ptr[i]);
                const std::size_t r1 = static_cast<std::size_t>(ptr[i + 1]);
                touched.clear();
                for (std::size_t r = r0; r < r1; ++r) {
                    const std::int64_t a = lab[r];
                    if (a < 0 || a >= n_aspects) {
                        bad[static_cast<std::size_t>(tid)] = 1;
                        continue;
                    }
                    double* sa = st.data() + static_cast<std::size_t>(a) * L1;
                    if (sa[0] == 0.0) {  // first response with this aspect: reset its state
                        std::fill(sa, sa + L1, 0.0);
                        sa[0] = 1.0;
                        touched.push_back(a);
                    }
                    const double x = w[r];
                    const std::size_t top = std::min(L1 - 1, r - r0 + 1);
                    for (std::size_t j = top; j >= 1; --j) {
                        ws[j] += x * ws[j - 1];
                        sa[j] += x * sa[j - 1];
                    }
                }
                double* po = pp + i * L1;
                double* so = ss + i * L1;
                for (std::size_t j = 0; j < L1; ++j) {
                    po[j] = 0.0;
                    so[j] = ws[j];
                }
                // aspects summed in increasing label order (as the reference's sum over C):
                // with C <= 64 the touched labels are the set bits of a mask, else sorted
                auto add_state = [&](std::size_t a) {
                    double* sa = st.data() + a * L1;
                    for (std::size_t j = 1; j < L1; ++j) po[j] += sa[j];
                    sa[0] = 0.0;  // marks the state as stale for the next prompt
                };
                if (C <= 64) {
                    std::uint64_t mask = 0;
                    for (std::int64_t a : touched) mask |= std::uint64_t{1} << a;
                    while (mask) {
                        add_state(static_cast<std::size_t>(__builtin_ctzll(mask)));
                        mask &= mask - 1;
                    }
                } else {
                    std::sort(touched.begin(), touched.end());
                    for (std::int64_t a : touched) add_state(static_cast<std::size_t>(a));
                }
                po[0] = 1.0;
            }
        });
    }
    for (char f : bad) require(!f, "elementary_sums_hard: labels must lie in [0, n_aspects)");
    return {ep, es};
}

std::tuple<DArray, DArray> elementary_sums_soft(const IArray& prompt_ptr, const DArray& weight,
                                                const DArray& soft, std::int64_t degree) {
    std::size_t P = 0;
    ps_detail::check_common(prompt_ptr, weight, degree, &P);
    require(soft.ndim() == 2 && soft.shape(0) == weight.shape(0),
            "elementary_sums_soft: soft must be (N, C) with N the length of weight");
    const std::size_t C = static_cast<std::size_t>(soft.shape(1));
    const std::size_t L1 = static_cast<std::size_t>(degree) + 1;
    DArray ep({static_cast<py::ssize_t>(P), static_cast<py::ssize_t>(L1)});
    DArray es({static_cast<py::ssize_t>(P), static_cast<py::ssize_t>(L1)});
    const std::int64_t* ptr = prompt_ptr.data();
    const double* w = weight.data();
    const double* q = soft.data();
    double* pp = ep.mutable_data();
    double* ss = es.mutable_data();
    const std::size_t n = static_cast<std::size_t>(weight.shape(0));
    const int nt = num_threads(n * L1 * (C + 1), std::size_t{1} << 16, P);
    {
        py::gil_scoped_release release;
        parallel_for(nt, P, ps_detail::kGrain, [&](int, std::size_t b, std::size_t e) {
            std::vector<double> st(L1 * C), ws(L1);
            for (std::size_t i = b; i < e; ++i) {
                std::fill(st.begin(), st.end(), 0.0);
                std::fill(st.begin(), st.begin() + static_cast<std::ptrdiff_t>(C), 1.0);
                std::fill(ws.begin(), ws.end(), 0.0);
                ws[0] = 1.0;
                const std::size_t r0 = static_cast<std::size_t>(ptr[i]);
                const std::size_t r1 = static_cast<std::size_t>(ptr[i + 1]);
                for (std::size_t r = r0; r < r1; ++r) {
                    const double x = w[r];
                    const double* qr = q + r * C;
                    const std::size_t top = std::min(L1 - 1, r - r0 + 1);
                    for (std::size_t j = top; j >= 1; --j) {
                        ws[j] += x * ws[j - 1];
                        double* cur = st.data() + j * C;
                        const double* prev = st.data() + (j - 1) * C;
                        for (std::size_t c = 0; c < C; ++c) cur[c] += x * qr[c] * prev[c];
                    }
                }
                double* po = pp + i * L1;
                double* so = ss + i * L1;
                for (std::size_t j = 0; j < L1; ++j) {
                    double acc = 0.0;
                    const double* cur = st.data() + j * C;
                    for (std::size_t c = 0; c < C; ++c) acc += cur[c];
                    po[j] = acc;
                    so[j] = ws[j];
                }
                po[0] = 1.0;
            }
        });
    }
    return {ep, es};
}

}  // namespace pope
