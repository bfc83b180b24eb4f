from rest_framework import serializers
from rest_framework.utils.serializer_helpers import BindingDict


class StrictCharField(serializers.CharField):
    """A string field that refuses numbers, booleans and objects instead of coercing them.

    DRF's CharField also refuses the NUL character, which PostgreSQL cannot store.
    """

    default_error_messages = {"not_a_string": "Must be a string."}

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("not_a_string")
        return super().to_internal_value(data)


class FieldsBoundOnce:
    """Mixed into a flat input serializer: its fields are built and bound once per class
    instead of once per instance.

    DRF deep-copies a serializer's declared fields for every instance (each copy runs
    the field's `__init__` again) so that an instance may change its fields. An input
    serializer on a hot path never does, and its fields keep no state between calls:
    every instance can share one set, bound to a template instance that holds no data.
    That was a tenth of a handover's own time. For flat serializers only (a nested
    serializer holds its parent's data) and never partial (the shared fields answer to
    the template, which is not).
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        nested = [
            name
            for name, field in getattr(cls, "_declared_fields", {}).items()
            if isinstance(field, serializers.BaseSerializer)
        ]
        if nested:
            raise TypeError(f"{cls.__name__}: nested serializers cannot share fields: {nested}")
        # A default or validator that reads the serializer's context (the request, e.g.
        # CurrentUserDefault) would read the template's, which has none.
        contextual = [
            name
            for name, field in getattr(cls, "_declared_fields", {}).items()
            if getattr(field.default, "requires_context", False)
            or any(getattr(v, "requires_context", False) for v in field.validators)
        ]
        if contextual:
            raise TypeError(f"{cls.__name__}: fields that read the context: {contextual}")

    def __init__(self, *args, **kwargs):
        if kwargs.get("partial"):
            raise TypeError(f"{type(self).__name__} shares its fields: it cannot be partial")
        super().__init__(*args, **kwargs)

    @property
    def fields(self):
        cls = type(self)
        bound = cls.__dict__.get("_fields_bound_once")
        if bound is None:
            template = cls()
            bound = BindingDict(template)
            for name, field in template.get_fields().items():
                bound[name] = field
            cls._fields_bound_once = bound  # a race builds it twice, harmlessly
        return bound
