from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser


class StrictJSONParser(JSONParser):
    """JSON parser whose syntax errors carry the stable code `invalid_json`.

    The body size limit is Django's DATA_UPLOAD_MAX_MEMORY_SIZE (DRF reads `request.body`
    for JSON); core.api turns its RequestDataTooBig into a 413.
    """

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except (ParseError, RecursionError) as exc:
            # RecursionError: absurdly deep nesting, which no caller of ours sends.
            raise ParseError("Request body is not valid JSON.", code="invalid_json") from exc
