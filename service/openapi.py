"""The OpenAPI 3.1 document of the API, built from the same constants the validation uses."""

from __future__ import annotations

from typing import Any, Final

from .validation import CATEGORY_PATTERN, DEFAULT_PAGE_SIZE, DEFAULT_SORT, MAX_ID, MAX_PAGE, MAX_PAGE_SIZE, SORTS

__all__ = ["PREFIX", "openapi_document"]

PREFIX: Final = "/client/v3/wallpaper_4d"


#: Every value X-Cache takes: the cache entry's outcome (cachelayer.Outcome).
X_CACHE_VALUES: Final = ("hit", "miss", "stale", "fail_open", "bypass")


def _ok(data_schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {
            "X-Cache": {
                "description": "How the cache answered (the entry's outcome)",
                "schema": {"type": "string", "enum": list(X_CACHE_VALUES)},
            },
            "Cache-Status": {
                "description": "RFC 9211, the cache named wallpaper: hit; ttl=N | fwd=miss; stored; ttl=N | "
                "fwd=stale; ttl=N (or detail=invalidated) | fwd=miss; detail=store-unavailable | fwd=bypass",
                "schema": {"type": "string", "pattern": "^wallpaper; (hit|fwd=(miss|stale|bypass))(; .*)?$"},
            },
            "ETag": {"description": "One per representation (identity, zstd, dcz)", "schema": {"type": "string"}},
            "Link": {
                "description": "The compression dictionary (RFC 9842), when the service stores with one",
                "schema": {"type": "string"},
            },
        },
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["code", "msg", "data"],
                    "properties": {
                        "code": {"const": 0},
                        "msg": {"const": "ok"},
                        "data": data_schema,
                    },
                }
            }
        },
    }


_ERROR: Final = {"$ref": "#/components/responses/Error"}
_ID_PARAM: Final = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
}


