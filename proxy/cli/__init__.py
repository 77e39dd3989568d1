"""Everything about the gemini CLI: its settings, processes, drivers, pool and prompt."""
