"""Pools are called with the worker's methods themselves, never with their names."""

from __future__ import annotations

import pytest

from dreamray.evals.pool import LocalPool, method_name


class Doubler:
    def double(self, items: list[int]) -> list[int]:
        return [2 * i for i in items]


class Other:
    def double(self, items: list[int]) -> list[int]:
        return items


def test_a_pool_runs_the_method_it_is_given():
    pool = LocalPool(Doubler)
    assert dict(pool.map_unordered(Doubler.double, [[1], [2, 3]])) == {0: [2], 1: [4, 6]}
    assert pool.call_ready(Doubler.double, [5]) == [[10]]


@pytest.mark.parametrize("method", [Other.double, "double", print])
def test_a_method_of_another_class_or_a_name_is_refused(method):
    with pytest.raises(TypeError, match="is not a method of Doubler"):
        method_name(Doubler, method)
    with pytest.raises(TypeError):
        list(LocalPool(Doubler).map_unordered(method, [[1]]))
