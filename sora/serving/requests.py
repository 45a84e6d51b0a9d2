"""What a request to the service may be, and how a refusal reads: limits, request models, errors.

Each JSON endpoint's body is one pydantic model (:func:`request_models`, built for the :class:`Limits`
in force, from ``SoraConfig().serve``). The BentoML service declares them as its APIs' ``input_spec``,
so BentoML's own parse (pydantic-core, one pass over the bytes) is the only check a request gets;
:func:`validate` runs the same model on a dict for in-process callers. What the models reject,
:func:`refusal` words as the project's 400 (``{"error": "<field>: <what is wrong>"}``) from pydantic's
error list: the type and location only, the list BentoML sends back (it leaves out the input and the
constraint values, so the words are the same over HTTP and in-process and never echo the request).

Every refusal is a :class:`ServiceError` carrying its HTTP status and a message that never echoes
more than :data:`ECHO_CHARS` characters of the request nor any filesystem path.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    model_validator,
)

from sora.config import ServeConfig

log = logging.getLogger(__name__)

ECHO_CHARS = 48  # at most this much of a client's value is quoted back in an error message


@dataclass(frozen=True)
class Limits:
    """Request limits; the defaults are ``ServeConfig``'s."""

    max_k: int = ServeConfig().max_k
    max_id_length: int = ServeConfig().max_id_length
    max_list_length: int = ServeConfig().max_list_length
    max_body_bytes: int = ServeConfig().max_body_bytes

    @classmethod
    def from_config(cls, serve: ServeConfig) -> Limits:
        return cls(serve.max_k, serve.max_id_length, serve.max_list_length, serve.max_body_bytes)


# -------------------------------------------------------------------- errors

class ServiceError(Exception):
    """A request the service refuses; ``status`` is the HTTP status, ``message`` is safe to send back."""

    status = 500

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadRequest(ServiceError):
    status = 400


class NotFound(ServiceError):
    status = 404

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind  # "user" or "item", for the unknown-id metric


class PayloadTooLarge(ServiceError):
    status = 413


class UnsupportedMediaType(ServiceError):
    status = 415


class NotReady(ServiceError):
    status = 503


def clip(value: Any, n: int = ECHO_CHARS) -> str:
    """``repr(value)``, cut to ``n`` characters with the full length said, for quoting client input."""
    text = repr(value)
    if len(text) <= n:
        return text
    size = f"{len(value)} characters" if isinstance(value, str) else type(value).__name__
    return f"{text[:n]}… ({size})"


_PATH = re.compile(r"(?:file:/*)?(?<![\w.~-])/(?:[^\s'\"/:,()]+/)+[^\s'\"/:,()]*")


_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


def scrub(text: str, n: int = 300) -> str:
    """Remove absolute filesystem paths and URI credentials from ``text`` (for messages a client sees), cut to ``n``."""
    text = _PATH.sub("<path>", _USERINFO.sub("", text))
    return text if len(text) <= n else text[:n] + "…"


def error_body(exc: ServiceError) -> dict[str, str]:
    return {"error": exc.message}


def log_refusal(where: str, exc: ServiceError) -> None:
    """One WARNING line per refused request (no traceback: the client's mistake, not ours)."""
    if exc.status >= 500:
        log.error("%s -> %d: %s", where, exc.status, exc.message)
    else:
        log.warning("%s -> %d: %s", where, exc.status, exc.message)


# -------------------------------------------------------------------- the request models

def _numeric_id(value: Any) -> Any:
    """An integer id (``7``) is read as its string (``"7"``); a float or a bool stays what it is and is refused."""
    return str(value) if type(value) is int else value


def _whole_number(value: Any) -> Any:
    """``3.0`` is 3 (some JSON encoders write every number as a float); ``2.5`` stays a float and is refused."""
    return int(value) if type(value) is float and value.is_integer() else value


def _distinct(ids: list[str]) -> list[str]:
    seen: set[str] = set()
    for n, i in enumerate(ids):
        if i in seen:  # "[n]: …" is glued to the field's name by `refusal`
            raise ValueError(f"[{n}]: duplicate item id {clip(i)}")
        seen.add(i)
    return ids


