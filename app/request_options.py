"""A request's sampling settings over the server's defaults, refused with a 400 naming the field."""

from __future__ import annotations

from rxt_app.http_errors import bad_request
from rxt_app.serving_worker import Generate

from rxt_mlx.sampling import SamplingOptions

MAX_STOP_STRINGS = 4


def stop_strings(stop: str | list[str] | None, param: str = "stop") -> tuple[str, ...]:
    """OpenAI's ``stop``: one string or up to four."""
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else list(stop)
    if len(stops) > MAX_STOP_STRINGS:
        raise bad_request(f"{param} takes at most {MAX_STOP_STRINGS} strings, not {len(stops)}", param)
    return tuple(stops)


def generate_plan(
    defaults: SamplingOptions, stop: str | list[str] | None = None, names: dict[str, str] | None = None, **fields
) -> Generate:
    """The plan of a generated turn: ``fields`` (SamplingOptions names; None keeps the default) and ``stop``.

    ``names`` maps option names to the request's own field names, for the error message.
    """
    given = {name: value for name, value in fields.items() if value is not None}
    try:
        options = SamplingOptions.of(defaults, **given)
    except ValueError as error:
        option = str(error).split(" ", 1)[0]
        field = (names or {}).get(option, option)
        raise bad_request(str(error).replace(option, field, 1), field) from None
    return Generate(options, stop_strings(stop))