def openapi_document() -> dict[str, Any]:
    wallpaper_ref = {"$ref": "#/components/schemas/Wallpaper"}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Wallpaper service", "version": "3.0.0"},
        "paths": {
            f"{PREFIX}/wallpaperList.json": {
                "get": {
                    "operationId": "listWallpapers",
                    "parameters": [
                        {
                            "name": "pageSize",
                            "in": "query",
                            "schema": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": MAX_PAGE_SIZE,
                                "default": DEFAULT_PAGE_SIZE,
                            },
                        },
                        {
                            "name": "page",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 1},
                        },
                        {
                            "name": "category",
                            "in": "query",
                            "schema": {"type": "string", "pattern": CATEGORY_PATTERN},
                        },
                        {
                            "name": "sort",
                            "in": "query",
                            "schema": {"type": "string", "enum": list(SORTS), "default": DEFAULT_SORT},
                        },
                    ],
                    "responses": {
                        "200": _ok({"$ref": "#/components/schemas/Page"}, "A page of wallpapers"),
                        "304": {"description": "Not modified (If-None-Match)"},
                        "400": _ERROR,
                        "404": _ERROR,
                        "503": _ERROR,
                    },
                }
            },
            f"{PREFIX}/wallpaper/{{id}}.json": {
                "get": {
                    "operationId": "getWallpaper",
                    "parameters": [_ID_PARAM],
                    "responses": {
                        "200": _ok(wallpaper_ref, "One wallpaper"),
                        "304": {"description": "Not modified (If-None-Match)"},
                        "400": _ERROR,
                        "404": _ERROR,
                        "503": _ERROR,
                    },
                }
            },
            f"{PREFIX}/categories.json": {
                "get": {
                    "operationId": "listCategories",
                    "responses": {
                        "200": _ok(
                            {"type": "array", "items": {"$ref": "#/components/schemas/Category"}},
                            "Categories with their wallpaper counts",
                        ),
                        "304": {"description": "Not modified (If-None-Match)"},
                        "503": _ERROR,
                    },
                }
            },
            f"{PREFIX}/wallpaper/{{id}}/download": {
                "post": {
                    "operationId": "recordDownload",
                    "parameters": [
                        _ID_PARAM,
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "description": "A retry with the same key is never counted twice",
                            "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
                        },
                    ],
                    "responses": {
                        "200": _ok(
                            {
                                "type": "object",
                                "required": ["id", "downloads"],
                                "properties": {"id": {"type": "integer"}, "downloads": {"type": "integer"}},
                            },
                            "The download was recorded and counted",
                        ),
                        "202": {"description": "Recorded; the counter catches up within seconds"},
                        "400": _ERROR,
                        "404": _ERROR,
                        "409": _ERROR,
                        "503": _ERROR,
                    },
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "liveness",
                    "responses": {"200": {"description": "The process serves"}, "503": _ERROR},
                }
            },
            "/dictionaries/{id}.zdict": {
                "get": {
                    "operationId": "dictionary",
                    "summary": "The zstd dictionary the cache stores with (Compression Dictionary Transport, RFC 9842)",
                    "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}],
                    "responses": {
                        "200": {
                            "description": "The dictionary (raw content), immutable; Use-As-Dictionary: the API paths",
                            "content": {"application/octet-stream": {}},
                        },
                        "404": _ERROR,
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "responses": {"200": {"description": "This document", "content": {"application/json": {}}}},
                }
            },
        },
        "components": {
            "responses": {
                "Error": {
                    "description": "An error; msg names the parameter or dependency at fault",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["code", "msg"],
                                "properties": {"code": {"type": "integer", "minimum": 1}, "msg": {"type": "string"}},
                            }
                        }
                    },
                }
            },
            "schemas": {
                "ListItem": {
                    "type": "object",
                    "required": ["id", "title", "category", "thumb", "preview", "downloads", "likes"],
                    "properties": {
                        "id": {"type": "integer"},
                        "title": {"type": "string"},
                        "category": {"type": "string"},
                        "thumb": {"type": "string"},
                        "preview": {"type": "string"},
                        "colors": {"type": "array", "items": {"type": "string"}},
                        "author": {"type": "object"},
                        "likes": {"type": "integer"},
                        "downloads": {"type": "integer"},
                        "is_vip": {"type": "boolean"},
                        "is_4d": {"type": "boolean"},
                    },
                },
                "Page": {
                    "type": "object",
                    "required": ["items", "page", "pageSize", "total", "hasMore"],
                    "properties": {
                        "items": {"type": "array", "items": {"$ref": "#/components/schemas/ListItem"}},
                        "page": {"type": "integer"},
                        "pageSize": {"type": "integer"},
                        "total": {"type": "integer"},
                        "hasMore": {"type": "boolean"},
                    },
                },
                "Wallpaper": {
                    "type": "object",
                    "required": ["id", "title", "category", "images", "counts"],
                    "properties": {
                        "id": {"type": "integer"},
                        "title": {"type": "string"},
                        "description": {"type": "string"},
                        "category": {"type": "string"},
                        "tags": {"type": "array", "items": {"type": "string"}},
                        "author": {"type": "object"},
                        "images": {"type": "object"},
                        "counts": {
                            "type": "object",
                            "properties": {
                                "downloads": {"type": "integer"},
                                "likes": {"type": "integer"},
                                "views": {"type": "integer"},
                            },
                        },
                        "width": {"type": "integer"},
                        "height": {"type": "integer"},
                        "resolution": {"type": "string"},
                        "colors": {"type": "array", "items": {"type": "string"}},
                        "file_size": {"type": "integer"},
                        "created_at": {"type": "string", "format": "date-time"},
                        "updated_at": {"type": "string", "format": "date-time"},
                        "flags": {
                            "type": "object",
                            "properties": {
                                "is_4d": {"type": "boolean"},
                                "is_vip": {"type": "boolean"},
                                "is_live": {"type": "boolean"},
                            },
                        },
                    },
                    # Every field an answer carries is declared (test_api.py checks real answers against it).
                    "additionalProperties": False,
                },
                "Category": {
                    "type": "object",
                    "required": ["slug", "name", "sort", "cover", "count"],
                    "properties": {
                        "slug": {"type": "string"},
                        "name": {"type": "string"},
                        "sort": {"type": "integer"},
                        "cover": {"type": "string"},
                        "count": {"type": "integer"},
                    },
                },
            },
        },
    }
