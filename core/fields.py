from rest_framework import serializers


class StrictCharField(serializers.CharField):
    """A string field that refuses numbers, booleans and objects instead of coercing them.

    DRF's CharField also refuses the NUL character, which PostgreSQL cannot store.
    """

    default_error_messages = {"not_a_string": "Must be a string."}

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("not_a_string")
        return super().to_internal_value(data)
