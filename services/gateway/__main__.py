"""`python -m services.gateway`: run one gateway replica."""

from services.common.runtime import serve

from .app import create_app
from .config import GatewaySettings
from .handlers import Gateway


def main() -> None:
    gateway = Gateway(GatewaySettings())
    serve(gateway, create_app(gateway))


if __name__ == "__main__":
    main()
