"""`python -m services.storage`: run one storage worker."""

from services.common.runtime import serve

from .config import StorageSettings
from .handlers import StorageService


def main() -> None:
    serve(StorageService(StorageSettings()))


if __name__ == "__main__":
    main()
