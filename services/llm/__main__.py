"""`python -m services.llm`: run one orchestrator replica."""

from services.common.runtime import serve

from .config import LlmSettings
from .handlers import Orchestrator


def main() -> None:
    serve(Orchestrator(LlmSettings()))


if __name__ == "__main__":
    main()
