"""`python -m services.tts`: run one TTS worker."""

from services.common.runtime import serve

from .config import TtsSettings
from .handlers import TtsService


def main() -> None:
    serve(TtsService(TtsSettings()))


if __name__ == "__main__":
    main()
