"""Storage only: wallpapers in MongoDB, categories and download events in MySQL. No caching here."""

from ._budget import settle_late_calls
from .mongo import MongoWallpaperRepository, close_client, create_client
from .mysql import MySQLRepository, create_pool

__all__ = [
    "MongoWallpaperRepository",
    "MySQLRepository",
    "close_client",
    "create_client",
    "create_pool",
    "settle_late_calls",
]
