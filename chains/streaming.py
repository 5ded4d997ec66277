"""Helpers shared by the chains for building streamed, field-by-field outputs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from langchain_core.callbacks import AsyncCallbackManager, Callbacks
from langchain_core.runnables import Runnable, RunnableConfig, RunnableGenerator
from langchain_core.runnables.utils import AddableDict
from pydantic import BaseModel

# Fields that stream as text pieces to append; every other field's latest value wins.
APPENDED_FIELDS = frozenset({"summary", "answer"})


class FieldChunk(AddableDict):
    """One chunk of a field-by-field stream.

    Merging (what `invoke`, `stream_log` and `stream_events` return, and what a client
    does with the chunks of `stream`) appends the text pieces of `summary` and `answer`
    and replaces every other field with its latest value: provisional labels are
    replaced by the final ones, never concatenated with them.
    """

    def __add__(self, other: dict[str, Any]) -> FieldChunk:  # type: ignore[override]
        merged = FieldChunk(self)
        for key, value in other.items():
            previous = merged.get(key)
            if key in APPENDED_FIELDS and isinstance(previous, str) and isinstance(value, str):
                merged[key] = previous + value
            else:
                merged[key] = value
        return merged

    def __radd__(self, other: dict[str, Any]) -> FieldChunk:  # type: ignore[override]
        return FieldChunk(other) + self


ChainBody = Callable[[dict[str, Any], RunnableConfig], AsyncIterator[dict[str, Any]]]


async def single_input(inputs: AsyncIterator[dict[str, Any]]) -> dict[str, Any]:
    """LangServe hands a transform the whole input as one piece; take the last piece."""
    value: dict[str, Any] | None = None
    async for value in inputs:
        pass
    if value is None:
        raise ValueError("chain received no input")
    return value


def nobody_listens(callbacks: Callbacks, local: Callbacks = None, *, verbose: bool = False) -> bool:
    """No callback handler would be called: none passed, none of the model's own, none
    from the environment (`set_debug`, `set_verbose`, LangSmith, a `tracing_v2_enabled`
    block). What LangChain adds around a stream for its listeners can then be skipped."""
    return not AsyncCallbackManager.configure(callbacks, local, verbose).handlers


class FieldStreamingChain(RunnableGenerator):
    """A `RunnableGenerator` over a chain body that, when nobody listens, streams the
    body itself.

    LangChain's `RunnableGenerator` reads each chunk in an asyncio task of its own (to
    run it in the run's context) and merges every chunk into the output it reports to
    `on_chain_end`: a task, a loop turn and a dict copy per chunk, for callbacks nobody
    receives on `invoke`, `batch` and `stream`. With a listener (`stream_log`, `stream_events`, a
    tracer, debug) the chain runs LangChain's path and its events are complete.
    """

    def __init__(self, name: str, body: ChainBody) -> None:
        async def transform(
            inputs: AsyncIterator[dict[str, Any]], config: RunnableConfig
        ) -> AsyncIterator[dict[str, Any]]:
            payload = await single_input(inputs)
            async for chunk in body(payload, config):
                yield chunk

        super().__init__(transform, name=name)
        self.body = body

    def astream(
        self, input: dict[str, Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[dict[str, Any]]:
        if config is not None and not kwargs and nobody_listens(config.get("callbacks")):
            # As LangChain's path does for a child's config: the run's id and name are
            # this chain's own, not the provider call's.
            return self.body(input, {k: v for k, v in config.items() if k not in ("run_id", "run_name")})
        return super().astream(input, config, **kwargs)


def field_streaming_chain(
    name: str, body: ChainBody, input_type: type[BaseModel], output_type: type[BaseModel]
) -> Runnable[Any, Any]:
    """A runnable whose stream is dict chunks with disjoint (or string-appendable) fields.

    Chunks are `AddableDict`s, so `invoke` returns their sum: the full output object.
    """
    return FieldStreamingChain(name, body).with_types(input_type=input_type, output_type=output_type)
