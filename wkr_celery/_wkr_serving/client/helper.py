"""``from wkr_serving.client.helper import RedisHandler``: wkr-celery's FIFO job list."""

from wkr_celery.client.helper import SERIALIZERS, RedisHandler

__all__ = ["RedisHandler", "SERIALIZERS"]
