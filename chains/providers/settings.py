"""The provider part of the service's settings, declared once.

`app.core.config.Settings` inherits these fields, so they are read from the
environment under the contract's names (`LLM_PROVIDERS`, `OPENAI_API_KEY`, …) with
every other setting, while chains take them without importing the app.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field, SecretStr, field_validator
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
    # Circuit breakers (chains.providers.health): a provider failing or slow across calls
    # is skipped until a trial call after the cool-down succeeds. `local` never opens.
    llm_breaker_enabled: bool = True
    llm_breaker_window_s: float = Field(default=60.0, gt=0, description="The sliding window the rates are measured over.")
    llm_breaker_min_calls: int = Field(
        default=20, ge=1, description="Calls in the window before the breaker may open (a few bad calls are noise)."
    )
    llm_breaker_error_rate: float = Field(default=0.5, gt=0, le=1, description="Failed calls (timeouts included) that open it.")
    llm_breaker_slow_call_s: float = Field(default=8.0, gt=0, description="A first token later than this is a slow call.")
    llm_breaker_slow_rate: float = Field(default=0.8, gt=0, le=1, description="Slow calls that open it.")
    llm_breaker_cooldown_s: float = Field(default=30.0, gt=0, description="Open this long, then one trial call.")
    llm_breaker_state_cache_s: float = Field(
        default=1.0, ge=0, description="With Redis: how long a process trusts the state it last read."
    )

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
