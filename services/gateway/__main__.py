"""`python -m services.gateway`: run one gateway replica."""

from services.common.runtime import serve

from .app import create_app
from .config import GatewaySettings
from .handlers import Gateway


def main() -> None:
    settings = GatewaySettings()
    gateway = Gateway(settings)
    serve(gateway, create_app(gateway), ws_per_message_deflate=settings.ws_deflate)


if __name__ == "__main__":
    main()
