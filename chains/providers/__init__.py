"""LLM providers: their settings, the LangChain chat models, and ordered failover."""
