// pybind11 entry point of pope._ext. Each routine lives in its own file; this file only binds.
#include <pybind11/pybind11.h>

namespace py = pybind11;

#define POPE_STR_(x) #x
#define POPE_STR(x) POPE_STR_(x)

PYBIND11_MODULE(_ext, m) {
    m.doc() = "pope C++ core: clipped IPS moments, segmented coverage, bootstrap";
    m.attr("__version__") = POPE_STR(POPE_VERSION_INFO);
}
