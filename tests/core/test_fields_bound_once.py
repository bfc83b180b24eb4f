"""core.fields.FieldsBoundOnce: one set of bound fields shared by every instance of an
input serializer, each instance still validating its own data."""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from rest_framework import serializers

from core.fields import FieldsBoundOnce, StrictCharField
from inbox.api import HandoverInput


class Pair(FieldsBoundOnce, serializers.Serializer):
    word = StrictCharField(max_length=8)
    count = serializers.IntegerField(min_value=0, required=False, default=1)


def test_instances_share_one_set_of_fields_built_once():
    assert Pair(data={}).fields is Pair(data={}).fields
    assert HandoverInput(data={}).fields is HandoverInput(data={}).fields


def test_each_instance_validates_its_own_data_from_many_threads_at_once():
    start = threading.Barrier(8)

    def validate(n: int):
        data = (
            {"word": f"w{n}", "count": n} if n % 2 else {"word": "x" * (9 + n), "count": -(n + 1)}
        )
        start.wait(timeout=10)
        results = []
        for _ in range(200):
            payload = Pair(data=data)
            valid = payload.is_valid()
            results.append((valid, dict(payload.validated_data) if valid else payload.errors))
        return n, results

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(validate, range(8)))

    for n, results in outcomes:
        if n % 2:
            assert all(result == (True, {"word": f"w{n}", "count": n}) for result in results)
        else:
            assert all(valid is False for valid, _ in results)
            assert all(set(errors) == {"word", "count"} for _, errors in results)


def test_defaults_and_errors_are_the_same_as_without_sharing():
    payload = Pair(data={"word": 5})
    assert not payload.is_valid()
    assert payload.errors == {"word": ["Must be a string."]}
    payload = Pair(data={"word": "ok"})
    assert payload.is_valid() and payload.validated_data == {"word": "ok", "count": 1}


def test_a_partial_instance_is_refused():
    with pytest.raises(TypeError, match="cannot be partial"):
        Pair(data={}, partial=True)


def test_a_nested_serializer_is_refused_when_the_class_is_made():
    with pytest.raises(TypeError, match="nested serializers"):

        class Outer(FieldsBoundOnce, serializers.Serializer):
            inner = Pair()


def test_a_field_that_reads_the_context_is_refused_when_the_class_is_made():
    with pytest.raises(TypeError, match="read the context"):

        class ByWhom(FieldsBoundOnce, serializers.Serializer):
            user = serializers.HiddenField(default=serializers.CurrentUserDefault())
