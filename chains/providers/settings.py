"""The provider part of the service's settings, declared once.

`app.core.config.Settings` inherits these fields, so they are read from the
environment under the contract's names (`LLM_PROVIDERS`, `OPENAI_API_KEY`, …) with
every other setting, while chains take them without importing the app.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, SecretStr, field_validator
from pydantic_settings import NoDecode

KNOWN_PROVIDERS = ("openai", "anthropic", "google", "local")
LOCAL = "local"


class ProviderSettings(BaseModel):
    # Ordered failover. `local` is the embedded analysis (no LLM); it never fails, so
    # it can only come last.
    llm_providers: Annotated[list[str], NoDecode] = [LOCAL]
    llm_timeout_s: float = 30.0
    llm_first_token_timeout_s: float = 10.0
    llm_idle_timeout_s: float = 15.0
    llm_max_retries: int = 2
    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    openai_model: str = "gpt-4o-mini"
    anthropic_api_key: SecretStr | None = None
    anthropic_model: str = "claude-3-5-haiku-latest"
    google_api_key: SecretStr | None = None
    google_model: str = "gemini-2.0-flash"

    @field_validator("llm_providers", mode="before")
    @classmethod
    def _split_providers(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part.strip().lower() for part in value.split(",") if part.strip()]
        if isinstance(value, list):
            unknown = [name for name in value if name not in KNOWN_PROVIDERS]
            if unknown:
                raise ValueError(f"unknown LLM provider(s) {unknown}; known: {KNOWN_PROVIDERS}")
            if not value:
                raise ValueError("LLM_PROVIDERS must name at least one provider")
            if LOCAL in value[:-1]:
                raise ValueError("`local` never fails, so providers after it would never serve: put it last")
        return value

    @property
    def primary_provider(self) -> str:
        return self.llm_providers[0]
