// The GIL released around the kernels, in both pybind11 modules.
#pragma once
#include <pybind11/pybind11.h>

#include <chrono>
#include <thread>

namespace fusedrnn {

inline bool interpreter_finalizing() {
#if PY_VERSION_HEX >= 0x030D0000
  return Py_IsFinalizing();
#else
  return _Py_IsFinalizing();
#endif
}

// pybind11::gil_scoped_release, but a thread whose call ends while the interpreter finalizes
// (a daemon thread at exit) stays out instead of taking the GIL back: Python would end the
// thread with pthread_exit, and its unwinding through this noexcept destructor aborts the
// process. The thread sleeps until the process exits.
class GilReleased {
 public:
  GilReleased() : state_(PyEval_SaveThread()) {}
  ~GilReleased() {
    while (interpreter_finalizing()) std::this_thread::sleep_for(std::chrono::seconds(1));
    PyEval_RestoreThread(state_);
  }
  GilReleased(const GilReleased&) = delete;
  GilReleased& operator=(const GilReleased&) = delete;

 private:
  PyThreadState* state_;
};

}  // namespace fusedrnn
