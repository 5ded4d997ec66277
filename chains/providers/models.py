"""The LangChain chat model of each remote provider, with its own retries off: the router owns retry policy."""

from __future__ import annotations

from dataclasses import dataclass

from typing import Any

from langchain_core.runnables import Runnable
from pydantic import SecretStr

from chains.providers.settings import ProviderSettings


@dataclass(slots=True)
class Provider:
    name: str
    model: Runnable[Any, Any]
    model_name: str
    # The same model asked to answer with a JSON object, where the API has such a
    # mode; other providers get the same model and the prompt's instructions.
    json_model: Runnable[Any, Any] | None = None




def build_provider(name: str, settings: ProviderSettings) -> Provider:
    if name == "openai":
        from langchain_openai import ChatOpenAI

        openai = ChatOpenAI(
            model=settings.openai_model,
            api_key=settings.openai_api_key or SecretStr("not-needed-for-local-servers"),
            base_url=settings.openai_base_url,
            max_retries=0,
            timeout=settings.llm_timeout_s,
            stream_usage=True,
            # Its own gap timeout wraps every chunk in `asyncio.wait_for`: a task and a
            # timer per token, and no two tokens that came in one network read are ever
            # read without a loop turn between them. The router's idle and total
            # deadlines (`LLM_IDLE_TIMEOUT_S`, `LLM_TIMEOUT_S`) time the same gaps.
            stream_chunk_timeout=None,
        )
        # json_object, not json_schema: vLLM, Ollama and llama.cpp servers accept it too.
        return Provider(name, openai, settings.openai_model,
                        json_model=openai.bind(response_format={"type": "json_object"}))
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
