"""The chapters' front door: chapter_params checks model, device and dtype before a chapter loads anything."""
from __future__ import annotations

import time

import pytest

from tappa_utils.chapter import chapter_params
from tappa_utils.errors import UsageError


@pytest.mark.parametrize("values, fragment", [
    ({"model": "/no/such/model/folder"}, "model /no/such/model/folder: model folder not found"),
    ({"model": "random:gpt-17"}, "model random:gpt-17: unknown model shape"),
    ({"device": "tpu"}, "device"),
    ({"dtype": "float8"}, "dtype 'float8'"),
])
def test_bad_chapter_parameters_fail_at_once_in_one_line(values, fragment):
    ns = {"model": "tappa-tiny", "device": "cpu", "dtype": "float32", **values}
    t0 = time.perf_counter()
    with pytest.raises(UsageError) as e:
        chapter_params(ns, names=["model", "device", "dtype"])
    assert time.perf_counter() - t0 < 10  # the check, never a load
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_good_parameters_pass_through_unchanged():
    ns = {"model": "smollm2-135m", "device": "cpu", "dtype": "float32", "seed": 3}
    assert chapter_params(ns, names=["model", "device", "dtype", "seed"]) == {
        "model": "smollm2-135m", "device": "cpu", "dtype": "float32", "seed": 3}
