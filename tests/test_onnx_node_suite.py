"""ONNX's own backend node tests for the recurrent operators, run through fusedrnn's ONNX
backend (fusedrnn.onnx.Backend): every test_lstm_*, test_gru_*, test_simple_rnn_* and
test_rnn_seq_* case that the installed onnx ships, on the device "CPU"."""
import re
import warnings

import pytest

pytest.importorskip("onnx")
import onnx.backend.test
from fusedrnn.onnx import Backend

PATTERN = r"test_(lstm|gru|simple_rnn|rnn_seq)_"
with warnings.catch_warnings():  # onnx builds all its cases' data here; its casts overflow
    warnings.simplefilter("ignore")
    backend_test = onnx.backend.test.BackendTest(Backend, __name__).include(PATTERN)
# Only the included cases become tests (the others would each show up as a skip).
for case_name, case in backend_test.test_cases.items():
    for attribute in [a for a in vars(case) if a.startswith("test_") and not re.match(PATTERN, a)]:
        delattr(case, attribute)
    if any(a.startswith("test_") for a in vars(case)):
        globals()[case_name] = case


def test_the_suite_has_the_recurrent_cases():
    """The include pattern still selects ONNX's 18 recurrent cases (a renamed suite would
    otherwise pass by running nothing)."""
    names = [name for case in backend_test.test_cases.values() for name in dir(case)
             if name.startswith("test_") and name.endswith("_cpu")]
    assert len(names) >= 18, names
