"""`python -m services.stt`: run one STT worker."""

from services.common.runtime import serve

from .config import SttSettings
from .handlers import SttService


def main() -> None:
    serve(SttService(SttSettings()))


if __name__ == "__main__":
    main()
