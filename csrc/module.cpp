// pybind11 entry point of pope._ext. Each routine lives in its own file; this file only binds.
// Semantics: src/pope/backends/reference.py (the contract and the test oracle).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "pope_common.hpp"

namespace py = pybind11;

#define POPE_STR_(x) #x
#define POPE_STR(x) POPE_STR_(x)

PYBIND11_MODULE(_ext, m) {
    m.doc() = "pope C++ core: clipped IPS moments, segmented coverage, bootstrap";
    m.attr("__version__") = POPE_STR(POPE_VERSION_INFO);
    m.attr("MOMENT_NAMES") = py::make_tuple("log_scale", "n", "sum_w", "sum_w2", "sum_wr",
                                            "sum_w2r2", "sum_w2r", "n_clipped", "max_log_ratio");

    m.def("ips_moments", &pope::ips_moments, py::arg("log_target"), py::arg("log_logging"),
          py::arg("reward"), py::arg("log_clip"),
          "Scaled moments of clipped importance weights, (9,) in MOMENT_NAMES order.\n\n"
          "l_i = min(log_target_i - log_logging_i, log_clip), m = max_i l_i,\n"
          "w~_i = exp(l_i - m); returns [m, n, sum w~, sum w~^2, sum w~ r, sum (w~ r)^2,\n"
          "sum w~^2 r, #{lr_i > log_clip}, max_i lr_i]. One pass, threads over chunks.");
    m.def("ips_moments_checked", &pope::ips_moments_checked, py::arg("log_target"),
          py::arg("log_logging"), py::arg("reward"), py::arg("log_clip"),
          "ips_moments with the value checks in the same pass.\n\n"
          "Returns (moments (10,): MOMENT_NAMES then #rewards outside [0, 1]; all NaN when a\n"
          "value is bad), first_bad (10,) int64: first failing index per IPS_CHECKS, or -1.");
    m.def("segment_coverage_hard", &pope::segment_coverage_hard, py::arg("prompt_ptr"),
          py::arg("log_weight"), py::arg("labels"), py::arg("n_aspects"),
          py::arg("self_normalize"),
          "Per-prompt weighted aspect histogram p (P, C) and entropy H (P,), hard labels.\n\n"
          "p[i, c] = sum_{k in i} w_k [a_k == c] / Z_i, H[i] = -sum_c p log p.");
    m.def("segment_coverage_soft", &pope::segment_coverage_soft, py::arg("prompt_ptr"),
          py::arg("log_weight"), py::arg("soft"), py::arg("self_normalize"),
          "As segment_coverage_hard with soft aspect rows q (N, C): p[i] = sum_k w_k q_k / Z_i.");
    m.def("diversity_reward_hard", &pope::diversity_reward_hard, py::arg("prompt_ptr"),
          py::arg("p"), py::arg("labels"),
          "d_k = -log p[i(k), a_k] (0 where p == 0), (N,).");
    m.def("diversity_reward_soft", &pope::diversity_reward_soft, py::arg("prompt_ptr"),
          py::arg("p"), py::arg("soft"),
          "d_k = -sum_c q_k(c) log p[i(k), c] (terms with p == 0 count 0), (N,).");
    m.def("segment_jackknife_entropy_hard", &pope::segment_jackknife_entropy_hard,
          py::arg("prompt_ptr"), py::arg("log_weight"), py::arg("labels"), py::arg("n_aspects"),
          py::arg("self_normalize"),
          "Delete-one-response jackknife of the coverage entropy per prompt (nats), (P,).\n\n"
          "H^J_i = K_i H(p_i) - (K_i-1)/K_i sum_k H(p_{i,-k}); hard labels.");
    m.def("segment_jackknife_entropy_soft", &pope::segment_jackknife_entropy_soft,
          py::arg("prompt_ptr"), py::arg("log_weight"), py::arg("soft"),
          py::arg("self_normalize"),
          "As segment_jackknife_entropy_hard with soft aspect rows (N, C).");
    m.def("bootstrap_sums", &pope::bootstrap_sums, py::arg("values"), py::arg("n_boot"),
          py::arg("seed"),
          "Column sums (n_boot, m) of Poisson-bootstrap resamples of the rows of values,\n"
          "rescaled to n rows: out[b] = (n / N_b) sum_i c_bi v_i; counts from 16-bit\n"
          "uniforms of 8 xoshiro128++ streams per resample keyed by (seed, b, lane);\n"
          "see pope.backends.reference.");
    m.def("splitmix64", &pope::splitmix64, py::arg("z"), "SplitMix64 finaliser of one uint64.");
    m.def("elementary_sums_hard", &pope::elementary_sums_hard, py::arg("prompt_ptr"),
          py::arg("weight"), py::arg("labels"), py::arg("n_aspects"), py::arg("degree"),
          "Per prompt (P, degree+1): sum_c e_j(w_k [a_k == c]) and e_j(w), hard labels\n"
          "(un-normalised U-statistic power sums, pope.power_sums).");
    m.def("elementary_sums_soft", &pope::elementary_sums_soft, py::arg("prompt_ptr"),
          py::arg("weight"), py::arg("soft"), py::arg("degree"),
          "As elementary_sums_hard with soft aspect rows q (N, C): x_kc = w_k q_k(c).");
}
