"""RunSpec: what a gemini process fixes when it starts, and so what the warm pool keys on.

The CLI reads its model (`-m`), its system prompt (GEMINI_SYSTEM_MD), its settings.json
(generation settings, allowed tools) and its MCP servers' tool lists during start-up, before
it reads the prompt. Two requests with equal RunSpecs can be served by processes started
the same way; anything else about a request (its turns, its images) arrives on stdin.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..conversation import Conversation, Tool

# The MCP server that presents the client's tools. The CLI names MCP tools
# `mcp_<server>_<tool>` and shortens names over 63 characters: a short server name keeps
# the model's view of a tool close to the client's name, and long names are shortened here
# (with a hash, so they stay distinct) instead of by the CLI.
TOOL_SERVER = "fn"
CLI_TOOL_PREFIX = f"mcp_{TOOL_SERVER}_"
MAX_CLI_TOOL_NAME = 63
MCP_TOOL_SERVER_SCRIPT = Path(__file__).resolve().parent / "mcp_tool_server.py"
TOOLS_FILE = "tools.json"  # in the run dir: the tool list the MCP server presents
TOOL_SOCKET = "tools.sock"  # in the run dir: where the MCP server reports the model's calls


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def mcp_tool_name(name: str) -> str:
    """The name the MCP server gives a client tool, so that the CLI's name fits in 63 characters."""
    room = MAX_CLI_TOOL_NAME - len(CLI_TOOL_PREFIX)
    if len(name) <= room:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[:room - 9]}_{digest}"


@dataclass(frozen=True)
class RunSpec:
    """Model, system prompt, and settings.json additions (canonical JSON, "" for none)."""

    cli_model: str
    system_text: str
    model_configs: str = ""  # settings.json `modelConfigs`: generation settings
    tools: str = ""  # the MCP tool declarations [{name, description, inputSchema}]
    interface: str = "headless"  # or "acp" (proxy/cli/acp.py): how the CLI is driven

    @staticmethod
    def interface_for(conversation: Conversation, setting: str) -> str:
        """ACP where it is strongest (thoughts; one warm process fits any request), headless
        for client tools (every call of a parallel turn comes back; see proxy/cli/acp.py)."""
        return "acp" if setting == "auto" and not conversation.offered_tools else "headless"

    @classmethod
    def for_conversation(cls, conversation: Conversation, system_text: str, interface: str = "headless") -> RunSpec:
        tools = conversation.offered_tools
        content_config = conversation.generation.content_config(conversation.cli_model)
        if tools and conversation.tool_choice != "auto":
            # `required` or a named tool (then the only one offered): the model must call one.
            content_config["toolConfig"] = {"functionCallingConfig": {"mode": "ANY"}}
        # The CLI matches overrides against the model it resolved (`gemini-3-flash` may become
        # `gemini-3.8-flash`), not the `-m` it was given; `overrideScope: core` matches the main
        # conversation's requests whatever the model, and a run has one model.
        model_configs = ({"customOverrides": [{"match": {"overrideScope": "core"},
                                               "modelConfig": {"generateContentConfig": content_config}}]}
                         if content_config else None)
        declarations = [{"name": mcp_tool_name(t.name), "description": t.description,
                         "inputSchema": t.parameters} for t in tools]
        return cls(cli_model=conversation.cli_model, system_text=system_text,
                   model_configs=_canonical(model_configs) if model_configs else "",
                   tools=_canonical(declarations) if declarations else "", interface=interface)

    def tool_declarations(self) -> list[dict[str, Any]]:
        return json.loads(self.tools) if self.tools else []

    def client_tool_names(self, tools: list[Tool]) -> dict[str, str]:
        """The names the CLI may report a call under (`mcp_fn_x` and `x`) -> the client's name."""
        names: dict[str, str] = {}
        for tool in tools:
            mcp_name = mcp_tool_name(tool.name)
            names[CLI_TOOL_PREFIX + mcp_name] = tool.name
            names[mcp_name] = tool.name
        return names

    def mcp_servers(self, run_dir: Path) -> dict[str, Any] | None:
        """settings.json `mcpServers` for a run laid out in `run_dir`: the client tools' server."""
        if not self.tools:
            return None
        # `trust` (with the exact names in tools.core): calls go straight to the server, without
        # a confirmation the headless CLI could not ask for.
        return {TOOL_SERVER: {
            "command": sys.executable,
            "args": ["-I", str(MCP_TOOL_SERVER_SCRIPT), str(run_dir / TOOLS_FILE), str(run_dir / TOOL_SOCKET)],
            "trust": True,
        }}

    def cli_tool_names(self) -> list[str]:
        """The client tools' names as the CLI declares them to the model (for tools.core)."""
        return [CLI_TOOL_PREFIX + d["name"] for d in self.tool_declarations()]