class _Request(BaseModel):
    """A request body: no field beyond the endpoint's, and ``null`` for a field means "not given"."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data


@functools.lru_cache
def request_models(limits: Limits = Limits()) -> dict[str, type[BaseModel]]:
    """Endpoint name -> the pydantic model of its JSON body under ``limits``: the one description of what each accepts.

    Ids are strings (a JSON integer is read as its string), 1..``max_id_length`` characters; id lists
    hold 1..``max_list_length`` of them (``recent_item_ids`` may be empty, and its ids distinct);
    ``k`` is an integer 1..``max_k``; flags are JSON booleans. Strict types: ``"3"`` is no ``k``,
    ``"true"`` no flag.
    """
    one = Annotated[str, Field(strict=True, min_length=1, max_length=limits.max_id_length,
                               description=f"an id, at most {limits.max_id_length} characters"),
                    BeforeValidator(_numeric_id)]
    ids = Annotated[list[one], Field(min_length=1, max_length=limits.max_list_length,
                                     description=f"1..{limits.max_list_length} ids")]
    recent = Annotated[list[one], Field(max_length=limits.max_list_length,
                                        description=f"0..{limits.max_list_length} distinct item ids: events since "
                                                    "training, newest last"),
                       AfterValidator(_distinct)] | None
    k = Annotated[int, Field(strict=True, ge=1, le=limits.max_k,
                             description=f"number of items to return (1..{limits.max_k})"),
                  BeforeValidator(_whole_number)]
    flag = Annotated[bool, Field(strict=True)]
    fields: dict[str, dict[str, Any]] = {
        "recommend": {"user_id": (one, ...), "k": (k, 10), "exclude_seen": (flag, True), "fallback": (flag, False),
                      "recent_item_ids": (recent, None), "explain": (flag, False)},
        "recommend_from_history": {"item_ids": (ids, ...), "k": (k, 10), "explain": (flag, False)},
        "similar_items": {"item_id": (one, ...), "k": (k, 10)},
        "score": {"user_id": (one, ...), "item_ids": (ids, ...), "recent_item_ids": (recent, None)},
    }
    return {name: create_model("".join(w.title() for w in name.split("_")) + "Request", __base__=_Request, **spec)
            for name, spec in fields.items()}


#: endpoint -> the fields its body may have
ENDPOINTS: dict[str, tuple[str, ...]] = {name: tuple(m.model_fields) for name, m in request_models().items()}


# -------------------------------------------------------------------- refusals in the project's words

#: pydantic error type -> the message after "<field>: " (``{...}`` filled from the limits)
_WORDS = {
    "missing": "required",
    "string_type": "expected a string id",
    "string_too_short": "empty id",
    "string_too_long": "id longer than {max_id_length} characters",
    "list_type": "expected a list of ids",
    "too_short": "empty list",
    "too_long": "more than {max_list_length} ids",
    "int_type": "expected an integer 1..{max_k}",
    "greater_than_equal": "must be in 1..{max_k}",
    "less_than_equal": "must be in 1..{max_k}",
    "bool_type": "expected true or false",
}


def refusal(endpoint: str, errors: Sequence[Mapping[str, Any]], limits: Limits = Limits()) -> BadRequest:
    """The first of pydantic's ``errors`` (``type``, ``loc``, ``msg``, as BentoML sends them) as the project's 400."""
    takes = ", ".join(ENDPOINTS[endpoint])
    if not errors:
        return BadRequest(f"invalid request; {endpoint} takes {takes}")
    error = errors[0]
    kind, loc, msg = error.get("type"), list(error.get("loc") or ()), str(error.get("msg", ""))
    if kind == "json_invalid":  # "Invalid JSON: EOF while parsing an object at line 1 column 17"
        return BadRequest(f"body is not valid JSON ({msg.split(': ', 1)[-1][:100]})")
    if not loc or kind in ("model_type", "model_attributes_type", "dict_type"):
        return BadRequest(f"request body must be a JSON object with {takes}")
    field = str(loc[0]) + "".join(f"[{p}]" for p in loc[1:])
    if kind == "extra_forbidden":
        return BadRequest(f"unknown field {clip(loc[0])}; {endpoint} takes {takes}")
    if kind == "value_error":  # from a validator above, e.g. "[3]: duplicate item id 'i1'"
        detail = msg.removeprefix("Value error, ")
        return BadRequest(field + detail if detail.startswith("[") else f"{field}: {detail}")
    words = _WORDS.get(kind)
    return BadRequest(f"{field}: " + (words.format(**vars(limits)) if words else msg[:100]))


def validate(endpoint: str, payload: Any, limits: Limits = Limits()) -> dict[str, Any]:
    """The request's arguments, checked and with defaults filled in, or :class:`BadRequest` naming the field.

    For in-process callers with a parsed body; the service gets the same checks from BentoML, which
    runs the same model on the raw bytes. Optional fields not given (``recent_item_ids``) are left out.
    """
    try:
        checked = request_models(limits)[endpoint].model_validate(payload)
    except ValidationError as exc:
        raise refusal(endpoint, exc.errors(include_url=False, include_context=False, include_input=False),
                      limits) from None
    return {name: value for name, value in checked if value is not None}
