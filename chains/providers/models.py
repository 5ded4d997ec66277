"""The LangChain chat model of each remote provider, with its own retries off: the router owns retry policy."""

from __future__ import annotations

from dataclasses import dataclass

from langchain_core.language_models import BaseChatModel
from pydantic import SecretStr

from chains.providers.settings import ProviderSettings


@dataclass(slots=True)
class Provider:
    name: str
    model: BaseChatModel
    model_name: str




def build_provider(name: str, settings: ProviderSettings) -> Provider:
    if name == "openai":
        from langchain_openai import ChatOpenAI

        return Provider(
            name,
            ChatOpenAI(
                model=settings.openai_model,
                api_key=settings.openai_api_key or SecretStr("not-needed-for-local-servers"),
                base_url=settings.openai_base_url,
                max_retries=0,
                timeout=settings.llm_timeout_s,
                stream_usage=True,
            ),
            settings.openai_model,
        )
    if name == "anthropic":
        from langchain_anthropic import ChatAnthropic

        return Provider(
            name,
            ChatAnthropic(
                model_name=settings.anthropic_model,
                api_key=settings.anthropic_api_key or SecretStr(""),
                max_retries=0,
                timeout=settings.llm_timeout_s,
                stop=None,
            ),
            settings.anthropic_model,
        )
    if name == "google":
        from langchain_google_genai import ChatGoogleGenerativeAI

        return Provider(
            name,
            ChatGoogleGenerativeAI(
                model=settings.google_model,
                google_api_key=settings.google_api_key,
                max_retries=0,
                timeout=settings.llm_timeout_s,
            ),
            settings.google_model,
        )
    raise ValueError(f"no chat model for provider {name!r}")
