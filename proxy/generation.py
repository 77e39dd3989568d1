"""Generation settings a client asks for, as the CLI's settings.json carries them to the API.

The CLI has no flags for temperature and the like, but settings.json
`modelConfigs.customOverrides` entries for the run's model reach the API's
`generationConfig` unchanged (shared/gemini-cli-agents.md). A request that sets nothing adds
nothing, so its settings (and so the bytes the API receives) stay the CLI's defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# reasoning_effort -> Gemini 3's thinkingLevel; older models take a token budget instead.
THINKING_LEVELS = {"none": "MINIMAL", "minimal": "MINIMAL", "low": "LOW", "medium": "MEDIUM",
                   "high": "HIGH", "xhigh": "HIGH"}
THINKING_BUDGETS = {"none": 0, "minimal": 512, "low": 1024, "medium": 8192, "high": 24576, "xhigh": 32768}
REASONING_EFFORTS = tuple(THINKING_LEVELS)


@dataclass
class Generation:
    """What the client set; None (or empty) means "the model's default"."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_output_tokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    json_output: bool = False  # response_format json_object / json_schema
    json_schema: dict[str, Any] | None = None
    reasoning_effort: str | None = None

    def content_config(self, cli_model: str) -> dict[str, Any]:
        """The `generateContentConfig` fields this request sets (empty: none)."""
        config: dict[str, Any] = {}
        for key, value in (("temperature", self.temperature), ("topP", self.top_p), ("topK", self.top_k),
                           ("maxOutputTokens", self.max_output_tokens), ("seed", self.seed)):
            if value is not None:
                config[key] = value
        if self.stop:
            config["stopSequences"] = list(self.stop)
        if self.json_output:
            config["responseMimeType"] = "application/json"
        if self.json_schema is not None:
            config["responseJsonSchema"] = self.json_schema
        if self.reasoning_effort is not None:
            # includeThoughts stays on: the CLI's default, and what reasoning output needs.
            if _thinks_in_levels(cli_model):
                config["thinkingConfig"] = {"includeThoughts": True,
                                            "thinkingLevel": THINKING_LEVELS[self.reasoning_effort]}
            else:
                budget = THINKING_BUDGETS[self.reasoning_effort]
                config["thinkingConfig"] = {"includeThoughts": budget > 0, "thinkingBudget": budget}
        return config


def _thinks_in_levels(cli_model: str) -> bool:
    """Gemini 3 models take a thinking level; 2.5 and older a thinking budget."""
    return cli_model.startswith("gemini-3")
