"""Input validation: everything a request carries is checked here before any store sees it.

Rules: only the documented query parameters (an unknown one -- ``category[$ne]`` -- is refused), each at most
once; integers are ASCII digits only (no sign, exponent, spaces or other scripts' digits) and short; category
slugs match ``^[a-z0-9-]{1,32}$``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

__all__ = [
    "CATEGORY_PATTERN",
    "CATEGORY_RE",
    "DEFAULT_SORT",
    "MAX_ID",
    "MAX_PAGE",
    "MAX_PAGE_SIZE",
    "SORTS",
    "ApiError",
    "ListQuery",
    "parse_list_query",
    "parse_wallpaper_id",
]

CATEGORY_PATTERN: Final = "^[a-z0-9-]{1,32}$"
CATEGORY_RE: Final = re.compile(CATEGORY_PATTERN[1:-1])  # used with fullmatch
_DIGITS: Final = re.compile(r"[0-9]{1,16}")
DEFAULT_PAGE_SIZE: Final = 20
MAX_PAGE_SIZE: Final = 100
MAX_PAGE: Final = 1000
MAX_ID: Final = 2**53 - 1
SORTS: Final = ("hot", "new")
DEFAULT_SORT: Final = "hot"
LIST_PARAMETERS: Final = frozenset({"pageSize", "page", "category", "sort"})

# Error codes (the HTTP status times 100 plus a number).
INVALID_PARAMETER: Final = 40001
UNKNOWN_PARAMETER: Final = 40002
WALLPAPER_NOT_FOUND: Final = 40401
CATEGORY_NOT_FOUND: Final = 40402
ROUTE_NOT_FOUND: Final = 40403
METHOD_NOT_ALLOWED: Final = 40501
IDEMPOTENCY_KEY_CONFLICT: Final = 40901
INTERNAL_ERROR: Final = 50001
DEPENDENCY_UNAVAILABLE: Final = 50301
NOT_RECORDED: Final = 50302
NOT_READY: Final = 50303


class ApiError(Exception):
    """An error response: HTTP ``status``, API ``code`` and a message naming what is wrong."""

    def __init__(self, status: int, code: int, msg: str) -> None:
        super().__init__(msg)
        self.status = status
        self.code = code
        self.msg = msg


def _show(value: str, limit: int = 40) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")


def _invalid(name: str, value: str, expected: str) -> ApiError:
    return ApiError(400, INVALID_PARAMETER, f"invalid parameter {name}={_show(value)}: expected {expected}")


def _int(name: str, value: str, low: int, high: int) -> int:
    if not _DIGITS.fullmatch(value) or not low <= int(value) <= high:
        raise _invalid(name, value, f"an integer from {low} to {high}")
    return int(value)


@dataclass(frozen=True, slots=True)
class ListQuery:
    page: int
    page_size: int
    category: str | None
    sort: str


def _single(arguments: dict[str, list[bytes]]) -> dict[str, str]:
    values: dict[str, str] = {}
    for name, given in arguments.items():
        if name not in LIST_PARAMETERS:
            expected = "expected one of pageSize, page, category, sort"
            raise ApiError(400, UNKNOWN_PARAMETER, f"unknown parameter {_show(name)}: {expected}")
        if len(given) != 1:
            raise ApiError(400, INVALID_PARAMETER, f"parameter {name} given {len(given)} times: give it once")
        try:
            values[name] = given[0].decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(400, INVALID_PARAMETER, f"parameter {name} is not valid UTF-8") from None
    return values


def parse_list_query(arguments: dict[str, list[bytes]]) -> ListQuery:
    """The list query from Tornado's ``request.query_arguments``; raises :class:`ApiError` (400)."""
    values = _single(arguments)
    page_size = _int("pageSize", values["pageSize"], 1, MAX_PAGE_SIZE) if "pageSize" in values else DEFAULT_PAGE_SIZE
    page = _int("page", values["page"], 1, MAX_PAGE) if "page" in values else 1
    sort = values.get("sort", DEFAULT_SORT)
    if sort not in SORTS:
        raise _invalid("sort", sort, "hot or new")
    category = values.get("category")
    if category is not None and not CATEGORY_RE.fullmatch(category):
        raise _invalid("category", category, f"a category slug matching {CATEGORY_PATTERN}")
    return ListQuery(page=page, page_size=page_size, category=category, sort=sort)


def parse_wallpaper_id(text: str) -> int:
    """A wallpaper id from the path: 1 .. 2**53-1, ASCII digits; raises :class:`ApiError` (400)."""
    return _int("id", text, 1, MAX_ID)
