"""The real-time AI chains. LangChain runnables only: no web framework imports here."""
