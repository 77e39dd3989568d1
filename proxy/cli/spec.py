"""RunSpec: what the CLI must be set up with for a request, before it gets the prompt.

Model, system prompt (GEMINI_SYSTEM_MD), generation settings and allowed tools
(settings.json) and the MCP server that shows the client's tools. A headless process reads
them all at start-up (its CLI home's settings.json, `-m`); an ACP session reads them at
`session/new`, from the session's own workspace settings (`<cwd>/.gemini/settings.json`)
and the process's system prompt file, and takes the model from `session/set_model`
(proxy/cli/acp.py). Two requests with equal RunSpecs can be served by sessions opened the
same way, ahead of time; anything else about a request (its turns, its images) is the prompt.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..conversation import Conversation, Tool, ToolCall, json_text

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
CLI_ADDED_ARGUMENT = "wait_for_previous"  # the CLI adds it to every tool's schema


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
    interface: str = "acp"  # or "headless": how the CLI is driven (PROXY_CLI_INTERFACE)

    @classmethod
    def for_conversation(cls, conversation: Conversation, system_text: str, interface: str = "acp") -> RunSpec:
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
        # a confirmation nobody could give. Headless runs end at the calls (`--hold`); an ACP
        # session's server answers them (proxy/cli/mcp_tool_server.py). `-S`: no site import.
        args = ["-I", "-S", str(MCP_TOOL_SERVER_SCRIPT), str(run_dir / TOOLS_FILE), str(run_dir / TOOL_SOCKET)]
        return {TOOL_SERVER: {"command": sys.executable,
                              "args": args + (["--hold"] if self.interface == "headless" else []), "trust": True}}

    def session_settings(self, session_dir: Path, read_only_tools: list[str]) -> dict[str, Any]:
        """An ACP session's workspace settings: what this spec adds to its process's settings (an
        empty dict for a request that sets nothing, which then reads the process's alone)."""
        settings: dict[str, Any] = {}
        if self.tools:
            settings["tools"] = {"core": list(read_only_tools) + self.cli_tool_names()}
            settings["mcpServers"] = self.mcp_servers(session_dir)
        if self.model_configs:
            settings["modelConfigs"] = json.loads(self.model_configs)
        return settings

    def cli_tool_names(self) -> list[str]:
        """The client tools' names as the CLI declares them to the model (for tools.core)."""
        return [CLI_TOOL_PREFIX + d["name"] for d in self.tool_declarations()]


@dataclass
class AnswerShape:
    """What the request fixed that reading its answer needs (both drivers)."""

    model: str  # the id the client asked for (error messages)
    cli_model: str
    tool_names: dict[str, str]  # the names the CLI reports client tool calls under -> client names
    # The CLI adds this argument to every tool's schema; it is the client's only if it declared it.
    own_wait_for_previous: frozenset[str] = frozenset()
    parallel_tool_calls: bool = True
    max_output_tokens: int | None = None

    @classmethod
    def for_conversation(cls, conversation: Conversation, spec: RunSpec) -> AnswerShape:
        tools = conversation.offered_tools
        return cls(model=conversation.model, cli_model=conversation.cli_model,
                   tool_names=spec.client_tool_names(tools),
                   own_wait_for_previous=frozenset(
                       t.name for t in tools if CLI_ADDED_ARGUMENT in (t.parameters.get("properties") or {})),
                   parallel_tool_calls=conversation.parallel_tool_calls,
                   max_output_tokens=conversation.generation.max_output_tokens)

    def client_call(self, name: Any, arguments: Any, calls: list[ToolCall]) -> ToolCall | None:
        """A call the CLI reported, as the client's call, added to the turn's `calls`; None for a
        tool that is not the client's, or a call beyond the first when the client wants one at a time."""
        client_name = self.tool_names.get(str(name))
        if client_name is None or (calls and not self.parallel_tool_calls):
            return None
        arguments = dict(arguments) if isinstance(arguments, dict) else {}
        if client_name not in self.own_wait_for_previous:
            arguments.pop(CLI_ADDED_ARGUMENT, None)
        call = ToolCall(id=f"call_{secrets.token_hex(12)}", name=client_name, arguments=json_text(arguments))
        calls.append(call)
        return call
