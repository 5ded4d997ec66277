"""Real-time AI service of the CRM: LangServe chains behind JWT auth, with live push."""
