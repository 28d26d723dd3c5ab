// The GIL released around the kernels, in both pybind11 modules.
#pragma once
#include <pybind11/pybind11.h>

#include <cxxabi.h>

#include <atomic>
#include <chrono>
#include <exception>
#include <thread>

namespace fusedrnn {

inline bool interpreter_finalizing() {
#if PY_VERSION_HEX >= 0x030D0000
  return Py_IsFinalizing();
#else
  return _Py_IsFinalizing();
#endif
}

// The thread that finalizes the interpreter: set by each module at import to threading's main
// thread, then by an atexit callback, which runs on the finalizing thread just before the
// interpreter says it is finalizing (threading's main thread is whichever thread imported
// threading first, a worker's in some embedding programs).
// Atomic: the atexit callback writes it under the GIL, a call ending without the GIL reads it.
inline std::atomic<unsigned long>& main_thread_ident() {
  static std::atomic<unsigned long> ident{0};
  return ident;
}

inline void remember_main_thread() {
  main_thread_ident().store(
      pybind11::module_::import("threading").attr("main_thread")().attr("ident")
          .cast<unsigned long>());
  pybind11::module_::import("atexit").attr("register")(
      pybind11::cpp_function([] { main_thread_ident().store(PyThread_get_thread_ident()); }));
}

// pybind11::gil_scoped_release, but another thread whose call ends while the interpreter
// finalizes (a daemon thread at exit) stays out instead of taking the GIL back: Python would
// end the thread with pthread_exit, and its unwinding through this noexcept destructor aborts
// the process. That thread sleeps until the process exits. The finalizing thread takes the GIL back
// as ever (a finalizer or a generator's cleanup calling the kernels during finalization).
class GilReleased {
 public:
  GilReleased() : state_(PyEval_SaveThread()) {}
  ~GilReleased() {
    if (PyThread_get_thread_ident() != main_thread_ident().load())
      while (interpreter_finalizing()) park();
    try {
      PyEval_RestoreThread(state_);
    } catch (abi::__forced_unwind&) {
      // Python ended this thread with pthread_exit: it was waiting for the GIL as finalization
      // began. Its unwinding must not go on (the callers' Py_DECREFs would run without the
      // GIL), nor end here (rethrow or abort): the thread parks in the handler.
      for (;;) park();
    }
  }
  GilReleased(const GilReleased&) = delete;
  GilReleased& operator=(const GilReleased&) = delete;

 private:
  static void park() { std::this_thread::sleep_for(std::chrono::seconds(1)); }
  PyThreadState* state_;
};

// Runs fn() without the GIL; an exception it throws is rethrown once the GIL is held again,
// not thrown through GilReleased's destructor (a thread that waited for the GIL when
// finalization began is ended by pthread_exit there, which aborts the process while an
// exception is in flight).
template <typename Fn>
void without_gil(Fn&& fn) {
  std::exception_ptr error;
  {
    GilReleased release;
    try {
      fn();
    } catch (...) {
      error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace fusedrnn
