"""`python -m services.gateway`: run one gateway replica."""

from services.common.runtime import serve

from .app import create_app, ops_app
from .config import GatewaySettings
from .handlers import Gateway


def main() -> None:
    settings = GatewaySettings()
    gateway = Gateway(settings)
    app = create_app(gateway)
    ops = ops_app(gateway, app) if settings.ops_port is not None else None
    serve(gateway, app, ops=ops, ops_port=settings.ops_port, ws_per_message_deflate=settings.ws_deflate)


if __name__ == "__main__":
    main()
