from tests.gateway.state.fixtures import backend, prefix, redis_client, second_redis_client  # noqa: F401
